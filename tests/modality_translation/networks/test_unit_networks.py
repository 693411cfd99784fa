"""UNIT's networks: the layer table, the shared blocks, the switches, the training pass and the translation views."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from modality_translation.networks import (
    ATTENTION_PLACES,
    SPECTRAL_NORM_KINDS,
    ResidualBlock,
    SelfAttention,
    UNITDiscriminator,
    UNITNetwork,
    UNITTranslation,
    has_spectral_norm,
)


def tiny(**kwargs) -> UNITNetwork:
    torch.manual_seed(0)
    return UNITNetwork(**{"channels": 4, "num_res_blocks": 1, **kwargs})


def images(count: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def convolutions(module: nn.Module) -> list[tuple[str, int, int, int]]:
    """``(kind, out channels, kernel, stride)`` of every convolution, in order."""
    return [(type(m).__name__, m.out_channels, m.kernel_size[0], m.stride[0]) for m in module.modules()
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def test_encoder_generator_and_discriminator_follow_the_unit_layer_table():
    net = UNITNetwork()  # channels 64, 3 private residual blocks: the paper's table
    encoder = net.encoder_a.private
    assert convolutions(encoder)[:3] == [("Conv2d", 64, 7, 1), ("Conv2d", 128, 3, 2), ("Conv2d", 256, 3, 2)]
    blocks = [m for m in encoder if isinstance(m, ResidualBlock)]
    assert len(blocks) == 3 and all(convolutions(b.body) == [("Conv2d", 512, 3, 1)] * 2 for b in blocks)
    # 256 -> 512: the first block's shortcut is a 1x1 projection, the others are the identity.
    assert isinstance(blocks[0].shortcut, nn.Conv2d) and blocks[0].shortcut.kernel_size == (1, 1)
    assert all(isinstance(b.shortcut, nn.Identity) for b in blocks[1:])
    assert convolutions(net.shared_encoder_block) == [("Conv2d", 512, 3, 1)] * 2
    generator = net.generator_a.private
    assert convolutions(net.shared_generator_block) == [("Conv2d", 512, 3, 1)] * 2
    assert convolutions(generator)[-3:] == [("ConvTranspose2d", 256, 3, 2), ("ConvTranspose2d", 128, 3, 2),
                                             ("ConvTranspose2d", 1, 1, 1)]
    assert sum(isinstance(m, ResidualBlock) for m in generator) == 3 and isinstance(generator[-1], nn.Tanh)
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}

    discriminator = UNITDiscriminator()
    assert convolutions(discriminator) == [("Conv2d", c, 3, 2) for c in (64, 128, 256, 512, 1024)] + [("Conv2d", 1, 2, 1)]
    assert discriminator(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 7, 7)


def test_discriminator_logit_sees_a_95_pixel_window():
    discriminator = UNITDiscriminator(channels=2).eval()
    image = torch.randn(1, 1, 256, 256, requires_grad=True)
    discriminator(image)[0, 0, 3, 3].backward()
    rows, cols = torch.nonzero(image.grad[0, 0], as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (95, 95)


def test_shared_blocks_are_one_object_trained_by_both_domains():
    net = tiny()
    assert net.encoder_a.shared is net.encoder_b.shared is net.shared_encoder_block
    assert net.generator_a.shared is net.generator_b.shared is net.shared_generator_block
    assert net.encoder_a.private is not net.encoder_b.private and net.generator_a.private is not net.generator_b.private
    # One parameter object: counted once, and a change made through one domain is the other's.
    shared = net.encoder_a.shared.body[0].weight
    assert net.encoder_b.shared.body[0].weight is shared
    assert sum(p is shared for p in net.parameters()) == 1
    # Gradients from each domain alone reach the shared blocks.
    for domain in ("a", "b"):
        net.zero_grad()
        net.translate(images(), f"{domain}_to_{'b' if domain == 'a' else 'a'}").sum().backward()
        assert shared.grad is not None and shared.grad.abs().sum() > 0
        assert net.shared_generator_block.body[0].weight.grad.abs().sum() > 0


def test_translation_goes_through_the_latent_mean_of_the_source_encoder():
    net = tiny().eval()
    x = images()
    with torch.no_grad():
        assert torch.equal(net(x), net.generator_b(net.encoder_a(x)))
        assert torch.equal(net(x, direction="b_to_a"), net.generator_a(net.encoder_b(x)))
        view = UNITTranslation(net, "b_to_a")
        assert torch.equal(view(x), net.translate(x, "b_to_a"))
    assert net(x).shape == x.shape and net(x).abs().max() <= 1


def test_the_views_share_the_weights_and_the_evaluation_mode():
    net = tiny()
    view = UNITTranslation(net, "a_to_b")
    assert view.network is net
    assert list(view.parameters()) and all(p is q for p, q in zip(view.parameters(), net.parameters(), strict=True))
    view.eval()
    assert not net.training


def test_training_pass_equals_the_separate_calls_with_the_same_noise():
    """The batched training pass computes exactly UNIT's passes: encode, sample, decode, translate, cycle."""
    net = tiny(channels=4, num_res_blocks=2)
    x_a, x_b = images(2, seed=1), images(2, seed=2)
    torch.manual_seed(5)
    out = net(x_a, x_b)
    torch.manual_seed(5)
    with torch.no_grad():
        mu_a, mu_b = net.encoder_a(x_a), net.encoder_b(x_b)
        z_a, z_b = mu_a + torch.randn_like(mu_a), mu_b + torch.randn_like(mu_b)
        fake_a, fake_b = net.generator_a(z_b), net.generator_b(z_a)
        mu_fake_a, mu_fake_b = net.encoder_a(fake_a), net.encoder_b(fake_b)
        z_fake_a, z_fake_b = mu_fake_a + torch.randn_like(mu_fake_a), mu_fake_b + torch.randn_like(mu_fake_b)
        expected = {
            "mu_a": mu_a, "mu_b": mu_b, "vae_a": net.generator_a(z_a), "vae_b": net.generator_b(z_b),
            "fake_a": fake_a, "fake_b": fake_b, "mu_fake_a": mu_fake_a, "mu_fake_b": mu_fake_b,
            "cyc_a": net.generator_a(z_fake_b), "cyc_b": net.generator_b(z_fake_a),
        }
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, rtol=1e-5, atol=1e-5, msg=key)
    assert out["mu_a"].shape == (2, 32, 4, 4)
    # Noise: another seed gives other reconstructions, the same means.
    torch.manual_seed(6)
    other = net(x_a, x_b)
    assert torch.equal(other["mu_a"], out["mu_a"]) and not torch.allclose(other["vae_a"], out["vae_a"])


@pytest.mark.parametrize("place", ATTENTION_PLACES)
def test_attention_is_where_configured_and_nowhere_else(place):
    net = tiny(attention=place)
    count = {name: sum(isinstance(m, SelfAttention) for m in getattr(net, name).modules())
             for name in ("encoder_a", "encoder_b", "generator_a", "generator_b")}
    in_encoder, in_generator = place in ("encoder", "both"), place in ("generator", "both")
    assert count == {"encoder_a": in_encoder, "encoder_b": in_encoder, "generator_a": in_generator,
                     "generator_b": in_generator}
    # None in the shared blocks; in the encoder after the strided convolutions (4 * channels), in the
    # generator before the transposed ones (8 * channels).
    assert not any(isinstance(m, SelfAttention) for m in [*net.shared_encoder_block.modules(), *net.shared_generator_block.modules()])
    for module in net.modules():
        if isinstance(module, SelfAttention):
            assert module.h.in_channels == (16 if module in list(net.encoder_a.modules()) + list(net.encoder_b.modules()) else 32)
    assert net(images()).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("kinds", [[], ["encoder"], ["generator"], ["encoder", "generator", "discriminator"]])
def test_spectral_norm_wraps_exactly_the_listed_network_kinds(kinds):
    net = tiny(spectral_norm=kinds)
    for kind in ("encoder", "generator"):
        for part in (getattr(net, f"{kind}_a"), getattr(net, f"{kind}_b")):
            convs = [m for m in part.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
            assert all(parametrize.is_parametrized(c, "weight") == (kind in kinds) for c in convs)
    # The shared blocks are wrapped once, not twice.
    for conv in net.shared_encoder_block.modules():
        if isinstance(conv, nn.Conv2d) and "encoder" in kinds:
            assert len(conv.parametrizations.weight) == 1
    discriminator = UNITDiscriminator(channels=4, num_layers=2, spectral_norm="discriminator" in kinds)
    assert has_spectral_norm(discriminator) == ("discriminator" in kinds)
    assert net(images()).shape == (2, 1, 16, 16)


def test_spectral_norm_with_attention_wraps_the_attention_projections():
    net = tiny(attention="both", spectral_norm=["encoder", "generator"])
    attention = [m for m in net.modules() if isinstance(m, SelfAttention)]
    assert len(attention) == 4
    assert all(parametrize.is_parametrized(getattr(a, p), "weight") for a in attention for p in "fgh")


def test_self_attention_is_the_identity_at_initialisation_and_sagan_once_gamma_moves():
    torch.manual_seed(0)
    block = SelfAttention(2, 16)
    x = torch.randn(2, 16, 6, 5)
    assert block.gamma.item() == 0.0 and torch.equal(block(x), x)
    assert block.f.out_channels == block.g.out_channels == 2 and block.h.out_channels == 16
    beta = block.attention_map(x)
    assert beta.shape == (2, 30, 30)
    torch.testing.assert_close(beta.sum(-1), torch.ones(2, 30))
    # o_j = sum_i beta[j, i] h(x_i); out = x + gamma * o
    with torch.no_grad():
        block.gamma.fill_(0.7)
        # s[i, j] = f(x_i) . g(x_j): beta[j, i] is the softmax over i of s[i, j].
        f, g, h = (p(x).flatten(2) for p in (block.f, block.g, block.h))
        scores = torch.einsum("bci,bcj->bji", f, g)
        torch.testing.assert_close(beta, scores.softmax(-1))
        o = torch.einsum("bji,bci->bcj", beta, h).reshape(x.shape)
        torch.testing.assert_close(block(x), x + 0.7 * o, rtol=1e-5, atol=1e-5)


def test_unit_switches_refuse_unknown_values_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=r"attention must be one of \('encoder', 'generator', 'both', 'none'\), got 'decoder'"):
        UNITNetwork(attention="decoder")
    with pytest.raises(ValueError, match=r"spectral_norm lists network kinds, each one of \('encoder', 'generator', 'discriminator'\)"):
        UNITNetwork(spectral_norm=["encoder", "decoder"])
    with pytest.raises(ValueError, match="spectral_norm lists network kinds"):
        UNITNetwork(spectral_norm=True)
    with pytest.raises(ValueError, match=r"direction must be one of \('a_to_b', 'b_to_a'\)"):
        UNITTranslation(tiny(), "t1_to_t2")
    with pytest.raises(ValueError, match=r"norm of a UNIT network must be one of \('instance', 'none'\)"):
        UNITNetwork(norm="batch")
    with pytest.raises(ValueError, match="spectral_norm must be true or false"):
        UNITDiscriminator(spectral_norm="yes")
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny()(torch.zeros(1, 1, 18, 16))
    with pytest.raises(ValueError, match="at least 8"):
        UNITDiscriminator(channels=4, num_layers=2)(torch.zeros(1, 1, 4, 4))
    assert SPECTRAL_NORM_KINDS == ("encoder", "generator", "discriminator")
    # Case and a single kind given as a string are accepted.
    assert UNITNetwork(channels=2, num_res_blocks=1, attention="Encoder", spectral_norm="generator").attention == "encoder"


def test_initialisation_keeps_the_attention_weight_at_zero_and_draws_convolutions_from_n_0_002():
    net = UNITNetwork(channels=16, attention="both", spectral_norm=["encoder"])
    assert all(m.gamma.item() == 0.0 for m in net.modules() if isinstance(m, SelfAttention))
    weights = torch.cat([
        (m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight).detach().flatten()
        for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
    ])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)


def test_3d_network_and_discriminator():
    net = UNITNetwork(spatial_dims=3, channels=2, num_res_blocks=1, attention="both")
    x = torch.rand(1, 1, 8, 8, 8)
    assert net(x).shape == x.shape and net(x, x)["cyc_b"].shape == x.shape
    assert UNITDiscriminator(spatial_dims=3, channels=2, num_layers=2)(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 1, 3, 3, 3)
