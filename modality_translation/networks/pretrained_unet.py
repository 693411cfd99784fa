"""U-Net generator with a ResNet-18 encoder that can start from ImageNet weights in a local file.

The encoder is MONAI's :class:`monai.networks.nets.ResNet` configured as torchvision's ``resnet18``
(7x7 stride-2 stem, max-pool, basic blocks [2, 2, 2, 2], 1x1-convolution shortcuts, no bias), so its
parameter names are torchvision's (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...,
``layer2.0.downsample.0.weight``) and a torchvision ResNet-18 state dict loads directly. MONAI's own
``resnet18`` / :class:`~monai.networks.nets.FlexibleUNet` backbone cannot be used for this: it follows
MedicalNet (parameter-free "type A" shortcuts, no ``downsample`` layers) and only loads MedicalNet's 3D
weights. The decoder and output head are MONAI's FlexibleUNet ``UNetDecoder`` and ``SegmentationHead``
(the segmentation_models.pytorch design), with Tanh so that outputs lie in [-1, 1] like the images.

The CT<->MRI study used an ImageNet-pretrained ResNet-18 encoder; the weights file (torchvision's
``resnet18`` state dict) is given by path in the bundle config and never downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from modality_translation.networks.init import (
    WeightsFileError,
    init_weights,
    load_checked_state_dict,
    read_state_dict_file,
)
from modality_translation.networks.layers import check_divisible_input, check_norm

RESNET18_FEATURE_CHANNELS = (64, 64, 128, 256, 512)


class ResNet18Encoder(ResNet):
    """torchvision-compatible ResNet-18 trunk returning the feature maps of its five resolutions.

    Args:
        spatial_dims: 2 (ImageNet weights are 2D) or 3 (random initialisation only).
        in_channels: channels of the input image.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1) -> None:
        super().__init__(
            block="basic",
            layers=[2, 2, 2, 2],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
        )
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the stem output (1/2 size) and the outputs of ``layer1`` .. ``layer4`` (1/4 .. 1/32 size)."""
        x = self.act(self.bn1(self.conv1(x)))
        features = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features

    def load_torchvision_weights(self, path: str | os.PathLike) -> None:
        """Load a torchvision ``resnet18`` state dict file into the encoder.

        ``fc.*`` (the ImageNet classifier) is ignored. For a one-channel encoder the RGB filters of
        ``conv1`` are summed over their input channels, so that a grey image ``g`` replicated to
        ``(g, g, g)`` and fed to the pretrained network gives the same stem response.

        Args:
            path: local ``.pth`` file holding the state dict.

        Raises:
            FileNotFoundError: if the file does not exist.
            WeightsFileError: if it is not a state dict, lacks encoder keys, has keys other than
                ``fc.*`` that the encoder does not have, or has tensors of other shapes (e.g. 2D weights
                for a 3D encoder, or a ResNet-34/50 file).
        """
        state = read_state_dict_file(path)
        conv1 = state.get("conv1.weight")
        if conv1 is not None and conv1.ndim >= 2 and conv1.shape[1] == 3 and self.in_channels != 3:
            if self.in_channels != 1:
                raise WeightsFileError(
                    path, f"conv1 has 3 (RGB) input channels; an encoder with {self.in_channels} channels cannot use it "
                    "(only 1 or 3 input channels are supported)"
                )
            state = dict(state, **{"conv1.weight": conv1.sum(dim=1, keepdim=True)})
        load_checked_state_dict(self, state, path, ignore=lambda key: key.startswith("fc."))


class ResNet18UNet(nn.Module):
    """U-Net generator: ResNet-18 encoder, up-sampling decoder with skip concatenation, Tanh output.

    Args:
        spatial_dims: 2 for slices (pretrained weights), 3 for volumes (random initialisation).
        in_channels: channels of the input image.
        out_channels: channels of the output image.
        pretrained_weights: path of a torchvision ``resnet18`` state dict file to initialise the encoder
            with, or ``None`` for MONAI's random (Kaiming) initialisation.
        decoder_channels: feature maps of the five decoder stages, from the bottleneck up.
        norm: decoder normalisation, ``"instance"``, ``"batch"`` or ``"none"``; the encoder keeps the
            batch norm its pretrained weights were trained with.
        upsample: decoder up-sampling, ``"deconv"`` (transposed convolution, as the seeds' U-Net) or
            ``"nontrainable"`` (interpolation followed by a convolution).
        dropout: dropout probability in the decoder.
        init_type: initialisation of the decoder and head, see
            :func:`~modality_translation.networks.init.init_weights`.
        init_gain: standard deviation / gain of that initialisation.

    Raises:
        FileNotFoundError: if ``pretrained_weights`` names a missing file.
        WeightsFileError: if that file does not match a ResNet-18 encoder.
        ValueError: for an unknown norm or a wrong number of decoder stages.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        pretrained_weights: str | None = None,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str = "instance",
        upsample: str = "deconv",
        dropout: float = 0.0,
        init_type: str = "normal",
        init_gain: float = 0.02,
    ) -> None:
        super().__init__()
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != len(RESNET18_FEATURE_CHANNELS):
            raise ValueError(f"decoder_channels needs {len(RESNET18_FEATURE_CHANNELS)} entries, got {decoder_channels}")
        norm = check_norm(norm)
        self.spatial_dims = spatial_dims
        self.encoder = ResNet18Encoder(spatial_dims=spatial_dims, in_channels=in_channels)
        self.decoder = UNetDecoder(
            spatial_dims=spatial_dims,
            encoder_channels=(in_channels, *RESNET18_FEATURE_CHANNELS),
            decoder_channels=decoder_channels,
            act="relu",
            norm=None if norm == "none" else norm,
            dropout=dropout,
            bias=norm != "batch",
            upsample=upsample,
            pre_conv="default",
            interp_mode="nearest",
            align_corners=None,
            is_pad=False,
        )
        self.head = SegmentationHead(
            spatial_dims=spatial_dims, in_channels=decoder_channels[-1], out_channels=out_channels, act="tanh"
        )
        init_weights(self.decoder, init_type=init_type, gain=init_gain)
        init_weights(self.head, init_type=init_type, gain=init_gain)
        if pretrained_weights is not None:
            self.encoder.load_torchvision_weights(pretrained_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate a batch of images.

        Args:
            x: ``(batch, in_channels, *spatial)``, spatial sizes multiples of 32.

        Returns:
            ``(batch, out_channels, *spatial)`` in [-1, 1].

        Raises:
            ValueError: if the spatial sizes are not multiples of 32.
        """
        check_divisible_input(x, self.spatial_dims, 32, "ResNet18UNet")
        features = self.encoder(x)
        return self.head(self.decoder(features, skip_connect=len(features) - 1))
