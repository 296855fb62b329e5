"""Helpers shared by the metrics: representations in batches (optionally cached per factor
combination), histogram discretization, discrete entropy and mutual information (vectorized
numpy, natural log, equal to disentanglement_lib's sklearn-based definitions)."""
import contextlib
import warnings

import numpy as np
import torch

from dgmfast.data.ground_truth import GroundTruthData, check_positive_int, check_random_state

__all__ = ["Representation", "Encoder", "as_encoder", "histogram_discretize", "discrete_entropy",
           "discrete_mutual_info", "top_two_gap", "require_sklearn", "check_random_state"]

MAX_CACHED_COMBINATIONS = 1 << 24      # cache representations only for grids up to this size


def require_sklearn(metric):
    """Import scikit-learn (optional dependency) or raise an ImportError saying how to install it."""
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{metric} needs scikit-learn: pip install dgmfast[metrics]") from e


@contextlib.contextmanager
def quiet_convergence():
    """Silence sklearn's ConvergenceWarning (disentanglement_lib's classifiers run with sklearn's
    default iteration limits, which the metrics keep)."""
    from sklearn.exceptions import ConvergenceWarning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def progress_bar(total, desc, enabled):
    """A tqdm bar when `enabled` and tqdm is installed, else a no-op with the same `update`/`close`."""
    if enabled:
        try:
            from tqdm.auto import tqdm
            return tqdm(total=total, desc=desc, leave=False)
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


class Representation:
    """A representation function `numpy [B, ...] -> float64 numpy [B, L]`, called in chunks of
    `batch_size` observations.

    `fn` is a callable on numpy arrays or a `torch.nn.Module`. A module runs under `torch.no_grad()`
    in eval mode (its mode is restored afterwards) on the device and dtype of its first parameter
    (CPU float32 if it has none); 4-D channels-last observations `[B, H, W, C]` are transposed to
    `[B, C, H, W]` first; if it returns a tuple or list (e.g. `(mu, logvar)`), the first element is
    the representation.
    """

    def __init__(self, fn, batch_size=256):
        if not callable(fn):
            raise TypeError(f"representation_fn must be callable (a function or torch.nn.Module), got {type(fn).__name__}")
        self.fn = fn
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def __call__(self, observations):
        observations = np.asarray(observations)
        parts = [self._call(observations[s:s + self.batch_size])
                 for s in range(0, len(observations), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0))

    def _call(self, obs):
        if isinstance(self.fn, torch.nn.Module):
            out = self._call_module(obs)
        else:
            out = self.fn(obs)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        out = np.asarray(out, dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != len(obs):
            raise ValueError(f"representation_fn must return an array of shape [{len(obs)}, num_latents] for "
                             f"{len(obs)} observations, got shape {list(out.shape)}")
        return out

    def _call_module(self, obs):
        module = self.fn
        param = next(module.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
        x = torch.from_numpy(np.ascontiguousarray(obs)).to(device=device, dtype=dtype)
        if x.dim() == 4:
            x = x.permute(0, 3, 1, 2)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module(x)
        finally:
            module.train(was_training)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


class Encoder:
    """Representations of sampled factors: factors -> observations -> codes.

    `encode(factor_batches, random_state)` takes an iterable of int factor arrays `[n_i, F]` and
    returns `(factors [N, F], codes float64 [N, L])`. Observations are drawn batch by batch in the
    iterable's order, so a generator that samples factors lazily reproduces disentanglement_lib's
    order of random draws (factors, then their observations, step after step).

    With `cache=True` and deterministic data (`ground_truth_data.deterministic`, e.g. `DSprites`),
    each distinct factor combination is rendered and encoded once and its code reused, by every
    metric sharing this encoder. Rendering such data draws no randomness and the representation
    function is assumed deterministic, so cached and uncached results are identical.
    """

    def __init__(self, ground_truth_data, representation_fn, *, cache=False, batch_size=1024):
        if not isinstance(ground_truth_data, GroundTruthData):
            raise TypeError("ground_truth_data must be a dgmfast.data.GroundTruthData, got "
                            f"{type(ground_truth_data).__name__}")
        self.data = ground_truth_data
        self.representation = representation_fn if isinstance(representation_fn, Representation) else \
            Representation(representation_fn, batch_size)
        self.cache = bool(cache) and ground_truth_data.deterministic and \
            ground_truth_data.num_combinations <= MAX_CACHED_COMBINATIONS
        self._codes = None            # [num_combinations, L] once the first code is known
        self._known = None            # bool [num_combinations]

    def encode(self, factor_batches, random_state):
        if self.cache:
            factors = _concat(list(factor_batches), self.data.num_factors)
            return factors, self._cached_codes(factors, random_state)
        factors, codes, pending, n_pending = [], [], [], 0
        for f in factor_batches:
            factors.append(f)
            pending.append(self.data.sample_observations_from_factors(f, random_state))
            n_pending += len(f)
            if n_pending >= self.representation.batch_size:
                codes.append(self.representation(np.concatenate(pending)))
                pending, n_pending = [], 0
        if pending:
            codes.append(self.representation(np.concatenate(pending)))
        factors = _concat(factors, self.data.num_factors)
        return factors, (np.concatenate(codes) if codes else np.zeros((0, 0)))

    def _cached_codes(self, factors, random_state):
        index = self.data.factor_index(factors)
        if self._known is None:
            self._known = np.zeros(self.data.num_combinations, dtype=bool)
        missing = np.unique(index[~self._known[index]])
        for s in range(0, len(missing), self.representation.batch_size):
            chunk = missing[s:s + self.representation.batch_size]
            obs = self.data.sample_observations_from_factors(self.data.factors_from_index(chunk), random_state)
            codes = self.representation(obs)
            if self._codes is None:
                self._codes = np.zeros((self.data.num_combinations, codes.shape[1]))
            self._codes[chunk] = codes
            self._known[chunk] = True
        return self._codes[index] if self._codes is not None else np.zeros((0, 0))

    def encode_factors(self, factors, random_state):
        """Codes `[N, L]` for given factors `[N, F]`, observations drawn in row order."""
        step = self.representation.batch_size
        return self.encode((factors[s:s + step] for s in range(0, len(factors), step)), random_state)[1]

    def sample_codes(self, num_points, random_state, batch_size):
        """`(factors [N, F], codes [N, L])` for `num_points` points sampled in steps of `batch_size`
        (disentanglement_lib's `generate_batch_factor_code`)."""
        num_points = check_positive_int(num_points, "num_points")
        batch_size = check_positive_int(batch_size, "batch_size")
        steps = (self.data.sample_factors(min(batch_size, num_points - s), random_state)
                 for s in range(0, num_points, batch_size))
        return self.encode(steps, random_state)


def _concat(parts, num_factors):
    return np.concatenate(parts) if parts else np.zeros((0, num_factors), dtype=np.int64)


def as_encoder(ground_truth_data, representation_fn, random_state):
    """`(Encoder, RandomState)` for a metric: an `Encoder` passed as representation_fn is used as is
    (it must be bound to the same data), anything else is wrapped without a cache."""
    random_state = check_random_state(random_state)
    if isinstance(representation_fn, Encoder):
        if representation_fn.data is not ground_truth_data:
            raise ValueError("representation_fn is an Encoder bound to another ground_truth_data "
                             f"({type(representation_fn.data).__name__}); pass the data it was built with")
        return representation_fn, random_state
    return Encoder(ground_truth_data, representation_fn), random_state


def histogram_discretize(codes, num_bins=20):
    """Per latent, equal-width histogram bins over its [min, max]: int64 `[N, L]` in `1..num_bins`.

    Exactly disentanglement_lib's `_histogram_discretize`:
    `np.digitize(x, np.histogram(x, num_bins)[1][:-1])` (a constant latent falls into one bin)."""
    num_bins = check_positive_int(num_bins, "num_bins")
    codes = np.asarray(codes)
    out = np.empty(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, i], num_bins)
        out[:, i] = np.searchsorted(edges[:-1], codes[:, i], side="right")   # = np.digitize(x, edges[:-1])
    return out


def _relabel(labels):
    """Each column mapped to `0..k-1` (sorted unique values): `(int64 [N, C], k [C])`."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D [num_points, num_columns], got shape {list(labels.shape)}")
    out = np.empty(labels.shape, dtype=np.int64)
    sizes = np.empty(labels.shape[1], dtype=np.int64)
    for c in range(labels.shape[1]):
        values, out[:, c] = np.unique(labels[:, c], return_inverse=True)
        sizes[c] = len(values)
    return out, sizes


def discrete_entropy(labels):
    """Entropy in nats of each column of discrete `labels` `[N, C]`: `[C]`."""
    relabeled, sizes = _relabel(labels)
    h = np.zeros(len(sizes))
    for c in range(len(sizes)):
        p = np.bincount(relabeled[:, c]) / len(relabeled)
        h[c] = -np.sum(p * np.log(p))
    return h


def discrete_mutual_info(codes, factors, chunk=65536):
    """Mutual information in nats between every column of discrete `codes` `[N, L]` and of
    discrete `factors` `[N, F]`: `[L, F]` (`sklearn.metrics.mutual_info_score` for each pair).

    All `L * F` contingency tables are counted by one `bincount` per chunk of rows."""
    a, ka = _relabel(codes)
    b, kb = _relabel(factors)
    if len(a) != len(b):
        raise ValueError(f"codes and factors must have the same number of rows, got {len(a)} and {len(b)}")
    n, num_l, num_f = len(a), a.shape[1], b.shape[1]
    ma, mb = int(ka.max(initial=1)), int(kb.max(initial=1))
    size = num_l * num_f * ma * mb
    pair = (np.arange(num_l)[:, None] * num_f + np.arange(num_f)[None, :]) * (ma * mb)      # [L, F]
    joint = np.zeros(size, dtype=np.int64)
    for s in range(0, n, chunk):
        idx = pair + a[s:s + chunk, :, None] * mb + b[s:s + chunk, None, :]                # [n, L, F]
        joint += np.bincount(idx.ravel(), minlength=size)
    p = joint.reshape(num_l, num_f, ma, mb) / max(n, 1)
    pa, pb = p.sum(axis=3, keepdims=True), p.sum(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(pa) - np.log(pb)), 0.0)
    mi = np.maximum(terms.sum(axis=(2, 3)), 0.0)
    mi[ka == 1, :] = 0.0                    # a single-valued column carries no information (exactly, as sklearn)
    mi[:, kb == 1] = 0.0
    return mi


def top_two_gap(matrix):
    """Per column of `matrix` `[L, F]`: largest minus second-largest entry `[F]` (the second is 0
    when L == 1)."""
    m = np.sort(np.asarray(matrix, dtype=np.float64), axis=0)[::-1]
    second = m[1] if len(m) > 1 else np.zeros(m.shape[1])
    return m[0] - second


def varied_factors(factors):
    """Bool `[F]`: columns of int `factors` `[N, F]` that take more than one value."""
    factors = np.asarray(factors)
    return (factors != factors[:1]).any(axis=0) if len(factors) else np.zeros(factors.shape[1], dtype=bool)


def mean_or_zero(values):
    """Mean of `values`, 0.0 when empty."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else 0.0


def check_int_kwargs(**kwargs):
    """Validate positive int hyper-parameters by name."""
    for name, value in kwargs.items():
        check_positive_int(value, name)
