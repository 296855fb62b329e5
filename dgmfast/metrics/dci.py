"""Disentanglement, completeness, informativeness (Eastwood & Williams 2018), as disentanglement_lib's
`compute_dci`: importances from gradient-boosted trees."""
import numpy as np

from dgmfast.metrics import gbt
from dgmfast.metrics.utils import as_encoder, mean_or_zero, progress_bar, require_sklearn, varied_factors

ENTROPY_EPS = 1e-11        # disentanglement_lib adds it to the importances before the entropies


def dci(ground_truth_data, representation_fn, random_state, *, num_train=10000, num_test=5000, batch_size=16,
        classifier_fn=None, n_jobs=-1, progress=False):
    """DCI from an importance matrix `R` `[L, F]` (`R_ik` = importance of latent i for factor k).

    One classifier per factor is trained on `num_train` codes: by default disentanglement_lib's
    `sklearn.ensemble.GradientBoostingClassifier()` given a `random_state` drawn from `random_state`
    (reproducible), computed by `dgmfast.metrics.gbt.GradientBoostedTrees` (the same trees,
    importances and predictions, ~15x less CPU; sklearn's class itself when dgmfast._C is not built);
    `classifier_fn()` replaces it (e.g. `lambda: GradientBoostingClassifier(random_state=0)`).
    `R[:, k] = |feature_importances_|`. Informativeness is the classifier's accuracy (train / test),
    averaged over factors. Factors with one value in the training sample get a zero importance
    column and are left out of the accuracy means (0.0 if none remains). `n_jobs` fits factors in
    parallel threads (joblib) when the classifier is sklearn's (its tree building releases the GIL);
    the built-in trees run factor after factor, each stage's trees in parallel. Results do not depend
    on it.

    Returns `{"informativeness_train", "informativeness_test", "disentanglement", "completeness"}`;
    see `disentanglement` and `completeness` for the formulas. Ceilings: 1 for all four.
    """
    require_sklearn("dci")
    encoder, rng = as_encoder(ground_truth_data, representation_fn, random_state)
    f_train, c_train = encoder.sample_codes(num_train, rng, batch_size)
    f_test, c_test = encoder.sample_codes(num_test, rng, batch_size)
    seed = rng.randint(2**31 - 1)
    importance, acc_train, acc_test = importance_matrix(c_train, f_train, c_test, f_test, classifier_fn, seed,
                                                       n_jobs, progress)
    return {"informativeness_train": acc_train, "informativeness_test": acc_test,
            "disentanglement": disentanglement(importance), "completeness": completeness(importance)}


def importance_matrix(codes_train, factors_train, codes_test, factors_test, classifier_fn=None, seed=0,
                      n_jobs=-1, progress=False):
    """`(R [L, F], mean train accuracy, mean test accuracy)` with one classifier per varied factor."""
    from joblib import Parallel, delayed

    if classifier_fn is None:
        classifier_fn = default_classifier(seed)
        if gbt.available():
            n_jobs = 1                    # its trees are built in parallel inside each fit
    importance = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    ks = np.flatnonzero(varied_factors(factors_train))
    ks = ks[np.argsort([-len(np.unique(factors_train[:, k])) for k in ks], kind="stable")]  # slowest first
    bar = progress_bar(len(ks), "dci", progress)
    fits = []
    for k, fit in zip(ks, Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(
            delayed(_fit_factor)(classifier_fn, codes_train, factors_train[:, k], codes_test, factors_test[:, k])
            for k in ks)):
        importance[:, k] = fit[0]
        fits.append(fit[1:])
        bar.update()
    bar.close()
    acc_train, acc_test = zip(*fits) if fits else ((), ())
    return importance, mean_or_zero(acc_train), mean_or_zero(acc_test)


def default_classifier(seed):
    """Factory of disentanglement_lib's `GradientBoostingClassifier(random_state=seed)`: dgmfast's exact
    re-implementation when dgmfast._C is available, else sklearn's."""
    if gbt.available():
        return lambda: gbt.GradientBoostedTrees(random_state=seed)
    from sklearn.ensemble import GradientBoostingClassifier
    return lambda: GradientBoostingClassifier(random_state=seed)


def _fit_factor(classifier_fn, x_train, y_train, x_test, y_test):
    model = classifier_fn().fit(x_train, y_train)
    return (np.abs(model.feature_importances_), float(np.mean(model.predict(x_train) == y_train)),
            float(np.mean(model.predict(x_test) == y_test)))


def _entropy(p, base):
    """Entropy of each column of non-negative `p` (normalized per column) in log base `base`."""
    p = p / p.sum(axis=0, keepdims=True)
    return -np.sum(p * np.log(p), axis=0) / np.log(base)


def disentanglement(importance):
    """`D = sum_i rho_i (1 - H_F(P_i.))`, `P_ik = R_ik / sum_k R_ik` (with `R + 1e-11`), `H_F` the
    entropy in base F, `rho_i = sum_k R_ik / sum R` (uniform if R == 0). 1.0 when F == 1."""
    r = np.asarray(importance, dtype=np.float64)
    if r.shape[1] == 1:
        return 1.0
    per_code = 1.0 - _entropy(r.T + ENTROPY_EPS, r.shape[1])
    weights = r if r.sum() > 0 else np.ones_like(r)
    return float(np.sum(per_code * weights.sum(axis=1) / weights.sum()))


def completeness(importance):
    """`C = sum_k rho_k (1 - H_L(P_.k))`, `P_ik = R_ik / sum_i R_ik`, `rho_k = sum_i R_ik / sum R`:
    the disentanglement of `R.T`. 1.0 when L == 1."""
    return disentanglement(np.asarray(importance).T)
