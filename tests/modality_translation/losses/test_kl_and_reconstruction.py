import math

import pytest
import torch
from torch import nn

from modality_translation.losses import CharbonnierLoss, RECONSTRUCTION_PENALTIES, latent_kl, reconstruction_penalty


def test_latent_kl_on_known_means():
    assert latent_kl(torch.zeros(2, 8, 4, 4)).item() == 0.0
    # 0.5 * mean(1, 4, 9, 16) = 3.75
    assert latent_kl(torch.tensor([[1.0, -2.0], [3.0, 4.0]])).item() == pytest.approx(3.75)
    assert latent_kl(torch.full((3, 5), 0.2)).item() == pytest.approx(0.02)


def test_latent_kl_is_the_divergence_of_unit_variance_gaussians_per_latent_element():
    mu = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    exact = torch.distributions.kl_divergence(torch.distributions.Normal(mu, 1.0), torch.distributions.Normal(0.0, 1.0))
    assert latent_kl(mu).item() == pytest.approx(exact.mean().item(), rel=1e-6)
    # Its gradient is mu / N: it pulls the codes towards the prior's mean.
    mu.requires_grad_(True)
    latent_kl(mu).backward()
    torch.testing.assert_close(mu.grad, mu.detach() / mu.numel())


def test_reconstruction_penalties_on_known_differences():
    target = torch.zeros(1, 1, 2, 2)
    image = torch.tensor([[[[0.3, -0.3], [0.0, 0.6]]]])
    assert RECONSTRUCTION_PENALTIES == ("l1", "charbonnier")
    l1 = reconstruction_penalty("l1")
    assert isinstance(l1, nn.L1Loss) and l1(image, target).item() == pytest.approx(0.3)
    charbonnier = reconstruction_penalty("Charbonnier", charbonnier_eps=0.4)
    assert isinstance(charbonnier, CharbonnierLoss)
    # sqrt(0.3^2 + 0.4^2) = 0.5 twice, sqrt(0 + 0.16) = 0.4, sqrt(0.36 + 0.16)
    expected = (0.5 + 0.5 + 0.4 + math.sqrt(0.52)) / 4
    assert charbonnier(image, target).item() == pytest.approx(expected)


def test_unknown_penalty_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"must be one of \('l1', 'charbonnier'\), got 'l2'"):
        reconstruction_penalty("l2")
    with pytest.raises(ValueError, match="eps"):
        reconstruction_penalty("charbonnier", charbonnier_eps=0.0)
