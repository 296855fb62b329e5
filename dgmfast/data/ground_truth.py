"""The ground-truth data interface of SPEC §11 (disentanglement_lib's `GroundTruthData`).

A ground-truth data set has `num_factors` discrete factors of variation; factor `j` takes the
integer values `0 .. factors_num_values[j] - 1`. Factors are drawn uniformly and independently,
and an observation is drawn given its factors. Randomness comes only from the
`numpy.random.RandomState` passed in, so every method is deterministic given its state.
"""
import numbers

import numpy as np


def check_random_state(random_state, name="random_state"):
    """A `numpy.random.RandomState` from a RandomState or an int seed; TypeError otherwise."""
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return np.random.RandomState(int(random_state))
    raise TypeError(f"{name} must be a numpy.random.RandomState or an int seed, got {type(random_state).__name__}")


def check_positive_int(value, name, minimum=1):
    """`value` as an int >= minimum; TypeError/ValueError naming `name` otherwise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


class GroundTruthData:
    """Base class: subclasses set `factors_num_values` and `observation_shape` and implement
    `sample_observations_from_factors`.

    `deterministic` says whether an observation is a function of its factors alone (no randomness
    drawn); metrics may then cache one representation per factor combination.
    """

    factors_num_values: tuple = ()
    observation_shape: tuple = ()
    deterministic: bool = False

    @property
    def num_factors(self):
        return len(self.factors_num_values)

    @property
    def num_combinations(self):
        """Number of distinct factor combinations, `prod(factors_num_values)`."""
        return int(np.prod(self.factors_num_values, dtype=np.int64))

    def sample_factors(self, num, random_state):
        """`num` factor vectors, int64 `[num, num_factors]`, each factor uniform over its values.

        Factor columns are drawn in order, `random_state.randint(k, size=num)` each (as
        disentanglement_lib)."""
        num = check_positive_int(num, "num", minimum=0)
        random_state = check_random_state(random_state)
        factors = np.zeros((num, self.num_factors), dtype=np.int64)
        for j, k in enumerate(self.factors_num_values):
            factors[:, j] = random_state.randint(k, size=num)
        return factors

    def sample_observations_from_factors(self, factors, random_state):
        """Observations float32 `[N, *observation_shape]` for int factors `[N, num_factors]`."""
        raise NotImplementedError

    def sample(self, num, random_state):
        """`(factors, observations)` for `num` points: factors first, then observations."""
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num, random_state):
        return self.sample(num, random_state)[1]

    def check_factors(self, factors, name="factors"):
        """`factors` as int64 `[N, num_factors]` with every value in range; ValueError/TypeError otherwise."""
        factors = np.asarray(factors)
        if factors.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {factors.dtype}")
        if factors.ndim != 2 or factors.shape[1] != self.num_factors:
            raise ValueError(f"{name} must have shape [N, {self.num_factors}], got {list(factors.shape)}")
        sizes = np.asarray(self.factors_num_values)
        bad = (factors < 0) | (factors >= sizes)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"{name}[:, {col}] must be in [0, {sizes[col]}), got {factors[row, col]} at row {row}")
        return factors.astype(np.int64, copy=False)

    def factor_index(self, factors):
        """Flat index of each factor combination (mixed radix, last factor fastest): int64 `[N]`."""
        factors = self.check_factors(factors)
        return np.ravel_multi_index(tuple(factors.T), self.factors_num_values) if len(factors) else \
            np.zeros(0, dtype=np.int64)

    def factors_from_index(self, index):
        """Inverse of `factor_index`: int64 `[N, num_factors]`."""
        return np.stack(np.unravel_index(np.asarray(index, dtype=np.int64), self.factors_num_values), axis=1)
