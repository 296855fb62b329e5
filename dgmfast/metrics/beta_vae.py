"""BetaVAE score (Higgins et al. 2017), as disentanglement_lib's `compute_beta_vae_sklearn`."""
import numpy as np

from dgmfast.metrics.utils import as_encoder, check_int_kwargs, progress_bar, quiet_convergence, require_sklearn


def beta_vae_score(ground_truth_data, representation_fn, random_state, *, batch_size=64, num_train=10000,
                   num_eval=5000, progress=False):
    """Accuracy of a linear classifier predicting which factor was held fixed.

    Each training point: draw a factor index k, two batches of `batch_size` factor vectors that agree
    on factor k, and the feature `mean_b |z(x1_b) - z(x2_b)|` `[L]`; the label is k. A
    `LogisticRegression(random_state=random_state)` (sklearn defaults) is fit on `num_train` points
    and scored on `num_eval` fresh ones.

    Returns `{"train_accuracy", "eval_accuracy"}`. Ceiling 1; chance `1 / num_factors`. With a
    single factor the label is constant and both accuracies are 1.0.
    """
    require_sklearn("beta_vae_score")
    from sklearn.linear_model import LogisticRegression

    check_int_kwargs(batch_size=batch_size, num_train=num_train, num_eval=num_eval)
    encoder, rng = as_encoder(ground_truth_data, representation_fn, random_state)
    if ground_truth_data.num_factors == 1:
        return {"train_accuracy": 1.0, "eval_accuracy": 1.0}
    x_train, y_train = _points(encoder, rng, batch_size, num_train, progress)
    with quiet_convergence():
        model = LogisticRegression(random_state=rng).fit(x_train, y_train)
    train_accuracy = float(np.mean(model.predict(x_train) == y_train))
    x_eval, y_eval = _points(encoder, rng, batch_size, num_eval, progress)
    return {"train_accuracy": train_accuracy, "eval_accuracy": float(np.mean(model.predict(x_eval) == y_eval))}


def _points(encoder, rng, batch_size, num_points, progress):
    """Features `[num_points, L]` and labels `[num_points]`, drawn in disentanglement_lib's order."""
    data = encoder.data
    labels = np.zeros(num_points, dtype=np.int64)
    bar = progress_bar(num_points, "beta_vae", progress)

    def batches():
        for i in range(num_points):
            labels[i] = k = rng.randint(data.num_factors)
            f1 = data.sample_factors(batch_size, rng)
            f2 = data.sample_factors(batch_size, rng)
            f2[:, k] = f1[:, k]
            bar.update()
            yield np.concatenate([f1, f2])

    _, codes = encoder.encode(batches(), rng)
    bar.close()
    codes = codes.reshape(num_points, 2, batch_size, -1)
    return np.abs(codes[:, 0] - codes[:, 1]).mean(axis=1), labels
