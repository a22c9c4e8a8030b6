import torch


def mirror(batch: torch.Tensor) -> torch.Tensor:
    """NCHW images mirrored left to right."""
    return torch.flip(batch, dims=[3])
