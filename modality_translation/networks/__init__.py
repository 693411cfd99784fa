"""Generators, discriminators and feature extractors of the GAN bundles, 2D and 3D.

Every constructor takes plain JSON values, so a MONAI bundle config can build them with ``_target_``
(e.g. ``"_target_": "modality_translation.networks.UNetGenerator"``).
"""

from modality_translation.networks.init import (
    WeightsFileError,
    init_weights,
    load_checked_state_dict,
    read_state_dict_file,
)
from modality_translation.networks.patch_discriminator import PatchGANDiscriminator
from modality_translation.networks.pretrained_unet import ResNet18Encoder, ResNet18UNet
from modality_translation.networks.resnet_generator import ResidualBlock, ResNetGenerator
from modality_translation.networks.unet_generator import PIX2PIX_UNET_256_CHANNELS, UNetGenerator
from modality_translation.networks.vgg19 import VGG19_LAYER_INDEX, VGG19FeatureExtractor

__all__ = [
    "PIX2PIX_UNET_256_CHANNELS",
    "PatchGANDiscriminator",
    "ResNet18Encoder",
    "ResNet18UNet",
    "ResNetGenerator",
    "ResidualBlock",
    "UNetGenerator",
    "VGG19FeatureExtractor",
    "VGG19_LAYER_INDEX",
    "WeightsFileError",
    "init_weights",
    "load_checked_state_dict",
    "read_state_dict_file",
]
