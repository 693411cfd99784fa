"""A loss computed on a representation of both of its images (e.g. a CT's window channels)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class TransformedLoss(nn.Module):
    """``loss(transform(input), transform(target))``.

    The CT <-> MR bundles compare a reconstructed CT with the original through the CT window channels
    (:class:`~modality_translation.networks.CTWindowChannels`): on the one-channel wide-window scale,
    SSIM would see a flat brain, whereas in the brain window its contrast is what the term keeps.

    Args:
        loss: ``loss(input, target)``, e.g. :class:`~modality_translation.losses.CycleConsistencyLoss`.
        transform: applied to both images first (a module without parameters, or a frozen one).
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], transform: nn.Module) -> None:
        super().__init__()
        self.loss = loss
        self.transform = transform

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of the transformed images."""
        return self.loss(self.transform(input), self.transform(target))
