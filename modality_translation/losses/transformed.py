"""A loss computed on a representation of both of its images (e.g. a CT's window channels)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.networks.layers import gaussian_1d, separable_filtering
from torch import nn


class TransformedLoss(nn.Module):
    """``loss(low_pass(transform(input)), low_pass(transform(target)))``.

    The CT <-> MR bundles compare a reconstructed CT with the original through the CT window channels
    (:class:`~modality_translation.networks.CTWindowChannels`): on the one-channel wide-window scale,
    SSIM would see a flat brain, whereas in the brain window its contrast is what the term keeps.

    The optional Gaussian low-pass compares only what lies above the noise scale. A CT's quantum noise
    has no counterpart in an MR image, so a cycle asked to reconstruct it can only succeed by hiding
    the noise in the synthetic MR as faint texture; comparing both images after the low-pass removes
    that incentive and leaves the anatomy (and its contrast) to be kept. Measured on the CT <-> T2 demo
    (that bundle's ablation row 16, ``ct_cycle_smoothing_sigma`` 1), it made both translations worse:
    off by default.

    Args:
        loss: ``loss(input, target)``, e.g. :class:`~modality_translation.losses.CycleConsistencyLoss`.
        transform: applied to both images first (a module without parameters, or a frozen one).
        smoothing_sigma: standard deviation, in pixels, of the Gaussian low-pass applied to both
            transformed images (edges replicated); 0 compares them as they are.

    Raises:
        ValueError: a negative ``smoothing_sigma``.
    """

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], transform: nn.Module,
                 smoothing_sigma: float = 0.0) -> None:
        super().__init__()
        if smoothing_sigma < 0:
            raise ValueError(f"smoothing_sigma must be >= 0, got {smoothing_sigma}")
        self.loss = loss
        self.transform = transform
        self.smoothing_sigma = float(smoothing_sigma)
        kernel = gaussian_1d(torch.tensor(self.smoothing_sigma), truncated=4.0) if smoothing_sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel.float(), persistent=False)

    def _represent(self, image: torch.Tensor) -> torch.Tensor:
        image = self.transform(image)
        if self.smoothing_sigma == 0:
            return image
        # MONAI's GaussianFilter pads with zeros, which would darken a -1 background at the border
        return separable_filtering(image, [self.kernel.to(image)] * (image.ndim - 2), mode="replicate")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of the transformed (and low-passed) images."""
        return self.loss(self._represent(input), self._represent(target))
