"""Mutual Information Gap (Chen et al. 2018, beta-TC-VAE), disentanglement_lib's `discrete_mig`."""
import numpy as np

from dgmfast.metrics.utils import (as_encoder, discrete_entropy, discrete_mutual_info, histogram_discretize,
                                   mean_or_zero, top_two_gap)


def mig(ground_truth_data, representation_fn, random_state, *, num_train=10000, batch_size=16, num_bins=20):
    """MIG = mean over factors k of `(I(z_a; v_k) - I(z_b; v_k)) / H(v_k)`, `z_a`, `z_b` the two
    latents with the highest mutual information with `v_k`.

    `num_train` points are sampled (in steps of `batch_size`), each latent is discretized into
    `num_bins` equal-width histogram bins, and entropies / mutual informations are the plug-in
    estimates in nats. Factors with zero entropy in the sample are left out of the mean (their
    gap is 0/0); with one latent the second-best information is 0.

    Returns `{"discrete_mig": float}`. Ceiling: `mig_ceiling(factors_num_values, num_bins)` (below 1
    when a factor has more than `num_bins` values).
    """
    encoder, rng = as_encoder(ground_truth_data, representation_fn, random_state)
    factors, codes = encoder.sample_codes(num_train, rng, batch_size)
    mi = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)
    return {"discrete_mig": mig_from_mutual_info(mi, discrete_entropy(factors))}


def mig_from_mutual_info(mutual_info, entropy):
    """MIG from the `[L, F]` mutual-information matrix and the `[F]` factor entropies (nats)."""
    entropy = np.asarray(entropy, dtype=np.float64)
    keep = entropy > 0
    return mean_or_zero(top_two_gap(mutual_info)[keep] / entropy[keep])


def mig_ceiling(factors_num_values, num_bins=20):
    """Highest MIG reachable with `num_bins` bins for uniform factors (in the infinite-sample limit):
    mean over factors with k > 1 values of `H_max / log k`, where `H_max` is the entropy of the most
    even split of k equiprobable values into `min(k, num_bins)` bins. The identity representation
    of equally spaced factor values reaches it. dSprites: 0.902 (orientation 0.812, posX/posY 0.850).
    """
    ratios = []
    for k in factors_num_values:
        if k < 2:
            continue
        groups = min(k, num_bins)
        sizes = np.full(groups, k // groups) + (np.arange(groups) < k % groups)
        p = sizes / k
        ratios.append(-np.sum(p * np.log(p)) / np.log(k))
    return mean_or_zero(ratios)
