import pytest
import torch

from modality_translation.losses import MINDStructureLoss, mind_descriptors
from modality_translation.networks import CTWindowChannels


def head_phantom(size: int = 32) -> torch.Tensor:
    """A disc (the head) with a ring (the skull) and an inner disc (the ventricles), on -1 (air)."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    radius = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    image = torch.full((size, size), -1.0)
    image[radius < 12] = 0.8  # skull
    image[radius < 10] = 0.1  # brain
    image[radius < 4] = 0.4  # ventricles
    return image[None, None]


def test_descriptors_keep_the_anatomy_across_contrasts():
    """Another contrast of one anatomy keeps its descriptors far better than the same image moved 3 pixels."""
    image = head_phantom()
    moved = torch.roll(image, shifts=3, dims=3)
    rescaled = 0.5 * image + 0.2  # same ordering of tissues, other intensities
    inverted = image.clone()  # a CT-like skull turned dark, brain and ventricles swapped in brightness (T2-like)
    for value, new in ((-1.0, -1.0), (0.8, -0.6), (0.1, 0.5), (0.4, 0.9)):
        inverted[image == value] = new
    loss = MINDStructureLoss()
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(image, rescaled).item() < 0.05 * loss(image, moved).item()
    assert loss(image, inverted).item() < 0.4 * loss(image, moved).item()


def test_descriptor_shape_range_and_3d():
    image = head_phantom().repeat(2, 3, 1, 1)
    descriptors = mind_descriptors(image)
    assert descriptors.shape == (2, 4, 32, 32)
    assert descriptors.min() > 0 and descriptors.max() <= 1.0 + 1e-6
    # Each pixel's largest neighbour descriptor is 1.
    assert torch.allclose(descriptors.amax(dim=1), torch.ones(2, 32, 32))
    volume = head_phantom(16)[:, :, None].repeat(1, 1, 8, 1, 1)
    assert mind_descriptors(volume, distance=1).shape == (1, 6, 8, 16, 16)
    with pytest.raises(ValueError, match="2D or 3D|\\(N, C, H, W\\)"):
        mind_descriptors(torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match="distance"):
        MINDStructureLoss(distance=0)


def test_gradient_moves_a_translation_towards_the_input_structure():
    """Gradient steps on a shifted translation lower its structure distance to the input."""
    source = head_phantom()
    translated = torch.roll(-source, shifts=2, dims=2).clone().requires_grad_(True)
    loss = MINDStructureLoss()
    start = loss(source, translated).item()
    optimizer = torch.optim.Adam([translated], lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        loss(source, translated).backward()
        optimizer.step()
    assert loss(source, translated).item() < 0.7 * start


def test_domain_transform_is_applied_to_its_side_only():
    """A CT (domain A) is described through its window channels; the T2 side is left as it is."""
    windows = CTWindowChannels(windows=[(40, 80), (500, 3000)], scale_window=(500, 3000))
    loss = MINDStructureLoss(transform_a=windows)
    ct, t2 = head_phantom(), -head_phantom()
    expected = (mind_descriptors(windows(ct)) - mind_descriptors(t2)).abs().mean()
    assert loss(ct, t2).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="one batch and size"):
        loss(ct, t2[..., :16])
