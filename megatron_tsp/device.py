"""The device this process computes on: the one place code asks for it, and the one place a
harness can point elsewhere (tests run the GPU code path on fake "cuda" tensors without a GPU)."""

from typing import Optional

import torch

_override: Optional[torch.device] = None


def compute_device() -> torch.device:
    """This rank's GPU (the current CUDA device, set per local rank at start-up), else the CPU."""
    if _override is not None:
        return _override
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def set_compute_device(device: Optional[torch.device]) -> None:
    """Make compute_device() answer `device` (None: detect again)."""
    global _override
    _override = None if device is None else torch.device(device)
