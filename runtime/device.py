"""Where a run computes: the device the options name."""
from __future__ import annotations

import torch

from cli.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit choice must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but torch sees no Apple GPU")
    return torch.device(name)
