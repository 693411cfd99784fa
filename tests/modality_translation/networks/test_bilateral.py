import pytest
import torch
from monai.networks.layers import GaussianFilter

from modality_translation.networks.bilateral import bilateral_filter_2d


def _step(noise: float = 0.0) -> torch.Tensor:
    torch.manual_seed(0)
    image = torch.zeros(2, 3, 24, 24)
    image[..., 12:] = 1.0
    return image + noise * torch.randn_like(image)


def test_noise_inside_a_region_is_averaged_away():
    noisy = _step(0.1)
    filtered = bilateral_filter_2d(noisy, 1.0, 0.3)
    assert filtered.shape == noisy.shape and filtered.dtype == noisy.dtype
    flat = (..., slice(2, 22), slice(1, 10))
    assert filtered[flat].std() < 0.45 * noisy[flat].std()


def test_an_edge_several_range_sigmas_high_is_kept_where_a_gaussian_blurs_it():
    step = _step()
    bilateral = bilateral_filter_2d(step, 1.5, 0.2)
    gaussian = GaussianFilter(2, 1.5)(step)
    # the pixels either side of the edge keep their values; a Gaussian of the same width mixes them
    assert torch.allclose(bilateral[..., 11], torch.zeros(()), atol=1e-3)
    assert torch.allclose(bilateral[..., 12], torch.ones(()), atol=1e-3)
    assert (gaussian[..., 4:20, 11] > 0.2).all()


def test_a_uniform_image_is_unchanged_up_to_its_border():
    image = torch.full((1, 1, 9, 9), -0.7)
    assert torch.allclose(bilateral_filter_2d(image, 2.0, 0.1), image, atol=1e-6)


def test_gradients_flow_through_the_average():
    image = _step(0.1).requires_grad_(True)
    bilateral_filter_2d(image, 1.0, 0.3).sum().backward()
    # every pixel's weights sum to 1, so the gradient of the sum is (about) one per pixel
    assert torch.allclose(image.grad.mean(), torch.tensor(1.0), atol=0.05)


@pytest.mark.parametrize("shape, spatial, value, message", [
    ((1, 8, 8), 1.0, 0.1, "takes \\(N, C, H, W\\)"),
    ((1, 1, 8, 8), 0.0, 0.1, "must be positive"),
    ((1, 1, 8, 8), 1.0, -1.0, "must be positive"),
])
def test_bad_arguments_are_refused(shape, spatial, value, message):
    with pytest.raises(ValueError, match=message):
        bilateral_filter_2d(torch.zeros(shape), spatial, value)
