"""An edge-preserving 2D bilateral filter in PyTorch, differentiable, for a CT's quantum noise.

MONAI's ``BilateralFilter`` needs its C++ extension, which the pip wheels do not build, and
SimpleITK's works on images, not on the tensors inside a training step; a 2D bilateral filter over a
small window is a few tensor operations, written here.

Each pixel becomes the mean of its neighbours within ``2 * spatial_sigma`` pixels, weighted by
their distance (Gaussian, ``spatial_sigma``) and by how far their value lies from its own
(Gaussian, ``range_sigma``): noise within a tissue is averaged away, an edge between two tissues
whose values differ by several ``range_sigma`` is kept. The weights are constants to the backward
pass: gradients flow through the averaging, not through the choice of neighbours, which keeps the
filter's cost inside a training step small.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = ["bilateral_filter_2d"]


def bilateral_filter_2d(image: torch.Tensor, spatial_sigma: float, range_sigma: float) -> torch.Tensor:
    """Bilateral filter of every channel of ``image`` over its last two dimensions (edges replicated).

    Args:
        image: ``(N, C, H, W)``.
        spatial_sigma: standard deviation of the spatial weights, in pixels (the window reaches
            ``ceil(2 * spatial_sigma)`` pixels each side).
        range_sigma: standard deviation of the value weights, in the image's units.

    Returns:
        The filtered image, of ``image``'s shape and dtype.

    Raises:
        ValueError: an image that is not 4D, or a sigma that is not positive.
    """
    if image.ndim != 4:
        raise ValueError(f"bilateral_filter_2d takes (N, C, H, W), got shape {tuple(image.shape)}")
    if spatial_sigma <= 0 or range_sigma <= 0:
        raise ValueError(f"bilateral sigmas must be positive, got spatial {spatial_sigma}, range {range_sigma}")
    n, c, h, w = image.shape
    radius = max(1, math.ceil(2.0 * spatial_sigma))
    size = 2 * radius + 1
    planes = image.reshape(n * c, 1, h, w)
    padded = F.pad(planes, (radius, radius, radius, radius), mode="replicate")
    neighbours = F.unfold(padded, size).reshape(n * c, size * size, h, w)
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    distance2 = (offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2).reshape(1, size * size, 1, 1)
    with torch.no_grad():
        weights = torch.exp(-distance2 / (2.0 * spatial_sigma ** 2)
                            - (neighbours - planes) ** 2 / (2.0 * range_sigma ** 2))
        weights = weights / weights.sum(dim=1, keepdim=True)
    filtered = (weights * neighbours).sum(dim=1, keepdim=True)
    return filtered.reshape(n, c, h, w)
