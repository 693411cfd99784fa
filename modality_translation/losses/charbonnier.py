"""The Charbonnier penalty rho(x) = sqrt(x^2 + eps^2), a differentiable L1 (the "Modified UNIT" study).

It behaves like L2 for ``|x| << eps`` and like L1 for ``|x| >> eps``, so it keeps L1's robustness to
outliers while having a gradient at 0. Neither PyTorch nor MONAI ships it.
"""

from __future__ import annotations

import torch
from torch import nn

REDUCTIONS = ("mean", "sum", "none")


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Element-wise ``sqrt(x**2 + eps**2)``; equals ``eps`` at 0."""
    return torch.sqrt(x * x + eps * eps)


class CharbonnierLoss(nn.Module):
    """Charbonnier penalty of the difference between two images.

    Args:
        eps: the smoothing constant, in image intensity units (1e-3 as in LapSRN, Lai et al. 2017).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (element-wise).

    Raises:
        ValueError: for a non-positive ``eps`` or an unknown reduction.
    """

    def __init__(self, eps: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.eps = float(eps)
        self.reduction = reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the reduced ``charbonnier(input - target, eps)``."""
        penalty = charbonnier(input - target, self.eps)
        if self.reduction == "mean":
            return penalty.mean()
        if self.reduction == "sum":
            return penalty.sum()
        return penalty
