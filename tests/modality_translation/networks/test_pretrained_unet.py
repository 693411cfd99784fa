import pytest
import torch

from modality_translation.networks import ResNet18Encoder, ResNet18UNet, WeightsFileError


def _torchvision_style_resnet18_file(path, in_channels=3, extra=None):
    """A state dict with torchvision's resnet18 keys (including the fc head and old-style missing step counters)."""
    torch.manual_seed(1)
    encoder = ResNet18Encoder(spatial_dims=2, in_channels=in_channels)
    state = {k: v for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    state.update(extra or {})
    torch.save(state, path)
    return state


def test_encoder_parameter_names_are_torchvision_resnet18s():
    keys = set(ResNet18Encoder().state_dict())
    assert len(keys) == 120  # torchvision's 122 minus fc.weight and fc.bias
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.bias", "layer4.1.bn2.weight"):
        assert key in keys


def test_unet_output_shape_and_range_2d_and_3d():
    net = ResNet18UNet(decoder_channels=(64, 32, 16, 16, 8))
    out = net(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 1, 64, 64) and out.abs().max() <= 1
    net3d = ResNet18UNet(spatial_dims=3, decoder_channels=(32, 16, 16, 8, 8))
    assert net3d(torch.randn(2, 1, 32, 32, 32)).shape == (2, 1, 32, 32, 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.randn(1, 1, 48, 64))


def test_single_channel_encoder_loads_rgb_weights_by_summing_conv1(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = _torchvision_style_resnet18_file(path)
    net = ResNet18UNet(in_channels=1, pretrained_weights=str(path), decoder_channels=(32, 16, 16, 8, 8))
    assert torch.allclose(net.encoder.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(net.encoder.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(net.encoder.bn1.running_mean, state["bn1.running_mean"])
    # A grey image through the summed filters equals the RGB-replicated image through the original ones.
    grey = torch.randn(1, 1, 32, 32)
    rgb_conv = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), state["conv1.weight"], stride=2, padding=3)
    assert torch.allclose(net.encoder.conv1(grey), rgb_conv, atol=1e-5)


def test_three_channel_encoder_loads_weights_unchanged(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = _torchvision_style_resnet18_file(path)
    encoder = ResNet18Encoder(in_channels=3)
    encoder.load_torchvision_weights(path)
    assert torch.equal(encoder.conv1.weight, state["conv1.weight"])


def test_missing_file_and_mismatched_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        ResNet18UNet(pretrained_weights=str(tmp_path / "nowhere.pth"))
    wrong_shape = tmp_path / "wide.pth"
    _torchvision_style_resnet18_file(wrong_shape, extra={"layer1.0.conv1.weight": torch.zeros(64, 64, 5, 5)})
    with pytest.raises(WeightsFileError, match=r"wide.pth.*layer1.0.conv1.weight \(file \(64, 64, 5, 5\)"):
        ResNet18UNet(pretrained_weights=str(wrong_shape))
    unexpected = tmp_path / "resnet34ish.pth"
    _torchvision_style_resnet18_file(unexpected, extra={"layer1.2.conv1.weight": torch.zeros(64, 64, 3, 3)})
    with pytest.raises(WeightsFileError, match="unexpected keys: layer1.2.conv1.weight"):
        ResNet18UNet(pretrained_weights=str(unexpected))
    incomplete = tmp_path / "incomplete.pth"
    state = _torchvision_style_resnet18_file(incomplete)
    del state["layer4.1.bn2.weight"]
    torch.save(state, incomplete)
    with pytest.raises(WeightsFileError, match="missing keys: layer4.1.bn2.weight"):
        ResNet18UNet(pretrained_weights=str(incomplete))
    with pytest.raises(WeightsFileError, match="2 channels"):
        ResNet18Encoder(in_channels=2).load_torchvision_weights(incomplete)


def test_2d_weights_do_not_load_into_a_3d_encoder(tmp_path):
    path = tmp_path / "resnet18.pth"
    _torchvision_style_resnet18_file(path)
    with pytest.raises(WeightsFileError, match="shape mismatches: conv1.weight"):
        ResNet18Encoder(spatial_dims=3).load_torchvision_weights(path)
