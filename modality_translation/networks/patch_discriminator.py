"""The 70x70 PatchGAN discriminator (Isola et al. 2017), in 2D or 3D, optionally spectrally normalised.

MONAI's :class:`monai.networks.nets.PatchDiscriminator` is exactly pix2pix's ``NLayerDiscriminator`` when
``kernel_size=4``, ``padding=1`` and ``last_conv_kernel_size=4``: a stride-2 convolution with LeakyReLU(0.2)
and no norm, ``num_layers_d - 1`` stride-2 and one stride-1 convolution with norm and LeakyReLU, and a
stride-1 convolution to one channel. With ``num_layers_d=3`` that is C64-C128-C256-C512(stride 1)-conv1,
whose receptive field is 70x70 and whose output for a 256x256 image is 30x30. It is used as is, with
two adaptations: its ``forward`` returns the list of every layer's output (for feature-matching losses),
so :meth:`PatchGANDiscriminator.forward` returns only the logits and :meth:`intermediate_features` the
list; and its own ``normal_init`` is replaced by :func:`init_weights` so that the initialisation is the
same configurable rule as the generators' and is applied before spectral normalisation.
"""

from __future__ import annotations

import torch
from monai.networks.nets import PatchDiscriminator

from modality_translation.networks.init import init_weights
from modality_translation.networks.layers import apply_spectral_norm, check_norm, conv_bias, layout_preserving_norms


class PatchGANDiscriminator(PatchDiscriminator):
    """PatchGAN: a map of real/fake logits, one per overlapping image patch.

    The output is raw logits (no sigmoid): the adversarial losses apply the activation their criterion
    needs (see :class:`~modality_translation.losses.adversarial.AdversarialLoss`).

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        in_channels: channels of the input; for a conditional (pix2pix) discriminator, source and
            target channels concatenated.
        channels: feature maps of the first layer (64), doubled at each further layer.
        num_layers: layers after the first; 3 gives the 70x70 PatchGAN (30x30 logits for 256x256),
            each extra layer doubles the receptive field.
        norm: ``"instance"`` (CycleGAN), ``"batch"`` (pix2pix) or ``"none"`` (common with spectral norm).
        spectral_norm: wrap every convolution in spectral normalisation (Miyato et al. 2018), as the
            "Modified UNIT" ablation does.
        init_type: weight initialisation, see :func:`~modality_translation.networks.init.init_weights`.
        init_gain: standard deviation / gain of the initialisation.

    Raises:
        ValueError: for an unknown norm or fewer than 1 layer.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        channels: int = 64,
        num_layers: int = 3,
        norm: str = "instance",
        spectral_norm: bool = False,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        norm = check_norm(norm)
        super().__init__(
            spatial_dims=spatial_dims,
            channels=channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=num_layers,
            kernel_size=4,
            activation=("leakyrelu", {"negative_slope": 0.2}),
            norm=None if norm == "none" else norm,
            bias=conv_bias(norm),
            padding=1,
            dropout=0.0,
            last_conv_kernel_size=4,
        )
        # MONAI's instance norms, replaced by ones that keep channels-last inputs channels-last.
        layout_preserving_norms(self)
        init_weights(self, init_type=init_type, gain=init_gain)
        if spectral_norm:
            apply_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the patch logits ``(batch, 1, *patch_grid)``."""
        return super().forward(x)[-1]

    def intermediate_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return every layer's output, the logits last (MONAI's ``PatchDiscriminator.forward``)."""
        return super().forward(x)
