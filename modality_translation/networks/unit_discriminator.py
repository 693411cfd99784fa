"""The discriminator of UNIT (Liu et al. 2017): five stride-2 convolutions and a 2x2 one, in 2D or 3D.

Layers (the UNIT paper's table, which the "Modified UNIT" study repeats), for ``channels = 64`` and
``num_layers = 5``:

=====  =======================================  ======================================================
layer  UNIT                                     here
=====  =======================================  ======================================================
1-5    CONV-(N64 .. N1024, K3, S2), LeakyReLU   the same, padding 1, no normalisation (``norm``)
6      CONV-(N1, K2, S1), Sigmoid               the same, no padding, returning **logits**: the sigmoid
                                                is inside the loss (``binary_cross_entropy_with_logits``,
                                                the numerically stable form of the same objective)
=====  =======================================  ======================================================

For 256 x 256 images the logits are a 7 x 7 map; each of them sees a 95 x 95 pixel window. Fewer
layers (``num_layers``) suit small test images. Optional spectral normalisation of every convolution
(the "Modified UNIT" switch).
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from modality_translation.networks.init import init_weights
from modality_translation.networks.layers import apply_spectral_norm, check_divisible_input, check_norm, conv_bias, norm_layer


class UNITDiscriminator(nn.Module):
    """UNIT's discriminator: a map of real/fake logits.

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: channels of the judged images.
        channels: feature maps of the first layer (64), doubled at each further layer.
        num_layers: stride-2 convolutions (5 in UNIT); inputs must be multiples of ``2 ** num_layers``
            and at least twice that.
        norm: ``"none"`` (UNIT), ``"instance"`` or ``"batch"``, after every stride-2 convolution but the first.
        spectral_norm: wrap every convolution in spectral normalisation (Miyato et al. 2018).
        init_type: weight initialisation, see :func:`~modality_translation.networks.init.init_weights`.
        init_gain: standard deviation / gain of the initialisation.

    Raises:
        ValueError: for fewer than 1 layer, an unknown norm, or a spectral-norm switch that is not a boolean.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: int = 64,
        num_layers: int = 5,
        norm: str = "none",
        spectral_norm: bool = False,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not isinstance(spectral_norm, bool):
            raise ValueError(f"spectral_norm must be true or false, got {spectral_norm!r}")
        norm = check_norm(norm)
        conv = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.num_layers = num_layers
        layers: list[nn.Module] = []
        width_in, width = in_channels, channels
        for index in range(num_layers):
            layers.append(conv(width_in, width, kernel_size=3, stride=2, padding=1, bias=index == 0 or conv_bias(norm)))
            if index > 0:
                layers.append(norm_layer(norm, spatial_dims, width))
            layers.append(nn.LeakyReLU(0.2))
            width_in, width = width, width * 2
        layers.append(conv(width_in, 1, kernel_size=2, stride=1, padding=0))
        self.model = nn.Sequential(*layers)
        init_weights(self, init_type=init_type, gain=init_gain)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(batch, 1, *(spatial / 2 ** num_layers - 1))``.

        Raises:
            ValueError: unless every spatial size is a multiple of ``2 ** num_layers`` and at least twice that.
        """
        factor = 2**self.num_layers
        check_divisible_input(x, self.spatial_dims, factor, "UNITDiscriminator")
        if min(x.shape[2:]) < 2 * factor:
            raise ValueError(f"UNITDiscriminator with {self.num_layers} layers needs spatial sizes of at least "
                             f"{2 * factor}, got {tuple(x.shape)}")
        return self.model(x)
