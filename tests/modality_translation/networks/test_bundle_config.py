"""The networks must be buildable from a MONAI bundle config: ``_target_`` plus plain JSON arguments."""

import json

import torch
from monai.bundle import ConfigParser

from modality_translation.networks import PatchGANDiscriminator, ResNet18UNet, ResNetGenerator, UNetGenerator


def test_generators_and_discriminator_are_built_from_a_json_config(tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(ResNet18UNet().encoder.state_dict(), weights)
    config = {
        "generator_unet": {
            "_target_": "modality_translation.networks.UNetGenerator",
            "channels": [8, 16, 32, 32, 32],
            "norm": "instance",
            "dropout": 0.5,
        },
        "generator_resnet": {"_target_": "modality_translation.networks.ResNetGenerator", "base_channels": 8, "num_blocks": 2},
        "generator_pretrained": {
            "_target_": "modality_translation.networks.ResNet18UNet",
            "pretrained_weights": str(weights),
            "decoder_channels": [32, 16, 16, 8, 8],
        },
        "discriminator": {
            "_target_": "modality_translation.networks.PatchGANDiscriminator",
            "in_channels": 2,
            "channels": 8,
            "spectral_norm": True,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    parser = ConfigParser()
    parser.read_config(str(path))
    assert isinstance(parser.get_parsed_content("generator_unet"), UNetGenerator)
    assert isinstance(parser.get_parsed_content("generator_resnet"), ResNetGenerator)
    assert isinstance(parser.get_parsed_content("generator_pretrained"), ResNet18UNet)
    discriminator = parser.get_parsed_content("discriminator")
    assert isinstance(discriminator, PatchGANDiscriminator)
    assert discriminator(torch.zeros(1, 2, 64, 64)).shape == (1, 1, 6, 6)
