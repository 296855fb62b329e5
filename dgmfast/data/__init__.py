"""Ground-truth data sets for disentanglement metrics (SPEC §11): procedural dSprites and a synthetic
identity ground truth. Everything is generated on the fly; nothing is downloaded."""
from dgmfast.data.dsprites import ColorDSprites, DSprites, NoisyDSprites
from dgmfast.data.ground_truth import GroundTruthData
from dgmfast.data.synthetic import IdentityGroundTruth

__all__ = ["GroundTruthData", "DSprites", "NoisyDSprites", "ColorDSprites", "IdentityGroundTruth"]
