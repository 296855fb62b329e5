"""Modularity and explicitness (Ridgeway & Mozer 2018), as disentanglement_lib's
`compute_modularity_explicitness`."""
import numpy as np
from scipy.stats import rankdata

from dgmfast.metrics.utils import (as_encoder, discrete_mutual_info, histogram_discretize, mean_or_zero,
                                   quiet_convergence, require_sklearn, varied_factors)


def modularity_explicitness(ground_truth_data, representation_fn, random_state, *, num_train=10000,
                            num_test=5000, batch_size=16, num_bins=20):
    """Modularity: with `m_ik` the mutual information of discretized latent i (`num_bins` bins) and
    factor k, `1 - (sum_k m_ik^2 - max_k m_ik^2) / ((F - 1) max_k m_ik^2)` averaged over latents
    (0 for a latent with no information about any factor, 1 for an informative one when F == 1).
    Explicitness: per factor, a
    `LogisticRegression()` on the standardized codes (train mean/std; a constant latent is only
    centred), scored by the one-vs-rest ROC-AUC macro-averaged over classes, then averaged over
    factors; factors with one value in the training sample are left out (0.0 if none remains).

    Returns `{"modularity_score", "explicitness_score_train", "explicitness_score_test"}`.
    Ceilings: 1, 1, 1 (the identity representation of `IdentityGroundTruth` reaches about 0.99+).
    """
    require_sklearn("modularity_explicitness")
    encoder, rng = as_encoder(ground_truth_data, representation_fn, random_state)
    f_train, c_train = encoder.sample_codes(num_train, rng, batch_size)
    f_test, c_test = encoder.sample_codes(num_test, rng, batch_size)
    mi = discrete_mutual_info(histogram_discretize(c_train, num_bins), f_train)
    train, test = explicitness(c_train, f_train, c_test, f_test)
    return {"modularity_score": modularity(mi), "explicitness_score_train": train,
            "explicitness_score_test": test}


def modularity(mutual_info):
    """Modularity of the `[L, F]` mutual-information matrix (disentanglement_lib's formula)."""
    sq = np.square(np.asarray(mutual_info, dtype=np.float64))
    top = sq.max(axis=1)
    if sq.shape[1] == 1:                       # one factor: every informative latent is modular
        score = np.ones(len(sq))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            score = 1.0 - (sq.sum(axis=1) - top) / (top * (sq.shape[1] - 1.0))
    return float(np.where(top == 0.0, 0.0, score).mean())


def explicitness(codes_train, factors_train, codes_test, factors_test):
    """`(train, test)` mean ROC-AUC of per-factor logistic regressions on standardized codes."""
    from sklearn.linear_model import LogisticRegression

    mean, std = codes_train.mean(axis=0), codes_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_train, x_test = (codes_train - mean) / std, (codes_test - mean) / std
    scores = []
    for k in np.flatnonzero(varied_factors(factors_train)):
        with quiet_convergence():
            clf = LogisticRegression().fit(x_train, factors_train[:, k])
        scores.append((macro_roc_auc(factors_train[:, k], clf.predict_proba(x_train), clf.classes_),
                       macro_roc_auc(factors_test[:, k], clf.predict_proba(x_test), clf.classes_)))
    if not scores:
        return 0.0, 0.0
    train, test = zip(*scores)
    return mean_or_zero(train), mean_or_zero(test)


def macro_roc_auc(labels, scores, classes):
    """One-vs-rest ROC-AUC of `scores[:, c]` for `labels == classes[c]`, averaged over the classes
    present in `labels` (with both positives and negatives); ties count one half. This equals
    disentanglement_lib's `roc_auc_score(MultiLabelBinarizer().fit_transform(labels[:, None]), scores)`
    wherever that is defined (the test labels cover the classifier's classes)."""
    onehot = np.asarray(labels)[:, None] == np.asarray(classes)[None, :]
    n_pos = onehot.sum(axis=0)
    n_neg = len(labels) - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return 0.0
    ranks = rankdata(scores[:, valid], axis=0)
    pos = onehot[:, valid]
    auc = ((ranks * pos).sum(axis=0) - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (n_pos[valid] * n_neg[valid])
    return float(auc.mean())
