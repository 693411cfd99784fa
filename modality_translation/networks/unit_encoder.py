"""One domain's encoder of UNIT (Liu et al. 2017): an image to the mean of its code in the shared latent space.

Layers (the UNIT paper's table, which the "Modified UNIT" study repeats), for ``channels = 64``:

=====  ==========================================  ====================================
layer  UNIT                                        here
=====  ==========================================  ====================================
1      CONV-(N64, K7, S1), LeakyReLU               the same, reflection padding, ``norm``
2      CONV-(N128, K3, S2), LeakyReLU              the same, ``norm``
3      CONV-(N256, K3, S2), LeakyReLU              the same, ``norm``
(att)  --                                          SAGAN self-attention (256), when switched on
4-6    RESBLK-(N512, K3, S1)                       :class:`ResidualBlock`; the first one's shortcut
                                                   is a 1x1 convolution (256 -> 512)
mu     RESBLK-(N512, K3, S1), **shared**           one block object, passed in by the caller
=====  ==========================================  ====================================

The table names no normalisation; ``norm="instance"`` (the default) follows the authors' public
implementation, ``"none"`` gives the table literally. LeakyReLU slope 0.2. The encoder outputs the mean
of ``q(z | x) = N(mu(x), I)``; the sampling ``z = mu + eta`` belongs to
:class:`~modality_translation.networks.unit_network.UNITNetwork`, which also owns the shared block,
initialises the weights and applies spectral normalisation.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from modality_translation.networks.layers import conv_bias, norm_layer
from modality_translation.networks.residual_block import ResidualBlock
from modality_translation.networks.self_attention import SelfAttention

#: Stride-2 convolutions of the encoder (and transposed ones of the generator): inputs must be multiples of 4.
UNIT_DOWNSAMPLINGS = 2


class UNITEncoder(nn.Module):
    """Private layers of one domain, then the block shared with the other domain's encoder.

    Args:
        shared: the shared last block (a :class:`ResidualBlock` of ``8 * channels`` feature maps); the
            same object is given to both domains' encoders.
        spatial_dims: 2 or 3.
        in_channels: channels of the domain's images.
        channels: feature maps of the first layer (64); 2x and 4x in the strided layers, 8x in the
            residual blocks (the latent code).
        num_res_blocks: private residual blocks (3 in UNIT; at least 1, the first widens to the latent channels).
        norm: ``"instance"`` or ``"none"``.
        attention: put a SAGAN self-attention block after the strided convolutions.

    Attributes:
        private: the domain's own layers (``shared(private(x))`` is the encoder).
        shared: the shared block.
    """

    def __init__(
        self,
        shared: nn.Module,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: int = 64,
        num_res_blocks: int = 3,
        norm: str = "instance",
        attention: bool = False,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            conv(in_channels, channels, kernel_size=7, padding=3, padding_mode="reflect", bias=bias),
            norm_layer(norm, spatial_dims, channels),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for _ in range(UNIT_DOWNSAMPLINGS):
            layers += [
                conv(width, width * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                norm_layer(norm, spatial_dims, width * 2),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        if attention:
            layers.append(SelfAttention(spatial_dims, width))
        latent = 2 * width
        layers += [ResidualBlock(spatial_dims, width if i == 0 else latent, norm=norm, out_channels=latent)
                   for i in range(num_res_blocks)]
        self.private = nn.Sequential(*layers)
        self.shared = shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the latent mean ``(batch, 8 * channels, *spatial / 4)`` of images ``(batch, in_channels, *spatial)``."""
        return self.shared(self.private(x))
