import pytest
import torch
from torch import nn

from modality_translation.networks import ResidualBlock, ResNetGenerator


def test_2d_generator_keeps_the_input_shape_and_the_tanh_range():
    torch.manual_seed(0)
    net = ResNetGenerator(base_channels=16, num_blocks=3)
    out = net(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert out.abs().max() <= 1.0


def test_cyclegan_default_layout_c7s1_64_d128_d256_9xr256_u128_u64_c7s1():
    net = ResNetGenerator(in_channels=3, out_channels=3)
    convs = [m for m in net.model if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    blocks = [m for m in net.model if isinstance(m, ResidualBlock)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (64, 7, 1), (128, 3, 2), (256, 3, 2), (128, 3, 2), (64, 3, 2), (3, 7, 1)
    ]
    assert isinstance(convs[3], nn.ConvTranspose2d) and isinstance(convs[4], nn.ConvTranspose2d)
    assert len(blocks) == 9
    assert convs[0].padding_mode == "reflect" and convs[-1].padding_mode == "reflect"
    assert all(c.padding_mode == "reflect" for b in blocks for c in b.modules() if isinstance(c, nn.Conv2d))
    assert isinstance(net.model[-1], nn.Tanh)
    # The reference implementation reports 11.378 M parameters for resnet_9blocks with 3 channels.
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 3) == 11.378


def test_residual_block_is_identity_plus_branch():
    block = ResidualBlock(2, 8)
    x = torch.randn(1, 8, 16, 16)
    assert torch.allclose(block(x), x + block.body(x))
    assert not isinstance(block.body[-1], nn.ReLU)


def test_3d_generator_on_32_cubed():
    net = ResNetGenerator(spatial_dims=3, base_channels=4, num_blocks=2)
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
    assert sum(isinstance(m, nn.Conv3d) for m in net.modules()) == 2 + 2 + 2 * 2


def test_init_statistics_and_input_checks():
    torch.manual_seed(0)
    net = ResNetGenerator(base_channels=32, num_blocks=4)
    weights = torch.cat([m.weight.detach().flatten() for m in net.modules() if isinstance(m, nn.Conv2d)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.03)
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="num_blocks"):
        ResNetGenerator(num_blocks=-1)
