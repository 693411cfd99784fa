"""Reconstruction terms of the translation GANs: cycle consistency, identity and paired fidelity.

One configurable loss compares an image with its reconstruction (``F(G(x))`` vs ``x`` for the cycle,
``G(y)`` vs ``y`` for identity, ``G(x)`` vs ``y`` for pix2pix) as a weighted sum of the terms the seed
studies use:

- ``l1``: mean absolute error (CycleGAN's cycle and identity losses, pix2pix's L1, UNIT's reconstruction);
- ``ssim``: ``1 - SSIM`` by MONAI's :class:`monai.losses.SSIMLoss` (the CT<->MRI study's cycle loss);
  ``data_range`` must be the images' intensity span, 2.0 for images in [-1, 1];
- ``charbonnier``: the Charbonnier penalty (the "Modified UNIT" study's replacement for L1/L2);
- ``perceptual``: weighted L1 between VGG19 activations (the CT<->MRI study's second cycle term).

The overall weight (CycleGAN's lambda = 10, identity 0.5 * lambda) belongs to the trainer; the weights
here only mix the terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import SSIMLoss
from torch import nn

from modality_translation.losses.charbonnier import CharbonnierLoss
from modality_translation.losses.perceptual import PerceptualLoss


class CycleConsistencyLoss(nn.Module):
    """Weighted sum of L1, SSIM, Charbonnier and perceptual distances between two images.

    Terms with weight 0 are not built or computed.

    Args:
        l1_weight: weight of the mean absolute error.
        ssim_weight: weight of ``1 - SSIM``.
        charbonnier_weight: weight of the Charbonnier penalty.
        perceptual_weight: weight of the VGG19 perceptual distance.
        spatial_dims: 2 or 3, for SSIM.
        data_range: intensity span of the images for SSIM (2.0 for [-1, 1]).
        ssim_win_size: SSIM Gaussian window size (11, sigma 1.5, as Wang et al. 2004).
        charbonnier_eps: Charbonnier smoothing constant.
        perceptual_weights_path: local torchvision ``vgg19`` state dict, required when
            ``perceptual_weight > 0``.
        perceptual_layers: VGG19 layers compared.
        perceptual_layer_weights: one weight per perceptual layer (``None``: all 1).

    Raises:
        ValueError: for negative weights, all weights 0, or a perceptual term without weights file.
        FileNotFoundError / WeightsFileError: from loading the VGG19 weights.
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        ssim_weight: float = 0.0,
        charbonnier_weight: float = 0.0,
        perceptual_weight: float = 0.0,
        spatial_dims: int = 2,
        data_range: float = 2.0,
        ssim_win_size: int = 11,
        charbonnier_eps: float = 1e-3,
        perceptual_weights_path: str | None = None,
        perceptual_layers: Sequence[str | int] = ("relu1_1", "relu2_1", "relu3_1"),
        perceptual_layer_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        weights = {
            "l1": float(l1_weight),
            "ssim": float(ssim_weight),
            "charbonnier": float(charbonnier_weight),
            "perceptual": float(perceptual_weight),
        }
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"term weights must be >= 0, got {weights}")
        self.weights = {name: w for name, w in weights.items() if w > 0}
        if not self.weights:
            raise ValueError("at least one of l1_weight, ssim_weight, charbonnier_weight, perceptual_weight must be > 0")
        if "perceptual" in self.weights and perceptual_weights_path is None:
            raise ValueError("perceptual_weight > 0 needs perceptual_weights_path (a local torchvision vgg19 state dict)")

        self.terms = nn.ModuleDict()
        if "l1" in self.weights:
            self.terms["l1"] = nn.L1Loss()
        if "ssim" in self.weights:
            self.terms["ssim"] = SSIMLoss(spatial_dims=spatial_dims, data_range=data_range, win_size=ssim_win_size)
        if "charbonnier" in self.weights:
            self.terms["charbonnier"] = CharbonnierLoss(eps=charbonnier_eps)
        if "perceptual" in self.weights:
            self.terms["perceptual"] = PerceptualLoss(
                weights_path=perceptual_weights_path,
                layers=perceptual_layers,
                layer_weights=perceptual_layer_weights,
            )

    def components(self, reconstructed: torch.Tensor, original: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted value of every active term, for logging.

        Args:
            reconstructed: the network's output, ``(batch, channels, *spatial)``.
            original: the image it should equal, same shape.

        Returns:
            Term name (``"l1"``, ``"ssim"``, ``"charbonnier"``, ``"perceptual"``) to scalar tensor.

        Raises:
            ValueError: if the shapes differ.
        """
        if reconstructed.shape != original.shape:
            raise ValueError(f"shapes differ: reconstructed {tuple(reconstructed.shape)}, original {tuple(original.shape)}")
        return {name: term(reconstructed, original) for name, term in self.terms.items()}

    def forward(self, reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """Return ``sum(weight * term)`` over the active terms (a scalar)."""
        values = self.components(reconstructed, original)
        return sum(self.weights[name] * value for name, value in values.items())
