"""One domain's generator of UNIT (Liu et al. 2017): a code of the shared latent space to an image of the domain.

Layers (the UNIT paper's table, which the "Modified UNIT" study repeats), for ``channels = 64``:

=====  ==========================================  ====================================
layer  UNIT                                        here
=====  ==========================================  ====================================
1      RESBLK-(N512, K3, S1), **shared**           one block object, passed in by the caller
2-4    RESBLK-(N512, K3, S1)                       :class:`ResidualBlock`
(att)  --                                          SAGAN self-attention (512), when switched on
5      DCONV-(N256, K3, S2), LeakyReLU             transposed convolution, ``norm``
6      DCONV-(N128, K3, S2), LeakyReLU             transposed convolution, ``norm``
7      DCONV-(N_channels, K1, S1), Tanh            the same
=====  ==========================================  ====================================

The stride-2 transposed convolutions use padding 1 and output padding 1, so each exactly doubles the
size (the encoder's inverse). No normalisation in the table; ``norm="instance"`` (default) as in the
authors' public implementation. LeakyReLU slope 0.2. Weights are initialised, and spectral
normalisation applied, by :class:`~modality_translation.networks.unit_network.UNITNetwork`.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from modality_translation.networks.layers import conv_bias, norm_layer
from modality_translation.networks.residual_block import ResidualBlock
from modality_translation.networks.self_attention import SelfAttention
from modality_translation.networks.unit_encoder import UNIT_DOWNSAMPLINGS


class UNITGenerator(nn.Module):
    """The block shared with the other domain's generator, then the private layers of one domain.

    Args:
        shared: the shared first block (a :class:`ResidualBlock` of ``8 * channels`` feature maps);
            the same object is given to both domains' generators.
        spatial_dims: 2 or 3.
        out_channels: channels of the domain's images.
        channels: the encoder's first-layer width (64); the latent code has ``8 * channels``.
        num_res_blocks: private residual blocks (3 in UNIT).
        norm: ``"instance"`` or ``"none"``.
        attention: put a SAGAN self-attention block after the residual blocks.

    Attributes:
        shared: the shared block.
        private: the domain's own layers (``private(shared(z))`` is the generator).
    """

    def __init__(
        self,
        shared: nn.Module,
        spatial_dims: int = 2,
        out_channels: int = 1,
        channels: int = 64,
        num_res_blocks: int = 3,
        norm: str = "instance",
        attention: bool = False,
    ) -> None:
        super().__init__()
        conv_transpose = Conv[Conv.CONVTRANS, spatial_dims]
        bias = conv_bias(norm)
        width = channels * 2 ** (UNIT_DOWNSAMPLINGS + 1)
        layers: list[nn.Module] = [ResidualBlock(spatial_dims, width, norm=norm) for _ in range(num_res_blocks)]
        if attention:
            layers.append(SelfAttention(spatial_dims, width))
        for _ in range(UNIT_DOWNSAMPLINGS):
            layers += [
                conv_transpose(width, width // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias),
                norm_layer(norm, spatial_dims, width // 2),
                nn.LeakyReLU(0.2),
            ]
            width //= 2
        layers += [conv_transpose(width, out_channels, kernel_size=1), nn.Tanh()]
        self.shared = shared
        self.private = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Return images ``(batch, out_channels, *spatial * 4)`` in [-1, 1] of codes ``(batch, 8 * channels, *spatial)``."""
        return self.private(self.shared(z))
