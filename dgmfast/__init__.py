"""dgmfast: fused kernels for deep generative models (skeleton)."""
__version__ = "0.1.0"
