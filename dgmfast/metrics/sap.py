"""Separated Attribute Predictability (Kumar et al. 2018), as disentanglement_lib's `compute_sap`."""
import numpy as np

from dgmfast.metrics.utils import as_encoder, mean_or_zero, quiet_convergence, require_sklearn, top_two_gap, \
    varied_factors


def sap_score(ground_truth_data, representation_fn, random_state, *, num_train=10000, num_test=5000, batch_size=16,
              continuous_factors=False):
    """SAP = mean over factors k of the gap between the two largest entries of the score column
    `S[:, k]` `[L]`.

    Discrete factors (default): `S_ik` = test accuracy of `LinearSVC(C=0.01, class_weight="balanced")`
    predicting factor k from latent i alone (trained on `num_train` points, tested on `num_test`).
    `continuous_factors=True`: `S_ik = cov(z_i, v_k)^2 / (var z_i var v_k)` on the training points
    (0 where `var z_i <= 1e-12`). Factors with one value in the training sample are left out of
    the mean (0.0 if none remains); with one latent the second-best score is 0.

    Returns `{"SAP_score": float}`. Ceiling: below 1 for discrete factors with more than two values
    (a linear classifier on one latent); see docs/metrics.md for measured values.
    """
    encoder, rng = as_encoder(ground_truth_data, representation_fn, random_state)
    f_train, c_train = encoder.sample_codes(num_train, rng, batch_size)
    f_test, c_test = encoder.sample_codes(num_test, rng, batch_size)
    keep = varied_factors(f_train)
    if continuous_factors:
        scores = _r2_matrix(c_train, f_train[:, keep])
    else:
        require_sklearn("sap_score")
        scores = _accuracy_matrix(c_train, f_train[:, keep], c_test, f_test[:, keep])
    return {"SAP_score": mean_or_zero(top_two_gap(scores))}


def _r2_matrix(codes, factors):
    """`[L, F]` squared correlations with unbiased (ddof=1) moments, 0 for near-constant latents."""
    z = codes - codes.mean(axis=0)
    v = factors - factors.mean(axis=0)
    n = len(codes) - 1
    cov = z.T @ v / n
    var_z, var_v = (z * z).sum(axis=0) / n, (v * v).sum(axis=0) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = cov ** 2 / (var_z[:, None] * var_v[None, :])
    return np.where(var_z[:, None] > 1e-12, r2, 0.0)


def _accuracy_matrix(codes_train, factors_train, codes_test, factors_test):
    from sklearn.svm import LinearSVC

    scores = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    for i in range(codes_train.shape[1]):
        for k in range(factors_train.shape[1]):
            with quiet_convergence():
                clf = LinearSVC(C=0.01, class_weight="balanced").fit(codes_train[:, i:i + 1], factors_train[:, k])
            scores[i, k] = np.mean(clf.predict(codes_test[:, i:i + 1]) == factors_test[:, k])
    return scores
