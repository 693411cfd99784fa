import math

import pytest
import torch

from modality_translation.losses import CharbonnierLoss, charbonnier


def test_charbonnier_at_zero_equals_eps_and_tends_to_abs_for_large_values():
    assert charbonnier(torch.zeros(3), eps=1e-3).tolist() == pytest.approx([1e-3] * 3)
    assert charbonnier(torch.tensor([3.0, -4.0]), eps=1e-3).tolist() == pytest.approx(
        [math.sqrt(9 + 1e-6), math.sqrt(16 + 1e-6)]
    )


def test_loss_of_identical_images_is_eps_and_reductions_follow():
    x = torch.rand(2, 1, 8, 8)
    assert CharbonnierLoss(eps=0.01)(x, x).item() == pytest.approx(0.01)
    y = x + 0.5
    elementwise = CharbonnierLoss(eps=0.1, reduction="none")(y, x)
    assert elementwise.shape == x.shape
    assert torch.allclose(elementwise, torch.full_like(x, math.sqrt(0.25 + 0.01)))
    assert CharbonnierLoss(eps=0.1, reduction="sum")(y, x).item() == pytest.approx(128 * math.sqrt(0.26), rel=1e-5)


def test_gradient_exists_at_zero_difference():
    x = torch.zeros(4, requires_grad=True)
    CharbonnierLoss()(x, torch.zeros(4)).backward()
    assert torch.equal(x.grad, torch.zeros(4))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="eps"):
        CharbonnierLoss(eps=0)
    with pytest.raises(ValueError, match="reduction"):
        CharbonnierLoss(reduction="max")
