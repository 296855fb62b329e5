"""FactorVAE score (Kim & Mnih 2018), as disentanglement_lib's `compute_factor_vae`."""
import numpy as np

from dgmfast.metrics.utils import as_encoder, check_int_kwargs, progress_bar


def factor_vae_score(ground_truth_data, representation_fn, random_state, *, batch_size=64, num_train=10000,
                     num_eval=5000, num_variance_estimate=10000, prune_threshold=0.05, progress=False):
    """Accuracy of a majority-vote classifier predicting the fixed factor from the latent of least
    normalized variance.

    Global variances `s_j^2` (ddof=1) come from `num_variance_estimate` points; latents with
    `s_j < prune_threshold` are inactive (disentanglement_lib's study config: `prune_dims.threshold
    = 0.05`). Each point: draw factor k, a batch of `batch_size` factor vectors sharing factor k's
    value, and vote for `(k, argmin_j var_j / s_j^2)` over active j (ddof=1). The classifier maps
    each active latent to its most voted factor; accuracy = correctly classified votes / votes.

    Returns `{"train_accuracy", "eval_accuracy", "num_active_dims"}`; all three are 0 when no latent
    is active. `num_active_dims` counts active latents (disentanglement_lib reports `len(mask)`, the
    number of latents). Ceiling 1; chance about `1 / num_factors`.
    """
    check_int_kwargs(batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                     num_variance_estimate=num_variance_estimate)
    if batch_size < 2 or num_variance_estimate < 2:
        raise ValueError(f"batch_size and num_variance_estimate must be >= 2 (variances use ddof=1), got "
                         f"batch_size={batch_size}, num_variance_estimate={num_variance_estimate}")
    encoder, rng = as_encoder(ground_truth_data, representation_fn, random_state)
    codes = encoder.encode_factors(ground_truth_data.sample_factors(num_variance_estimate, rng), rng)
    global_var = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    train_votes = _votes(encoder, rng, batch_size, num_train, global_var, active, progress)
    classifier = np.argmax(train_votes, axis=0)
    eval_votes = _votes(encoder, rng, batch_size, num_eval, global_var, active, progress)
    cols = np.arange(train_votes.shape[1])
    return {"train_accuracy": float(train_votes[classifier, cols].sum() / train_votes.sum()),
            "eval_accuracy": float(eval_votes[classifier, cols].sum() / eval_votes.sum()),
            "num_active_dims": int(active.sum())}


def _votes(encoder, rng, batch_size, num_points, global_var, active, progress):
    """Vote counts `[num_factors, num_active]`, points drawn in disentanglement_lib's order."""
    data = encoder.data
    fixed = np.zeros(num_points, dtype=np.int64)
    bar = progress_bar(num_points, "factor_vae", progress)

    def batches():
        for i in range(num_points):
            fixed[i] = k = rng.randint(data.num_factors)
            f = data.sample_factors(batch_size, rng)
            f[:, k] = f[0, k]
            bar.update()
            yield f

    _, codes = encoder.encode(batches(), rng)
    bar.close()
    local_var = codes.reshape(num_points, batch_size, -1).var(axis=1, ddof=1)
    argmin = np.argmin(local_var[:, active] / global_var[active], axis=1)
    votes = np.zeros((data.num_factors, int(active.sum())), dtype=np.int64)
    np.add.at(votes, (fixed, argmin), 1)
    return votes
