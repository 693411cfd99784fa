"""SSIM, PSNR and MAE of translated slices inside a head mask, as Ignite metrics for the validation engines.

A head slice is mostly air. Averaged over the whole slice, SSIM is dominated by how exactly the
generated air matches (and a generator that outputs a constant head already scores high), so a
validation curve says little about the anatomy. These metrics average the SSIM map, and compute the
squared error of PSNR, over the pixels of a head mask only, as SynthRAD2023 does for synthetic CT
(SSIM averaged over the mask voxels, PSNR and MAE over the mask voxels). With
``kernel_type="uniform"``, ``win_size=7`` and ``sample_covariance=True`` the SSIM map is SynthRAD's
(scikit-image's defaults), applied per slice.

MONAI's :class:`monai.metrics.SSIMMetric` and :class:`monai.handlers.PeakSignalToNoiseRatio` take no
mask, so these are Ignite metrics written here; the SSIM map itself is MONAI's
(:func:`monai.metrics.regression.compute_ssim_and_cs`). They read ``(pred, label, mask)`` from the
engine output (``output_transform``, e.g. ``monai.handlers.from_engine(["pred", "label", "mask"])``)
and reduce across processes under ``torch.distributed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.metrics.regression import compute_ssim_and_cs

from modality_translation.metrics.image_similarity import sample_covariance_k2


def _batch(values: Any) -> torch.Tensor:
    """A ``(batch, C, H, W)`` float tensor from a batched tensor or a decollated list of ``(C, H, W)``."""
    if isinstance(values, (list, tuple)):
        values = torch.stack([torch.as_tensor(v) for v in values])
    values = torch.as_tensor(values).float()
    if values.ndim != 4:
        raise ValueError(f"expected (batch, channels, H, W) images, got shape {tuple(values.shape)}")
    return values


def _unpack(output: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if len(output) != 3:
        raise ValueError(f"expected (pred, label, mask) from the output transform, got {len(output)} items")
    pred, label, mask = (_batch(v) for v in output)
    if pred.shape != label.shape:
        raise ValueError(f"pred and label shapes differ: {tuple(pred.shape)} vs {tuple(label.shape)}")
    if mask.shape[0] != pred.shape[0] or mask.shape[2:] != pred.shape[2:]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the images {tuple(pred.shape)}")
    return pred, label, mask > 0.5


class _MaskedMean(Metric):
    """Mean over images of a per-image value computed inside the mask; images with an empty mask (NaN) are skipped."""

    def __init__(self, output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._sum = torch.tensor(0.0, dtype=torch.float64, device=self._device)
        self._count = torch.tensor(0, dtype=torch.int64, device=self._device)

    def per_image(self, pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def iteration_completed(self, engine: Any) -> None:
        # Ignite would split lists of per-sample tensors into (pred, label) pairs; here the whole
        # (pred, label, mask) triple of the batch goes to update().
        self.update(self._output_transform(engine.state.output))

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        pred, label, mask = _unpack(output)
        values = self.per_image(pred, label, mask)
        measured = ~torch.isnan(values)
        self._sum += values[measured].double().sum().to(self._device)
        self._count += int(measured.sum())

    @sync_all_reduce("_sum", "_count")
    def compute(self) -> float:
        if int(self._count) == 0:
            return float("nan")  # no image with head pixels: nothing to measure
        return float(self._sum / self._count)


class MaskedSSIM(_MaskedMean):
    """Mean SSIM inside a mask (Gaussian window, Wang et al. 2004, by default), 2D images.

    Images in [-1, 1] should be shifted to [0, 2] first (SSIM's luminance term assumes non-negative
    intensities); the data range stays 2. The SSIM map is computed without padding, so it covers the
    pixels at least ``win_size // 2`` from the border; the mask is cropped alike.

    Args:
        data_range: intensity span of the images.
        win_size: window size.
        sigma: Gaussian standard deviation (Gaussian window only).
        k1, k2: SSIM stabilising constants.
        kernel_type: ``"gaussian"`` or ``"uniform"`` (scikit-image's default, SynthRAD's).
        sample_covariance: use sample (co)variances as scikit-image does (K2 adjusted,
            :func:`~modality_translation.metrics.image_similarity.sample_covariance_k2`).
        output_transform: maps the engine output to ``(pred, label, mask)``.
        device: device of the accumulators.
    """

    def __init__(self, data_range: float = 2.0, win_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
                 k2: float = 0.03, kernel_type: str = "gaussian", sample_covariance: bool = False,
                 output_transform: Callable = lambda x: x, device: str | torch.device = "cpu") -> None:
        if win_size < 1 or win_size % 2 == 0:
            raise ValueError(f"win_size must be an odd positive integer, got {win_size}")
        if kernel_type not in ("gaussian", "uniform"):
            raise ValueError(f"kernel_type must be 'gaussian' or 'uniform', got {kernel_type!r}")
        self.data_range, self.win_size, self.sigma, self.k1 = float(data_range), int(win_size), float(sigma), k1
        self.k2 = sample_covariance_k2(self.win_size, 2, k2) if sample_covariance else k2
        self.kernel_type = kernel_type
        super().__init__(output_transform=output_transform, device=device)

    def per_image(self, pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ssim_map, _ = compute_ssim_and_cs(
            pred, label, spatial_dims=2, kernel_size=(self.win_size,) * 2, kernel_sigma=(self.sigma,) * 2,
            data_range=self.data_range, kernel_type=self.kernel_type, k1=self.k1, k2=self.k2,
        )
        half = self.win_size // 2
        inside = mask[:, :1, half : mask.shape[2] - half, half : mask.shape[3] - half].expand_as(ssim_map)
        counts = inside.flatten(1).sum(1)
        sums = (ssim_map * inside).flatten(1).sum(1)
        return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))


class MaskedPSNR(_MaskedMean):
    """Mean PSNR inside a mask: ``10 log10(data_range^2 / MSE over the mask pixels)`` per image.

    Args:
        data_range: intensity span of the images (2.0 for [-1, 1]).
        output_transform: maps the engine output to ``(pred, label, mask)``.
        device: device of the accumulators.
    """

    def __init__(self, data_range: float = 2.0, output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu") -> None:
        self.data_range = float(data_range)
        super().__init__(output_transform=output_transform, device=device)

    def per_image(self, pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inside = mask[:, :1].expand_as(pred)
        counts = inside.flatten(1).sum(1)
        mse = (((pred - label) ** 2) * inside).flatten(1).sum(1) / counts.clamp(min=1)
        # A perfect prediction gives inf (and an inf mean), as MONAI's PSNR does.
        psnr = 10.0 * torch.log10(self.data_range**2 / mse)
        return torch.where(counts > 0, psnr, torch.full_like(psnr, math.nan))


class MaskedMAE(_MaskedMean):
    """Mean absolute error inside a mask, per image, averaged over images (e.g. HU of a synthetic CT slice).

    Args:
        scale: units per unit of the images (e.g. 1500 HU for a CT windowed to [-1000, 2000] HU on
            [-1, 1]: the window width / 2), so that the error is reported in those units.
        output_transform: maps the engine output to ``(pred, label, mask)``.
        device: device of the accumulators.
    """

    def __init__(self, scale: float = 1.0, output_transform: Callable = lambda x: x,
                 device: str | torch.device = "cpu") -> None:
        self.scale = float(scale)
        super().__init__(output_transform=output_transform, device=device)

    def per_image(self, pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inside = mask[:, :1].expand_as(pred)
        counts = inside.flatten(1).sum(1)
        sums = ((pred - label).abs() * self.scale * inside).flatten(1).sum(1)
        return torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, math.nan))
