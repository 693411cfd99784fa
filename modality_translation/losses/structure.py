"""A structure term across modalities: the modality independent neighbourhood descriptor (MIND).

Unpaired CT <-> MR translation lets a generator move edges as long as the discriminator and the
cycle are satisfied: a skull drawn at the scalp, a cortex that is not the input's. MIND (Heinrich
et al., Medical Image Analysis 2012) describes each pixel by how similar its patch is to its
neighbours' patches, normalised by the local variance, so a CT and a T2 of one anatomy have similar
descriptors although their intensities are unrelated. Yang et al. (DLMIA 2018) add the L1 distance
between the descriptors of a CycleGAN's input and its translation to the generator loss
("structure-constrained CycleGAN") for brain MR -> CT. MONAI offers no MIND; it is written here
from the paper's definition, for 2D and 3D images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import nn

__all__ = ["MINDStructureLoss", "mind_descriptors"]

#: Bounds of the local variance relative to its image mean (Heinrich's reference implementation):
#: the descriptor of a flat region stays defined, that of a strong edge does not saturate.
VARIANCE_BOUNDS = (1e-3, 1e3)


def _shifted(image: torch.Tensor, axis: int, offset: int, distance: int) -> torch.Tensor:
    """``image`` moved by ``offset`` pixels along spatial ``axis``, borders replicated."""
    spatial = image.ndim - 2
    padded = F.pad(image, [distance] * (2 * spatial), mode="replicate")
    index = [slice(None), slice(None)]
    for a in range(spatial):
        start = distance + (offset if a == axis else 0)
        index.append(slice(start, start + image.shape[2 + a]))
    return padded[tuple(index)]


def mind_descriptors(image: torch.Tensor, distance: int = 2, sigma: float = 1.0) -> torch.Tensor:
    """MIND of each channel over the 2·D axis neighbours at ``distance`` pixels, averaged over channels.

    For each neighbour offset r: ``D_r = G_sigma * (I - I(. + r))^2`` (a patch distance), ``V`` the
    mean of ``D_r`` over r (the local variance, bounded relative to its image mean), and
    ``MIND_r = exp(-D_r / V)`` divided by its largest value over r.

    Args:
        image: ``(N, C, *spatial)`` with 2 or 3 spatial dimensions. The descriptors of the C channels
            (e.g. a CT's window channels, or neighbouring slices) are averaged.
        distance: neighbour distance in pixels.
        sigma: standard deviation (pixels) of the Gaussian patch weighting.

    Returns:
        ``(N, 2·D, *spatial)`` descriptors in (0, 1].

    Raises:
        ValueError: an image that is not 2D or 3D, or a distance below 1.
    """
    spatial = image.ndim - 2
    if spatial not in (2, 3):
        raise ValueError(f"MIND needs (N, C, H, W) or (N, C, D, H, W) images, got shape {tuple(image.shape)}")
    if distance < 1:
        raise ValueError(f"MIND neighbour distance must be at least 1 pixel, got {distance}")
    n, c = image.shape[:2]
    flat = image.float().reshape(n * c, 1, *image.shape[2:])
    smooth = GaussianFilter(spatial, sigma).to(flat.device)
    distances = torch.cat([smooth((flat - _shifted(flat, axis, sign * distance, distance)) ** 2)
                           for axis in range(spatial) for sign in (1, -1)], dim=1)
    variance = distances.mean(dim=1, keepdim=True)
    mean = variance.mean(dim=tuple(range(1, variance.ndim)), keepdim=True).clamp_min(1e-12)
    variance = torch.maximum(torch.minimum(variance, mean * VARIANCE_BOUNDS[1]), mean * VARIANCE_BOUNDS[0])
    descriptors = torch.exp(-distances / variance)
    descriptors = descriptors / descriptors.amax(dim=1, keepdim=True)
    return descriptors.reshape(n, c, *descriptors.shape[1:]).mean(dim=1)


class MINDStructureLoss(nn.Module):
    """Mean absolute difference of the MIND descriptors of an image of domain A and one of domain B.

    The CycleGAN trainer calls it as ``loss(real_A, fake_B)`` and ``loss(fake_A, real_B)``: each
    translation must keep its input's local structure.

    Args:
        transform_a: applied to domain A's images first (e.g.
            :class:`~modality_translation.networks.CTWindowChannels`: a CT's structure is seen in its
            brain, subdural and wide windows, not on the one wide-window scale where the brain is flat).
        transform_b: the same for domain B.
        distance: neighbour distance in pixels.
        sigma: Gaussian patch weighting (pixels).
    """

    def __init__(self, transform_a: nn.Module | None = None, transform_b: nn.Module | None = None,
                 distance: int = 2, sigma: float = 1.0) -> None:
        super().__init__()
        if distance < 1 or sigma <= 0:
            raise ValueError(f"MIND needs distance >= 1 and sigma > 0, got distance={distance}, sigma={sigma}")
        self.transform_a = transform_a if transform_a is not None else nn.Identity()
        self.transform_b = transform_b if transform_b is not None else nn.Identity()
        self.distance = int(distance)
        self.sigma = float(sigma)

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        """L1 distance between the descriptors of ``image_a`` (domain A) and ``image_b`` (domain B)."""
        if image_a.shape[0] != image_b.shape[0] or image_a.shape[2:] != image_b.shape[2:]:
            raise ValueError(f"structure loss needs images of one batch and size, got {tuple(image_a.shape)} "
                             f"and {tuple(image_b.shape)}")
        descriptors_a = mind_descriptors(self.transform_a(image_a.float()), self.distance, self.sigma)
        descriptors_b = mind_descriptors(self.transform_b(image_b.float()), self.distance, self.sigma)
        return (descriptors_a - descriptors_b).abs().mean()
