"""Helpers shared by the plain-PyTorch references."""
import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Math/accumulation dtype of SPEC §0: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample_sum(v: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the first (the batch): [B, ...] -> [B]."""
    return v.clone() if v.dim() == 1 else v.sum(dim=tuple(range(1, v.dim())))
