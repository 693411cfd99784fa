"""The CycleGAN ResNet generator (Johnson et al. 2016 as used by Zhu et al. 2017), in 2D or 3D.

Layout for the CycleGAN default (``base_channels=64``, 2 down-samplings, 9 blocks), in the paper's
notation: c7s1-64, d128, d256, R256 x 9, u128, u64, c7s1-out, Tanh. Every convolution with a spatial
extent uses reflection padding, as the reference does to reduce border artefacts.

Written here rather than taken from MONAI: :class:`monai.networks.blocks.Convolution` and
:class:`monai.networks.blocks.ResidualUnit` pad with zeros only and put an activation after the second
convolution of a residual unit, whereas the CycleGAN block is ``pad-conv-norm-ReLU-pad-conv-norm`` with
reflection padding and no activation before the sum (:class:`~modality_translation.networks.residual_block.ResidualBlock`).
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from modality_translation.networks.init import init_weights
from modality_translation.networks.layers import check_divisible_input, check_norm, conv_bias, norm_layer, padded_conv
from modality_translation.networks.residual_block import ResidualBlock


def _conv_norm_relu(conv: nn.Module, norm: str, spatial_dims: int) -> list[nn.Module]:
    """The generator's repeated unit: a convolution, its normalisation and ReLU."""
    return [conv, norm_layer(norm, spatial_dims, conv.out_channels), nn.ReLU()]


class ResNetGenerator(nn.Module):
    """Encoder (c7s1 + strided convolutions), residual blocks, decoder (transposed convolutions), Tanh.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: channels of the input image.
        out_channels: channels of the output image.
        base_channels: feature maps of the first layer (64 in CycleGAN); doubled at each down-sampling.
        num_blocks: residual blocks at the bottleneck (9 for 256x256 images, 6 for 128x128 in CycleGAN).
        num_downsamplings: stride-2 convolutions (and as many transposed convolutions); every spatial
            size of the input must be a multiple of ``2 ** num_downsamplings``.
        norm: ``"instance"`` (CycleGAN default), ``"batch"`` or ``"none"``.
        dropout: dropout probability inside the residual blocks (0 in CycleGAN).
        init_type: weight initialisation, see :func:`~modality_translation.networks.init.init_weights`.
        init_gain: standard deviation / gain of the initialisation.

    Raises:
        ValueError: for an unknown norm or a negative number of blocks or down-samplings.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        num_blocks: int = 9,
        num_downsamplings: int = 2,
        norm: str = "instance",
        dropout: float = 0.0,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if num_blocks < 0 or num_downsamplings < 0:
            raise ValueError(f"num_blocks and num_downsamplings must be >= 0, got {num_blocks}, {num_downsamplings}")
        norm = check_norm(norm)
        self.spatial_dims = spatial_dims
        self.num_downsamplings = num_downsamplings
        conv = Conv[Conv.CONV, spatial_dims]
        conv_transpose = Conv[Conv.CONVTRANS, spatial_dims]
        reflect_conv = padded_conv(spatial_dims)
        bias = conv_bias(norm)

        layers = _conv_norm_relu(
            reflect_conv(in_channels, base_channels, kernel_size=7, padding=3, padding_mode="reflect", bias=bias),
            norm,
            spatial_dims,
        )
        channels = base_channels
        for _ in range(num_downsamplings):
            layers += _conv_norm_relu(
                conv(channels, channels * 2, kernel_size=3, stride=2, padding=1, bias=bias), norm, spatial_dims
            )
            channels *= 2
        layers += [ResidualBlock(spatial_dims, channels, norm=norm, dropout=dropout) for _ in range(num_blocks)]
        for _ in range(num_downsamplings):
            layers += _conv_norm_relu(
                conv_transpose(channels, channels // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias),
                norm,
                spatial_dims,
            )
            channels //= 2
        layers += [reflect_conv(channels, out_channels, kernel_size=7, padding=3, padding_mode="reflect"), nn.Tanh()]
        self.model = nn.Sequential(*layers)

        init_weights(self, init_type=init_type, gain=init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch of images.

        Args:
            x: ``(batch, in_channels, *spatial)``, spatial sizes multiples of ``2 ** num_downsamplings``.

        Returns:
            ``(batch, out_channels, *spatial)`` in [-1, 1].

        Raises:
            ValueError: if the output would not have the input's spatial size.
        """
        check_divisible_input(x, self.spatial_dims, 2**self.num_downsamplings, "ResNetGenerator")
        return self.model(x)
