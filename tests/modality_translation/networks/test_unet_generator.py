import pytest
import torch
from torch import nn

from modality_translation.networks import PIX2PIX_UNET_256_CHANNELS, UNetGenerator


def _count(net, kind):
    return sum(isinstance(m, kind) for m in net.modules())


def test_256_input_reaches_1x1x512_bottleneck_and_returns_256_in_tanh_range():
    torch.manual_seed(0)
    net = UNetGenerator()
    bottleneck = []
    net.down[-1].register_forward_hook(lambda module, inputs, output: bottleneck.append(output.shape))
    out = net(torch.rand(1, 1, 256, 256) * 2 - 1)
    assert bottleneck == [torch.Size([1, 512, 1, 1])]
    assert out.shape == (1, 1, 256, 256)
    assert out.abs().max() <= 1.0
    assert isinstance(net.up[0][-1], nn.Tanh)


def test_encoder_channel_schedule_and_parameter_count_match_pix2pix_unet_256():
    net = UNetGenerator(in_channels=3, out_channels=3, norm="batch")
    encoder_channels = [level[-2 if i not in (0, 7) else -1].out_channels for i, level in enumerate(net.down)]
    assert encoder_channels == list(PIX2PIX_UNET_256_CHANNELS)
    # The reference implementation reports 54.414 M parameters for unet_256 with batch norm.
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 3) == 54.414
    # No normalisation on the first and the innermost encoder level.
    assert _count(net.down[0], nn.BatchNorm2d) == 0 and _count(net.down[-1], nn.BatchNorm2d) == 0


def test_3d_variant_on_32_cubed_with_five_levels():
    net = UNetGenerator(spatial_dims=3, channels=(4, 8, 16, 16, 16))
    bottleneck = []
    net.down[-1].register_forward_hook(lambda module, inputs, output: bottleneck.append(output.shape))
    out = net(torch.randn(2, 1, 32, 32, 32))
    assert out.shape == (2, 1, 32, 32, 32)
    assert bottleneck == [torch.Size([2, 16, 1, 1, 1])]
    assert _count(net, nn.Conv3d) == 5 and _count(net, nn.ConvTranspose3d) == 5


def test_dropout_is_a_noise_source_in_train_mode_only():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64)
    net = UNetGenerator(channels=(8, 16, 32, 32, 32, 32), dropout=0.5)
    assert _count(net, nn.Dropout2d) == 3
    net.train()
    assert not torch.allclose(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    without = UNetGenerator(channels=(8, 16, 32, 32, 32, 32), dropout=0.0).train()
    assert _count(without, nn.Dropout2d) == 0
    assert torch.equal(without(x), without(x))


def test_dropout_sits_in_the_decoder_steps_just_above_the_innermost():
    net = UNetGenerator(channels=(8, 16, 32, 32, 32, 32, 32, 32), dropout=0.5)
    with_dropout = [level for level, up in enumerate(net.up) if _count(up, nn.Dropout2d)]
    assert with_dropout == [4, 5, 6]


def test_normal_initialisation_statistics():
    torch.manual_seed(0)
    net = UNetGenerator(channels=(32, 64, 128, 128), norm="batch", init_gain=0.02)
    weights = torch.cat(
        [m.weight.detach().flatten() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    )
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.03)
    norm_scales = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, nn.BatchNorm2d)])
    assert norm_scales.mean().item() == pytest.approx(1.0, abs=0.01)
    assert all(torch.count_nonzero(m.bias) == 0 for m in net.modules() if getattr(m, "bias", None) is not None)


def test_input_size_not_divisible_is_refused_with_the_required_multiple():
    net = UNetGenerator(channels=(4, 8, 8))
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.zeros(1, 1, 36, 32))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="norm"):
        UNetGenerator(norm="group")
    with pytest.raises(ValueError, match="dropout"):
        UNetGenerator(dropout=1.0)
    with pytest.raises(ValueError, match="2 levels"):
        UNetGenerator(channels=(8,))
