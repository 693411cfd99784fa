"""Paired image similarity: SSIM, PSNR and MAE with a stated data range, and the SynthRAD2023 CT metrics.

SSIM and PSNR depend on the intensity span they assume, so every function here takes it explicitly
(2.0 for GAN images in [-1, 1]); the computations are MONAI's :class:`monai.metrics.SSIMMetric`,
:func:`monai.metrics.regression.compute_ssim_and_cs` and :class:`monai.metrics.PSNRMetric`.

:func:`synthrad_metrics` reproduces the SynthRAD2023 challenge evaluation of a synthetic CT
(Thummerer et al. 2023, ``image_metrics.py`` of the challenge's evaluation code):

- MAE: mean absolute HU difference over the mask voxels, on the unclipped images;
- PSNR: both images clipped to [-1024, 3000] HU, data range 4024, over the mask voxels;
- SSIM: both images clipped to [-1024, 3000] HU, voxels outside the mask set to -1024, shifted to be
  non-negative, SSIM map of scikit-image's ``structural_similarity`` defaults (7-voxel uniform window,
  K1 = 0.01, K2 = 0.03, sample covariance) over the whole volume (3D for a volume), averaged over the
  mask voxels whose window lies inside the volume.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs

SYNTHRAD_HU_RANGE = (-1024.0, 3000.0)
SYNTHRAD_SSIM_WINDOW = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def sample_covariance_k2(win_size: int, spatial_dims: int, k2: float = SSIM_K2) -> float:
    """The K2 that makes MONAI's uniform-window SSIM equal scikit-image's ``structural_similarity``.

    scikit-image uses sample (co)variances, i.e. MONAI's population ones times ``c = n / (n - 1)``
    for a window of ``n`` voxels; in SSIM that factor cancels except against C2, so scikit-image's
    SSIM is MONAI's with K2 / sqrt(c).

    Args:
        win_size: window side (7 for SynthRAD2023).
        spatial_dims: 2 for slices, 3 for volumes.
        k2: SSIM's contrast constant (0.03).
    """
    num_points = win_size**spatial_dims
    return k2 / math.sqrt(num_points / (num_points - 1))


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> int:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.ndim not in (4, 5):
        raise ValueError(f"expected (batch, channels, H, W) or (batch, channels, D, H, W), got {tuple(pred.shape)}")
    return pred.ndim - 2


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float,
    win_size: int = 11,
    kernel_type: str = "gaussian",
) -> torch.Tensor:
    """Mean SSIM of each image of a batch (Wang et al. 2004), 2D or 3D.

    Args:
        pred: ``(batch, channels, *spatial)`` with 2 or 3 spatial axes.
        target: same shape.
        data_range: the intensity span the images can take (2.0 for [-1, 1], 4024 for clipped HU).
        win_size: window size (11 with a Gaussian of sigma 1.5 is the paper's choice).
        kernel_type: ``"gaussian"`` or ``"uniform"``.

    Returns:
        ``(batch,)`` SSIM values (channels averaged).

    Raises:
        ValueError: for shapes that differ or are not 4D/5D.
    """
    spatial_dims = _check_pair(pred, target)
    metric = SSIMMetric(spatial_dims=spatial_dims, data_range=data_range, win_size=win_size, kernel_type=kernel_type)
    return metric(y_pred=pred, y=target).reshape(-1)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    """PSNR of each image of a batch: ``10 log10(data_range^2 / MSE)``.

    Args:
        pred: ``(batch, channels, *spatial)``.
        target: same shape.
        data_range: the intensity span the images can take (2.0 for [-1, 1]).

    Returns:
        ``(batch,)`` PSNR values in dB (``inf`` for identical images).

    Raises:
        ValueError: for shapes that differ or are not 4D/5D.
    """
    _check_pair(pred, target)
    return PSNRMetric(max_val=data_range)(y_pred=pred, y=target).reshape(-1)


def mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference over the voxels where ``mask`` is non-zero (all voxels without a mask).

    Raises:
        ValueError: if the shapes differ or the mask is empty.
    """
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    inside = _mask_or_all(pred, target, mask)
    return float(np.abs(pred[inside] - target[inside]).mean())


def _mask_or_all(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    if mask is None:
        return np.ones(pred.shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != pred.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {pred.shape}")
    inside = mask > 0
    if not inside.any():
        raise ValueError("the mask is empty: no voxel to evaluate")
    return inside


def ssim_inside_mask(
    pred: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray,
    data_range: float,
    win_size: int = 11,
    kernel_type: str = "gaussian",
    k2: float = SSIM_K2,
) -> float:
    """SSIM map of the whole image, averaged over the mask voxels only (SynthRAD's masked SSIM).

    A whole-image SSIM counts the background, equal in both images by construction, and reads high
    even when the head itself is poorly translated; this average counts only the head. The map is
    computed over the whole image, so windows at the head's edge see the background as the images
    have it.

    Args:
        pred: 2D or 3D image, non-negative (shift signed scales first: SSIM's luminance term
            assumes it).
        target: same shape.
        mask: non-zero inside the region to average over.
        data_range: the intensity span of the images.
        win_size: window size.
        kernel_type: ``"gaussian"`` (sigma 1.5) or ``"uniform"``.
        k2: SSIM's contrast constant.

    Returns:
        The mean SSIM over the mask voxels whose window lies inside the image (MONAI's map covers
        only those); NaN when there are none.

    Raises:
        ValueError: if shapes differ, the mask is empty, or a side is shorter than the window.
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    inside = _mask_or_all(pred, target, mask)
    if pred.ndim not in (2, 3) or min(pred.shape) < win_size:
        raise ValueError(f"expected a 2D or 3D image with every side >= {win_size} voxels, got shape {pred.shape}")
    spatial_dims = pred.ndim
    ssim_map, _ = compute_ssim_and_cs(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(target)[None, None],
        spatial_dims=spatial_dims,
        kernel_size=[win_size] * spatial_dims,
        kernel_sigma=[1.5] * spatial_dims,
        data_range=data_range,
        kernel_type=kernel_type,
        k1=SSIM_K1,
        k2=k2,
    )
    # MONAI computes in float32: agreement with scikit-image's float64 is about 1e-4 on HU volumes.
    # MONAI's map covers only the windows inside the image: the same voxels as scikit-image's map
    # cropped by half a window, which is what SynthRAD averages over.
    half = win_size // 2
    crop = tuple(slice(half, size - half) for size in pred.shape)
    values = ssim_map[0, 0].double().numpy()[inside[crop]]
    return float(values.mean()) if values.size else math.nan


def synthrad_metrics(
    pred_hu: np.ndarray,
    target_hu: np.ndarray,
    mask: np.ndarray,
    hu_range: tuple[float, float] = SYNTHRAD_HU_RANGE,
) -> dict[str, float]:
    """MAE, PSNR and SSIM of a synthetic CT inside a body/head mask, SynthRAD2023 conventions.

    Args:
        pred_hu: synthetic CT in HU, a 3D volume (or a 2D slice, then SSIM is 2D).
        target_hu: reference CT in HU, same shape.
        mask: non-zero inside the body/head.
        hu_range: clipping range for PSNR and SSIM; its span is their data range (4024 HU).

    Returns:
        ``{"mae": HU, "psnr": dB, "ssim": in [-1, 1]}``; ``ssim`` is NaN when no mask voxel lies at
        least half a window (3 voxels) from the volume border.

    Raises:
        ValueError: if shapes differ, the mask is empty, the images are not 2D/3D, or a side of the
            volume is shorter than the 7-voxel SSIM window.
    """
    pred_hu = np.asarray(pred_hu, dtype=np.float64)
    target_hu = np.asarray(target_hu, dtype=np.float64)
    inside = _mask_or_all(pred_hu, target_hu, mask)
    if pred_hu.ndim not in (2, 3) or min(pred_hu.shape) < SYNTHRAD_SSIM_WINDOW:
        raise ValueError(
            f"expected a 2D or 3D image with every side >= {SYNTHRAD_SSIM_WINDOW} voxels, got shape {pred_hu.shape}"
        )
    low, high = (float(v) for v in hu_range)
    data_range = high - low
    pred_clipped, target_clipped = np.clip(pred_hu, low, high), np.clip(target_hu, low, high)

    psnr_value = float(
        PSNRMetric(max_val=data_range)(
            y_pred=torch.from_numpy(pred_clipped[inside])[None, None], y=torch.from_numpy(target_clipped[inside])[None, None]
        )
    )

    # Outside the mask both images are set to the range minimum, then shifted to start at 0.
    pred_ssim = np.where(inside, pred_clipped, low) - low
    target_ssim = np.where(inside, target_clipped, low) - low
    ssim_value = ssim_inside_mask(pred_ssim, target_ssim, inside, data_range, win_size=SYNTHRAD_SSIM_WINDOW,
                                  kernel_type="uniform",
                                  k2=sample_covariance_k2(SYNTHRAD_SSIM_WINDOW, pred_hu.ndim))
    return {"mae": mae(pred_hu, target_hu, inside), "psnr": psnr_value, "ssim": ssim_value}
