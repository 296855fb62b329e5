"""Disentanglement metrics (SPEC §11) with disentanglement_lib's definitions, defaults and output keys.

Every metric has the signature `metric(ground_truth_data, representation_fn, random_state, **kwargs)
-> dict`: `ground_truth_data` a `dgmfast.data.GroundTruthData`, `representation_fn` a callable
`numpy [B, ...] -> [B, L]` or a `torch.nn.Module` (see `Representation`), `random_state` a
`numpy.random.RandomState` (or int seed). Results are deterministic given the random state.
Classifier-based metrics need scikit-learn (`pip install dgmfast[metrics]`). See docs/metrics.md.

    >>> from dgmfast.data import DSprites
    >>> results, summary = dgmfast.metrics.evaluate(encoder, DSprites(), seed=0)
"""
from dgmfast.metrics.beta_vae import beta_vae_score
from dgmfast.metrics.dci import completeness, dci, disentanglement
from dgmfast.metrics.evaluate import METRICS, evaluate
from dgmfast.metrics.factor_vae import factor_vae_score
from dgmfast.metrics.mig import mig, mig_ceiling, mig_from_mutual_info
from dgmfast.metrics.modularity import modularity, modularity_explicitness
from dgmfast.metrics.sap import sap_score
from dgmfast.metrics.utils import Encoder, Representation, discrete_entropy, discrete_mutual_info, histogram_discretize

__all__ = ["beta_vae_score", "factor_vae_score", "mig", "dci", "modularity_explicitness", "sap_score", "evaluate",
           "METRICS", "disentanglement", "completeness", "modularity", "mig_from_mutual_info", "mig_ceiling",
           "Encoder", "Representation", "histogram_discretize", "discrete_entropy", "discrete_mutual_info"]
