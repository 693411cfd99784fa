import math

import pytest
import torch

from modality_translation.losses import AdversarialLoss


def _softplus(x):
    return math.log1p(math.exp(x))


REAL = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
FAKE = torch.tensor([[-3.0, 1.0], [0.0, 0.25]])


def _mean(values):
    return sum(values) / len(values)


def test_bce_matches_the_closed_form_of_cross_entropy_on_logits():
    loss = AdversarialLoss("bce")
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    real_term = _mean([_softplus(-v) for v in REAL.flatten().tolist()])
    fake_term = _mean([_softplus(v) for v in FAKE.flatten().tolist()])
    assert loss.discriminator_loss(REAL, FAKE).item() == pytest.approx(real_term + fake_term, rel=1e-6)
    assert loss.generator_loss(FAKE).item() == pytest.approx(_mean([_softplus(-v) for v in FAKE.flatten().tolist()]), rel=1e-6)


def test_least_squares_matches_lsgan():
    loss = AdversarialLoss("least_squares")
    real_term = _mean([(v - 1) ** 2 for v in REAL.flatten().tolist()])
    fake_term = _mean([v**2 for v in FAKE.flatten().tolist()])
    assert loss.discriminator_loss(REAL, FAKE).item() == pytest.approx(real_term + fake_term, rel=1e-6)
    assert loss.generator_loss(FAKE).item() == pytest.approx(_mean([(v - 1) ** 2 for v in FAKE.flatten().tolist()]))


def test_hinge_matches_the_sagan_hinge_loss():
    loss = AdversarialLoss("hinge")
    real_term = _mean([max(0.0, 1 - v) for v in REAL.flatten().tolist()])
    fake_term = _mean([max(0.0, 1 + v) for v in FAKE.flatten().tolist()])
    assert loss.discriminator_loss(REAL, FAKE).item() == pytest.approx(real_term + fake_term)
    assert loss.generator_loss(FAKE).item() == pytest.approx(-FAKE.mean().item())


def test_discriminator_scale_halves_the_loss_as_in_the_cyclegan_paper():
    full = AdversarialLoss("least_squares").discriminator_loss(REAL, FAKE)
    half = AdversarialLoss("least_squares", discriminator_scale=0.5).discriminator_loss(REAL, FAKE)
    assert half.item() == pytest.approx(full.item() / 2)


def test_a_list_of_scales_gives_the_mean_of_their_losses():
    loss = AdversarialLoss("bce")
    separate = (loss.generator_loss(REAL) + loss.generator_loss(FAKE)) / 2
    assert loss.generator_loss([REAL, FAKE]).item() == pytest.approx(separate.item())


def test_bce_keeps_a_gradient_for_confidently_rejected_fakes():
    logits = torch.tensor([-200.0], requires_grad=True)
    loss = AdversarialLoss("bce").generator_loss(logits)
    loss.backward()
    assert loss.item() == pytest.approx(200.0)
    assert logits.grad.item() == pytest.approx(-1.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mode"):
        AdversarialLoss("wasserstein")
    with pytest.raises(ValueError, match="discriminator_scale"):
        AdversarialLoss("bce", discriminator_scale=0)
    with pytest.raises(ValueError, match="no discriminator logits"):
        AdversarialLoss("bce").generator_loss([])
