"""Triton kernels of dgmfast, one module per op family (installed as dgmfast.kernels).

Only @triton.jit functions live here: no autograd, no torch.library. Launchers are in
dgmfast/ops/<family>.py.
"""
