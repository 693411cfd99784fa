"""The residual block of the ResNet-style generators (CycleGAN's ResNet-9, UNIT's encoders and generators).

``x + (reflect-pad, conv3, norm, ReLU, [dropout], reflect-pad, conv3, norm)(x)``: the block of
Johnson et al. 2016 as CycleGAN's reference code writes it, with no activation after the sum. UNIT's
authors use the same block (their ``ResBlock``: two reflection-padded 3x3 convolutions with instance
norm, ReLU between them).

Written here rather than taken from MONAI: :class:`monai.networks.blocks.ResidualUnit` pads with zeros
only and puts an activation after the second convolution.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv, Dropout
from torch import nn

from modality_translation.networks.layers import conv_bias, norm_layer, padded_conv


class ResidualBlock(nn.Module):
    """``shortcut(x) + (reflect-pad, conv3, norm, ReLU, [dropout], reflect-pad, conv3, norm)(x)``.

    Args:
        spatial_dims: 2 or 3.
        channels: feature maps in.
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
        dropout: dropout probability between the two convolutions (0 disables it).
        out_channels: feature maps out (default: ``channels``). When they differ, the shortcut is a
            1x1 convolution (the projection shortcut of He et al. 2016), as for the 256 -> 512 block of
            UNIT's encoder; otherwise it is the identity.
    """

    def __init__(
        self, spatial_dims: int, channels: int, norm: str = "instance", dropout: float = 0.0, out_channels: int | None = None
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        reflect_conv = padded_conv(spatial_dims)
        bias = conv_bias(norm)
        out_channels = channels if out_channels is None else int(out_channels)
        layers = [
            reflect_conv(channels, out_channels, kernel_size=3, padding=1, padding_mode="reflect", bias=bias),
            norm_layer(norm, spatial_dims, out_channels),
            nn.ReLU(),
        ]
        if dropout > 0:
            layers.append(Dropout[Dropout.DROPOUT, spatial_dims](dropout))
        layers += [
            reflect_conv(out_channels, out_channels, kernel_size=3, padding=1, padding_mode="reflect", bias=bias),
            norm_layer(norm, spatial_dims, out_channels),
        ]
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if out_channels == channels else conv(channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the shortcut of ``x`` plus the residual branch (``out_channels`` feature maps, same size)."""
        return self.shortcut(x) + self.body(x)
