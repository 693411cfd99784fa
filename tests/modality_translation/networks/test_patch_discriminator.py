import pytest
import torch
from monai.networks.nets import PatchDiscriminator
from torch import nn
from torch.nn.utils import parametrize

from modality_translation.networks import PatchGANDiscriminator


def test_256_input_gives_30x30_logits_and_pix2pix_parameter_count():
    net = PatchGANDiscriminator(in_channels=3)
    assert isinstance(net, PatchDiscriminator)
    assert net(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    # The reference implementation reports 2.765 M parameters for the 3-layer PatchGAN on RGB.
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 3) == 2.765


def test_layout_c64_c128_c256_c512_stride1_conv1_without_norm_on_first_layer():
    net = PatchGANDiscriminator()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (64, (4, 4), (2, 2)), (128, (4, 4), (2, 2)), (256, (4, 4), (2, 2)), (512, (4, 4), (1, 1)), (1, (4, 4), (1, 1))
    ]
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in net.initial_conv.modules())
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in net.modules()) == 3
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}


def test_receptive_field_of_one_logit_is_70x70():
    net = PatchGANDiscriminator(channels=4, norm="none").eval()
    image = torch.randn(1, 1, 256, 256, requires_grad=True)
    net(image)[0, 0, 15, 15].backward()
    rows, cols = torch.nonzero(image.grad[0, 0], as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (70, 70)


def test_intermediate_features_end_with_the_logits():
    net = PatchGANDiscriminator(channels=8, num_layers=2)
    x = torch.randn(1, 1, 64, 64)
    features = net.intermediate_features(x)
    assert len(features) == 4
    assert torch.equal(features[-1], net(x))


def test_3d_discriminator_on_32_cubed():
    net = PatchGANDiscriminator(spatial_dims=3, channels=8)
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 1, 2, 2, 2)


def test_spectral_norm_bounds_every_convolution_to_unit_spectral_norm():
    torch.manual_seed(0)
    net = PatchGANDiscriminator(channels=8, norm="none", spectral_norm=True)
    for _ in range(3):
        net(torch.randn(2, 1, 64, 64))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    for conv in convs:
        assert torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item() == pytest.approx(1.0, abs=0.01)
        assert conv.parametrizations.weight.original.std().item() == pytest.approx(0.02, rel=0.25)


def test_batch_norm_variant_drops_the_redundant_conv_biases():
    net = PatchGANDiscriminator(norm="batch")
    middle = [m for m in net.modules() if isinstance(m, nn.Conv2d)][1:-1]
    assert all(c.bias is None for c in middle)
    with pytest.raises(ValueError, match="norm"):
        PatchGANDiscriminator(norm="layer")
