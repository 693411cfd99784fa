"""The fast CPU training path (bfloat16 autocast + channels-last) against the float32 path.

The fast path changes the arithmetic's precision and the memory layout, never the model: on a fixed
batch one CycleGAN iteration gives the float32 path's losses within bfloat16's rounding, the layers
that keep the layout compute what their ``torch.nn`` parents compute, and the trained networks'
checkpoints load into networks built for the float32 path.
"""

import copy

import pytest
import torch
from torch import nn

from modality_translation.engines import CycleGANTrainer, adam_optimizer
from modality_translation.losses import AdversarialLoss
from modality_translation.networks import PatchGANDiscriminator, ResNetGenerator, UNetGenerator
from modality_translation.networks.layers import (
    MATMUL_POSITIONS,
    Conv2d,
    ConvTranspose2d,
    InstanceNorm2d,
    layout_preserving_norms,
)

SIZE = 64
#: Losses of the fast path lie within this relative distance of the float32 path's (plus LOSS_ATOL):
#: bfloat16 keeps 8 significant bits (relative rounding 2**-9 per operation), accumulated over a
#: dozen layers forward and backward.
LOSS_RTOL = 0.05
LOSS_ATOL = 0.01


def make_generator(kind: str) -> nn.Module:
    if kind == "resnet":
        return ResNetGenerator(base_channels=8, num_blocks=2)
    return UNetGenerator(channels=(8, 16, 32, 32, 32, 32))


def fixed_batch() -> dict:
    generator = torch.Generator().manual_seed(7)
    return {key: torch.rand(1, 1, SIZE, SIZE, generator=generator) * 2 - 1 for key in ("A", "B")}


def one_iteration(networks, fast: bool) -> dict:
    """Losses of one CycleGAN iteration on the fixed batch, on copies of ``networks``."""
    nets = [copy.deepcopy(net) for net in networks]
    trainer = CycleGANTrainer(
        "cpu", 1, [fixed_batch()], *nets, adam_optimizer(nets[:2]), adam_optimizer(nets[2:]),
        adversarial_loss=AdversarialLoss("least_squares", discriminator_scale=0.5),
        amp=fast, amp_dtype="bfloat16", channels_last=fast, retain_host_memory=False, decollate=False,
    )
    trainer.run()
    return trainer


@pytest.mark.parametrize("kind", ["resnet", "unet"])
def test_fast_path_losses_match_float32(kind):
    torch.manual_seed(0)
    networks = [make_generator(kind), make_generator(kind), PatchGANDiscriminator(channels=8), PatchGANDiscriminator(channels=8)]
    reference = one_iteration(networks, fast=False)
    fast = one_iteration(networks, fast=True)
    keys = ("loss_G", "loss_adv_AB", "loss_adv_BA", "loss_cycle_A", "loss_cycle_B", "loss_identity", "loss_D_A", "loss_D_B")
    for key in keys:
        expected, got = reference.state.output[key], fast.state.output[key]
        assert got == pytest.approx(expected, rel=LOSS_RTOL, abs=LOSS_ATOL), (key, expected, got)
    # The fast path did run in bfloat16 and channels-last: its losses are not the float32 ones.
    assert any(fast.state.output[key] != reference.state.output[key] for key in keys)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for net in fast.networks for p in net.parameters() if p.ndim == 4)
    # Its networks' state loads, strictly, into networks built for the float32 path, and gives their outputs.
    for trained, original in zip(fast.networks, networks):
        fresh = copy.deepcopy(original)
        fresh.load_state_dict(trained.state_dict(), strict=True)
        probe = fixed_batch()["A"]
        with torch.no_grad():
            expected = trained(probe.contiguous(memory_format=torch.channels_last))
            torch.testing.assert_close(fresh(probe), expected, rtol=1e-4, atol=1e-5)


def test_instance_norm_keeps_channels_last_and_matches_torch():
    x = torch.randn(3, 16, 12, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_plain = x.detach().clone().contiguous().requires_grad_()
    norm, plain = InstanceNorm2d(16), nn.InstanceNorm2d(16)
    y, y_plain = norm(x), plain(x_plain)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-5)
    # A channel slice of a larger gradient, as a U-Net skip concatenation's backward passes it.
    grad = torch.randn(3, 32, 12, 10).contiguous(memory_format=torch.channels_last)[:, 16:]
    y.backward(grad)
    y_plain.backward(grad.contiguous())
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-4, atol=1e-5)


def test_instance_norm_in_bfloat16_matches_torch():
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = InstanceNorm2d(8)(x.bfloat16())
        y_plain = nn.InstanceNorm2d(8)(x.bfloat16().contiguous())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_plain.float(), rtol=0.02, atol=0.02)


def test_affine_instance_norm_replacement_keeps_its_parameters():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, affine=True))
    nn.init.normal_(net[1].weight)
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    layout_preserving_norms(net)
    assert type(net[1]) is InstanceNorm2d
    assert net.state_dict().keys() == keys.keys()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, keys[key])
    x = torch.randn(2, 1, 10, 10).contiguous(memory_format=torch.channels_last)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, affine=True))
    plain.load_state_dict(keys)
    torch.testing.assert_close(net.to(memory_format=torch.channels_last)(x), plain(x.contiguous()), rtol=1e-5, atol=1e-5)


def test_padded_convolution_under_autocast_equals_torch():
    torch.manual_seed(0)
    conv = Conv2d(4, 6, kernel_size=3, padding=1, padding_mode="reflect")
    plain = nn.Conv2d(4, 6, kernel_size=3, padding=1, padding_mode="reflect")
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 9, 9)
    x_plain = x.clone().requires_grad_()
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_plain = conv(x), plain(x_plain)
    # Padding before or after the cast to bfloat16 gives the convolution the same input.
    assert y.dtype == y_plain.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_plain, rtol=0, atol=0)
    y.float().sum().backward()
    y_plain.float().sum().backward()
    # The input gradient's reflected borders are summed in bfloat16 instead of float32: equal within
    # bfloat16's rounding (2**-8 relative) of the gradient's scale.
    scale = x_plain.grad.abs().max().item()
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=0, atol=2**-7 * scale)
    assert (x.grad == x_plain.grad).float().mean() > 0.5
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=1e-3, atol=1e-3)
    # Without autocast it is nn.Conv2d.
    torch.testing.assert_close(conv(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("weights_channels_last", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("size", [2, 8, 16, 32])
def test_small_map_weight_gradient_equals_torch(transposed, size, weights_channels_last):
    torch.manual_seed(0)
    cls, plain_cls = (ConvTranspose2d, nn.ConvTranspose2d) if transposed else (Conv2d, nn.Conv2d)
    conv, plain = cls(12, 6, 4, stride=2, padding=1), plain_cls(12, 6, 4, stride=2, padding=1)
    plain.load_state_dict(conv.state_dict())
    if weights_channels_last:
        conv.to(memory_format=torch.channels_last)
    x = torch.randn(3, 12, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_plain = x.detach().clone().requires_grad_()
    y, y_plain = conv(x), plain(x_plain)
    grad = torch.randn_like(y_plain)
    y.backward(grad)
    y_plain.backward(grad)
    # Up to 8x8 inputs the forward pass and the input gradient are matrix products too: the same
    # sums in another order.
    exact = 0 if size * size > MATMUL_POSITIONS or not weights_channels_last else 1e-5
    torch.testing.assert_close(y, y_plain, rtol=exact, atol=exact)
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transposed", [False, True])
def test_small_map_weight_gradient_arrives_in_the_weights_channels_last_layout(transposed):
    # A gradient in another layout than its parameter would be copied into the parameter's layout
    # on accumulation: the fast path exists to avoid such copies of the large weights.
    torch.manual_seed(0)
    cls, plain_cls = (ConvTranspose2d, nn.ConvTranspose2d) if transposed else (Conv2d, nn.Conv2d)
    conv, plain = cls(12, 6, 4, stride=2, padding=1), plain_cls(12, 6, 4, stride=2, padding=1)
    plain.load_state_dict(conv.state_dict())
    conv.to(memory_format=torch.channels_last)
    x = torch.randn(2, 12, 8, 8).contiguous(memory_format=torch.channels_last)
    conv(x).square().sum().backward()
    plain(x).square().sum().backward()
    assert conv.weight.grad.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.grad.is_contiguous()
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("stride, padding, kernel", [(2, 1, 4), (1, 1, 3), (1, 0, 1)])
def test_small_map_matrix_products_in_bfloat16_match_onednn(transposed, stride, padding, kernel):
    # Under autocast on a small channels-last map: the forward pass, the input and weight gradients
    # agree with oneDNN's bfloat16 kernels within bfloat16 rounding (a few units in the last place).
    torch.manual_seed(0)
    cls, plain_cls = (ConvTranspose2d, nn.ConvTranspose2d) if transposed else (Conv2d, nn.Conv2d)
    conv, plain = cls(32, 24, kernel, stride=stride, padding=padding), plain_cls(32, 24, kernel, stride=stride, padding=padding)
    plain.load_state_dict(conv.state_dict())
    conv.to(memory_format=torch.channels_last)
    plain.to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_plain = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_plain = conv(x), plain(x_plain)
    assert y.dtype == y_plain.dtype == torch.bfloat16 and y.shape == y_plain.shape
    assert y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(y.shape)
    y.float().backward(grad)
    y_plain.float().backward(grad)
    scale = y_plain.detach().float().abs().max()
    torch.testing.assert_close(y.float(), y_plain.float(), rtol=0, atol=2**-6 * scale)
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=0, atol=2**-6 * x_plain.grad.abs().max())
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=0, atol=2**-6 * plain.weight.grad.abs().max())
    torch.testing.assert_close(conv.bias.grad, plain.bias.grad, rtol=1e-2, atol=1e-2)


def test_weight_casts_are_reused_within_the_region_until_the_weight_changes(monkeypatch):
    # Two calls of one convolution under autocast: one bfloat16 copy of the weight, the gradients of
    # both calls in the float32 parameter; an in-place change of the weight gives a new copy.
    import modality_translation.networks.layers as layers

    casts = []
    cast_weight = layers._cast_weight
    monkeypatch.setattr(layers, "_cast_weight", lambda weight, dtype: casts.append(cast_weight(weight, dtype)) or casts[-1])
    torch.manual_seed(0)
    conv, plain = ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
    plain.load_state_dict(conv.state_dict())
    conv.to(memory_format=torch.channels_last)
    first, second = (torch.randn(1, 16, 4, 4).contiguous(memory_format=torch.channels_last) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16), layers.reused_weight_casts():
        loss = conv(first).float().square().sum() + conv(second).float().square().sum()
        plain_loss = plain(first).float().square().sum() + plain(second).float().square().sum()
    assert len(casts) == 2 and casts[0] is casts[1] and casts[0].dtype == torch.bfloat16
    loss.backward()
    plain_loss.backward()
    assert conv.weight.grad.dtype == torch.float32
    scale = plain.weight.grad.abs().max()
    torch.testing.assert_close(conv.weight.grad, plain.weight.grad, rtol=0, atol=2**-6 * scale)

    with torch.no_grad():
        conv.weight.mul_(0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16), layers.reused_weight_casts():
        conv(first)
    assert casts[-1] is not casts[0]
    torch.testing.assert_close(casts[-1].float(), conv.weight.detach() * 1.0, rtol=2**-8, atol=0)
    # Outside the context every call casts anew.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(first)
        conv(first)
    assert casts[-1] is not casts[-2]
