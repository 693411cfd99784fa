"""The pix2pix / CycleGAN U-Net generator ("unet_256"), in 2D or 3D.

Why not :class:`monai.networks.nets.UNet`: with pix2pix's channel schedule (64, 128, 256, 512, 512, 512,
512, 512) MONAI's UNet down-samples only ``len(channels) - 1 = 7`` times, because its last entry is a
stride-1 bottom block, so a 256x256 input bottoms out at 2x2, not 1x1. Adding a ninth entry reaches 1x1
but then normalises the 1x1 bottom block, which instance norm refuses ("Expected more than 1 spatial
element when training") and which pix2pix deliberately leaves un-normalised. MONAI's UNet also uses 3x3
kernels (pix2pix: 4x4 with stride 2), applies dropout to every layer (pix2pix: only to the three
decoder steps above the bottleneck, as its noise source), has no output activation (pix2pix: Tanh), and
its residual units (``num_res_units``) are not part of this architecture. The network is therefore
written out here, layer for layer as in Isola et al. 2017, with MONAI's layer factories for 2D/3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Dropout
from torch import nn

from modality_translation.networks.init import init_weights
from modality_translation.networks.layers import check_divisible_input, check_norm, conv_bias, norm_layer, plain_conv, transposed_conv

PIX2PIX_UNET_256_CHANNELS = (64, 128, 256, 512, 512, 512, 512, 512)


class UNetGenerator(nn.Module):
    """U-Net with strided 4x4 convolutions, transposed-convolution decoder, skip concatenation, Tanh output.

    Level ``k`` of the encoder is ``LeakyReLU(0.2) -> Conv(k4, s2) -> norm`` (no activation before the
    first level, no norm on the first and on the innermost level); the decoder mirrors it with
    ``ReLU -> ConvTranspose(k4, s2) -> norm [-> Dropout]`` and concatenates the encoder feature map of
    the same size; the last step maps to ``out_channels`` and applies Tanh, so outputs lie in [-1, 1].
    With the default 8 levels a 256x256 input is reduced to a 1x1x512 bottleneck.

    For pix2pix, ``dropout=0.5`` is the generator's noise source; the reference keeps dropout active at
    test time too, which is the inference code's choice (``net.train()`` or enabling the Dropout layers).

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: channels of the input image.
        out_channels: channels of the output image.
        channels: feature maps of each encoder level, from the input down; one 2x down-sampling per
            entry, so every spatial size of the input must be a multiple of ``2 ** len(channels)``.
        norm: ``"instance"`` (CycleGAN/pix2pix default), ``"batch"`` or ``"none"``.
        dropout: dropout probability in the decoder steps listed by ``dropout_levels``.
        dropout_levels: how many decoder steps directly above the innermost one get dropout (pix2pix: 3).
        init_type: weight initialisation, see :func:`~modality_translation.networks.init.init_weights`.
        init_gain: standard deviation / gain of the initialisation.

    Raises:
        ValueError: for fewer than 2 levels, an unknown norm, or a dropout outside [0, 1).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = PIX2PIX_UNET_256_CHANNELS,
        norm: str = "instance",
        dropout: float = 0.0,
        dropout_levels: int = 3,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError(f"channels needs at least 2 levels, got {channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        norm = check_norm(norm)
        self.spatial_dims = spatial_dims
        self.num_levels = len(channels)
        conv = plain_conv(spatial_dims)
        conv_transpose = transposed_conv(spatial_dims)
        bias = conv_bias(norm)
        innermost = self.num_levels - 1

        self.down = nn.ModuleList()
        for level, out_ch in enumerate(channels):
            in_ch = in_channels if level == 0 else channels[level - 1]
            layers: list[nn.Module] = [] if level == 0 else [nn.LeakyReLU(0.2)]
            layers.append(conv(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias))
            if level not in (0, innermost):
                layers.append(norm_layer(norm, spatial_dims, out_ch))
            self.down.append(nn.Sequential(*layers))

        # ``self.up[level]`` produces the feature map of encoder level ``level - 1`` (the output for level 0).
        self.up = nn.ModuleList()
        for level in range(self.num_levels):
            in_ch = channels[level] * (1 if level == innermost else 2)
            if level == 0:
                layers = [nn.ReLU(), conv_transpose(in_ch, out_channels, kernel_size=4, stride=2, padding=1), nn.Tanh()]
            else:
                out_ch = channels[level - 1]
                layers = [
                    nn.ReLU(),
                    conv_transpose(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=bias),
                    norm_layer(norm, spatial_dims, out_ch),
                ]
                if dropout > 0 and innermost - dropout_levels <= level < innermost:
                    layers.append(Dropout[Dropout.DROPOUT, spatial_dims](dropout))
            self.up.append(nn.Sequential(*layers))

        init_weights(self, init_type=init_type, gain=init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch of images.

        Args:
            x: ``(batch, in_channels, *spatial)``, every spatial size a multiple of ``2 ** len(channels)``.

        Returns:
            ``(batch, out_channels, *spatial)`` in [-1, 1].

        Raises:
            ValueError: if the spatial sizes cannot be halved ``len(channels)`` times.
        """
        check_divisible_input(x, self.spatial_dims, 2**self.num_levels, "UNetGenerator")
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for level in range(self.num_levels - 2, -1, -1):
            # Skip first, then the up-sampled map, as in pix2pix's ``torch.cat([x, self.model(x)], 1)``.
            x = self.up[level](torch.cat([skips[level], x], dim=1))
        return x
