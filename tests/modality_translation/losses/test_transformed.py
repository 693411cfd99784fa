import pytest
import torch
from torch.nn import functional as F

from modality_translation.losses import TransformedLoss


def _disk(centre_x: int, size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (yy - size // 2) ** 2 + (xx - centre_x) ** 2 <= 8 ** 2
    return torch.where(inside, 0.5, -1.0).reshape(1, 1, size, size).float()


def test_without_smoothing_the_loss_is_that_of_the_transformed_images():
    torch.manual_seed(0)
    a, b = torch.randn(2, 1, 2, 16, 16).unbind(0)
    loss = TransformedLoss(F.l1_loss, torch.nn.Tanh())
    assert torch.equal(loss(a, b), F.l1_loss(torch.tanh(a), torch.tanh(b)))


def test_the_low_pass_ignores_pixel_noise_but_not_a_moved_structure():
    torch.manual_seed(0)
    head = _disk(16)
    noisy = head + 0.15 * torch.randn_like(head)
    moved = _disk(19)
    plain = TransformedLoss(F.l1_loss, torch.nn.Identity())
    low_pass = TransformedLoss(F.l1_loss, torch.nn.Identity(), smoothing_sigma=1.0)
    # as they are, the noise costs as much as moving the disk by 3 pixels
    assert plain(noisy, head) > 0.5 * plain(moved, head)
    # low-passed, the noise costs under a third of what it did, the move still most of its cost
    assert low_pass(noisy, head) < plain(noisy, head) / 3
    assert low_pass(moved, head) > 0.7 * plain(moved, head)
    assert low_pass(moved, head) > 3 * low_pass(noisy, head)


def test_the_low_pass_keeps_a_uniform_background_up_to_the_border():
    loss = TransformedLoss(F.l1_loss, torch.nn.Identity(), smoothing_sigma=2.0)
    air = torch.full((1, 3, 12, 12), -1.0)
    # replicated edges: no darkening at the border; the kernel's tails beyond 4 sigma are cut (about 1e-4)
    assert torch.allclose(loss._represent(air), air, atol=1e-4)


def test_gradients_reach_the_input_through_the_low_pass():
    target = _disk(16)
    image = torch.zeros_like(target, requires_grad=True)
    TransformedLoss(F.l1_loss, torch.nn.Identity(), smoothing_sigma=1.0)(image, target).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_a_negative_sigma_is_an_error():
    with pytest.raises(ValueError, match="smoothing_sigma must be >= 0"):
        TransformedLoss(F.l1_loss, torch.nn.Identity(), smoothing_sigma=-1.0)
