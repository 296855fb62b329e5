"""Synthetic ground truth for testing metrics: the observations are the factors themselves."""
import numpy as np

from dgmfast.data.ground_truth import GroundTruthData, check_positive_int


class IdentityGroundTruth(GroundTruthData):
    """Factors with the given numbers of values; observation = factors as float32 `[N, num_factors]`.

    The identity representation is then perfectly disentangled, which pins each metric's ceiling.

    >>> data = IdentityGroundTruth([3, 6, 40])
    >>> data.sample(2, np.random.RandomState(0))[1].shape
    (2, 3)
    """

    deterministic = True

    def __init__(self, factors_num_values):
        values = tuple(check_positive_int(k, f"factors_num_values[{j}]") for j, k in enumerate(factors_num_values))
        if not values:
            raise ValueError("factors_num_values must name at least one factor, got []")
        self.factors_num_values = values
        self.observation_shape = (len(values),)

    def sample_observations_from_factors(self, factors, random_state):
        return self.check_factors(factors).astype(np.float32)
