"""Generators, discriminators and feature extractors of the GAN bundles, 2D and 3D.

Every constructor takes plain JSON values, so a MONAI bundle config can build them with ``_target_``
(e.g. ``"_target_": "modality_translation.networks.UNetGenerator"``).
"""

from modality_translation.networks.bilateral import bilateral_filter_2d
from modality_translation.networks.init import (
    WeightsFileError,
    init_weights,
    load_checked_state_dict,
    read_state_dict_file,
)
from modality_translation.networks.patch_discriminator import PatchGANDiscriminator
from modality_translation.networks.pretrained_unet import ResNet18Encoder, ResNet18UNet
from modality_translation.networks.layers import apply_spectral_norm, has_spectral_norm
from modality_translation.networks.residual_block import ResidualBlock
from modality_translation.networks.resnet_generator import ResNetGenerator
from modality_translation.networks.self_attention import SelfAttention
from modality_translation.networks.unet_generator import PIX2PIX_UNET_256_CHANNELS, UNetGenerator
from modality_translation.networks.unit_discriminator import UNITDiscriminator
from modality_translation.networks.unit_encoder import UNITEncoder
from modality_translation.networks.unit_generator import UNITGenerator
from modality_translation.networks.unit_network import (
    ATTENTION_PLACES,
    DIRECTIONS,
    SPECTRAL_NORM_KINDS,
    UNITNetwork,
    check_attention,
    check_spectral_norm,
)
from modality_translation.networks.unit_translation import UNITTranslation
from modality_translation.networks.vgg19 import VGG19_LAYER_INDEX, VGG19FeatureExtractor
from modality_translation.networks.windowed_ct import (
    DEFAULT_CT_CHANNEL_WINDOWS,
    CTWindowBlend,
    CTWindowChannels,
    WindowedCTNetwork,
)

__all__ = [
    "ATTENTION_PLACES",
    "CTWindowBlend",
    "CTWindowChannels",
    "DEFAULT_CT_CHANNEL_WINDOWS",
    "DIRECTIONS",
    "PIX2PIX_UNET_256_CHANNELS",
    "PatchGANDiscriminator",
    "ResNet18Encoder",
    "ResNet18UNet",
    "ResNetGenerator",
    "ResidualBlock",
    "SPECTRAL_NORM_KINDS",
    "SelfAttention",
    "UNITDiscriminator",
    "UNITEncoder",
    "UNITGenerator",
    "UNITNetwork",
    "UNITTranslation",
    "UNetGenerator",
    "VGG19FeatureExtractor",
    "VGG19_LAYER_INDEX",
    "WindowedCTNetwork",
    "WeightsFileError",
    "apply_spectral_norm",
    "bilateral_filter_2d",
    "check_attention",
    "check_spectral_norm",
    "has_spectral_norm",
    "init_weights",
    "load_checked_state_dict",
    "read_state_dict_file",
]
