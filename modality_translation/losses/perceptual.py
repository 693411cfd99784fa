"""Perceptual loss: weighted L1 between VGG19 activations of two images (the CT<->MRI study's cycle term).

The CT<->MRI study compared the activations of three layers of an ImageNet-pretrained VGG19 with a
weighted L1 to keep the cycle from collapsing to blurred modes. MONAI's :class:`monai.losses.PerceptualLoss`
is not used because it downloads its networks; here the weights come from a local torchvision
``vgg19`` state-dict file named in the bundle config, and a missing or mismatched file is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from modality_translation.networks.vgg19 import VGG19FeatureExtractor


class PerceptualLoss(nn.Module):
    """``sum_l w_l * mean|phi_l(input) - phi_l(target)|`` over chosen VGG19 layers ``l``.

    The target's activations are detached (the target is the reference, as in pix2pixHD's VGG loss).
    3D volumes ``(batch, channels, depth, height, width)`` are compared slice by slice: the depth
    axis is folded into the batch, since VGG19 is a 2D network.

    Args:
        weights_path: local torchvision ``vgg19`` state-dict file (required: random VGG features are
            not a perceptual measure).
        layers: VGG19 layers compared, by name or index.
        layer_weights: one weight per layer; ``None`` weighs every layer 1.
        input_range: intensity range of the images ([-1, 1] for the GANs).

    Raises:
        FileNotFoundError: if ``weights_path`` does not exist.
        WeightsFileError: if it is not a matching VGG19 state dict.
        ValueError: if ``layer_weights`` does not give one weight per layer.
    """

    def __init__(
        self,
        weights_path: str,
        layers: Sequence[str | int] = ("relu1_1", "relu2_1", "relu3_1"),
        layer_weights: Sequence[float] | None = None,
        input_range: Sequence[float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if weights_path is None:
            raise ValueError("PerceptualLoss needs weights_path: a local torchvision vgg19 state-dict file")
        self.extractor = VGG19FeatureExtractor(layers=layers, weights_path=weights_path, input_range=input_range)
        if layer_weights is None:
            layer_weights = [1.0] * len(self.extractor.layers)
        if len(layer_weights) != len(self.extractor.layers):
            raise ValueError(
                f"layer_weights has {len(layer_weights)} entries for {len(self.extractor.layers)} layers "
                f"{self.extractor.layers}"
            )
        self.layer_weights = [float(w) for w in layer_weights]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the weighted perceptual distance (a scalar).

        Args:
            input: ``(batch, 1 or 3, H, W)`` or ``(batch, 1 or 3, D, H, W)`` in ``input_range``.
            target: same shape as ``input``.

        Raises:
            ValueError: if the shapes differ.
        """
        if input.shape != target.shape:
            raise ValueError(f"input and target shapes differ: {tuple(input.shape)} vs {tuple(target.shape)}")
        if input.ndim == 5:
            input, target = (_slices_as_batch(v) for v in (input, target))
        input_features = self.extractor(input)
        with torch.no_grad():
            target_features = self.extractor(target)
        loss = input.new_zeros(())
        for name, weight in zip(self.extractor.layers, self.layer_weights):
            loss = loss + weight * (input_features[name] - target_features[name]).abs().mean()
        return loss


def _slices_as_batch(volume: torch.Tensor) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B * D, C, H, W)``."""
    batch, channels, depth, height, width = volume.shape
    return volume.permute(0, 2, 1, 3, 4).reshape(batch * depth, channels, height, width)
