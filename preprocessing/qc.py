"""Quality-control montages (PNG) of one subject's preprocessing.

Three pictures per subject, each answering one question at a glance:

* :func:`registration_montage` — *is every volume aligned to its reference?* For each registered
  volume, an axial and a sagittal view: the reference, the volume before registration (placed by
  its scanner coordinates only) and after, both with the reference's contours drawn on top, and a
  checkerboard of reference and registered volume (misalignment shows as broken edges between
  tiles).
* :func:`artefact_montage` — *did the artefact mask remove the holder and keep the head?* Axial
  CT slices with the mask outline, the removed voxels tinted, and the masked result.
* :func:`slice_strip` — *do the extracted slices look like training data?* Evenly spaced slices
  of each modality, as the network will see them.

Figures are drawn with Matplotlib's object API on an Agg canvas (no pyplot global state, safe in
worker processes) and written atomically without time stamps, so reruns give identical bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from medgan_common.atomic import atomic_path

__all__ = ["RegistrationView", "artefact_montage", "checkerboard", "display_range", "registration_montage", "slice_strip"]

_DPI = 80
_PANEL_INCHES = 2.4


@dataclass
class RegistrationView:
    """One registered volume in the registration montage.

    Attributes:
        name: row label (``"ct"``, ``"t2 -> t1"``...).
        reference: the fixed image (defines the grid).
        before: the moving image resampled onto the reference grid by physical position only.
        after: the registered moving image on the reference grid.
    """

    name: str
    reference: sitk.Image
    before: sitk.Image
    after: sitk.Image


def display_range(array: np.ndarray, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Grey-level range for display: percentiles of the non-background voxels (all voxels if none)."""
    values = array[np.isfinite(array)]
    foreground = values[values > values.min()] if values.size else values
    if foreground.size < 16:
        foreground = values
    if foreground.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(foreground, [low, high])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 6) -> np.ndarray:
    """Interleave two 2D images in a ``tiles`` x ``tiles`` checkerboard, each scaled to [0, 1] first."""
    def scaled(x: np.ndarray) -> np.ndarray:
        lo, hi = display_range(x)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)

    rows = (np.arange(a.shape[0]) * tiles // max(1, a.shape[0])) % 2
    columns = (np.arange(a.shape[1]) * tiles // max(1, a.shape[1])) % 2
    pick = (rows[:, None] + columns[None, :]) % 2 == 0
    return np.where(pick, scaled(a), scaled(b))


def _planes(image: sitk.Image, centre_zyx: Sequence[int]) -> dict[str, tuple[np.ndarray, tuple[float, float, float, float]]]:
    """Axial and sagittal planes through ``centre_zyx`` with their physical extents (mm)."""
    array = sitk.GetArrayViewFromImage(image)  # a view: only the two planes are copied
    sx, sy, sz = image.GetSpacing()
    nz, ny, nx = array.shape
    axial = array[centre_zyx[0]].astype(np.float32)
    # Sagittal: rows superior (up) to inferior, columns anterior to posterior.
    sagittal = array[:, :, centre_zyx[2]][::-1].astype(np.float32)
    return {
        "axial": (axial, (0.0, nx * sx, ny * sy, 0.0)),
        "sagittal": (sagittal, (0.0, ny * sy, 0.0, nz * sz)),
    }


def _centre(image: sitk.Image) -> tuple[int, int, int]:
    """Voxel index [z, y, x] of the intensity-weighted centre of the image's bright part."""
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    lo, hi = display_range(array)
    weights = np.clip((array - lo) / (hi - lo), 0, 1) ** 2
    if weights.sum() == 0:
        return tuple(n // 2 for n in array.shape)  # type: ignore[return-value]
    grids = np.indices(array.shape, sparse=True)
    return tuple(int(round(float((g * weights).sum() / weights.sum()))) for g in grids)  # type: ignore[return-value]


def _contour_levels(plane: np.ndarray) -> list[float]:
    lo, hi = display_range(plane)
    return [lo + 0.25 * (hi - lo), lo + 0.6 * (hi - lo)]


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    FigureCanvasAgg(figure)
    height = figure.get_figheight()
    # Room for the title only; Matplotlib's default margins waste a third of a tall montage.
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - 0.9 / height, wspace=0.04, hspace=0.22)
    path = Path(path)
    with atomic_path(path) as tmp:
        # No "Software" entry: the PNG bytes then depend only on the pixels.
        figure.savefig(tmp, format="png", dpi=_DPI, facecolor="black", metadata={"Software": None})
    return path


def _grey(axis, plane: np.ndarray, extent, vrange: tuple[float, float] | None = None) -> None:
    lo, hi = vrange or display_range(plane)
    axis.imshow(plane, cmap="gray", vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    axis.set_axis_off()


def registration_montage(views: Sequence[RegistrationView], path: str | os.PathLike, title: str = "") -> Path:
    """Draw the registration montage (see the module docstring) and write it as PNG.

    Args:
        views: the registered volumes, one pair of rows (axial, sagittal) each.
        path: PNG file to write.
        title: figure title (the subject's pseudonym).

    Returns:
        ``path``.
    """
    columns = ("reference", "before (scanner position)", "after registration", "checkerboard after")
    planes = ("axial", "sagittal")
    n_rows = len(views) * len(planes)
    figure = Figure(figsize=(len(columns) * _PANEL_INCHES, max(1, n_rows) * _PANEL_INCHES + 0.8))
    figure.patch.set_facecolor("black")
    if title:
        figure.suptitle(title, color="white", y=1.0 - 0.15 / figure.get_figheight(), va="top")
    axes = figure.subplots(max(1, n_rows), len(columns), squeeze=False)
    for index, view in enumerate(views):
        # Whole-volume statistics (centre, grey range) once per view; its two rows share them.
        centre = _centre(view.reference)
        reference_planes, before_planes, after_planes = (_planes(image, centre) for image in
                                                         (view.reference, view.before, view.after))
        moving_range = display_range(sitk.GetArrayViewFromImage(view.after))
        for offset, plane_name in enumerate(planes):
            row = index * len(planes) + offset
            reference, extent = reference_planes[plane_name]
            before, after = before_planes[plane_name][0], after_planes[plane_name][0]
            levels = _contour_levels(reference)
            _grey(axes[row, 0], reference, extent)
            for column, moving in ((1, before), (2, after)):
                _grey(axes[row, column], moving, extent, moving_range)
                # Contours of the reference on the moving image: they follow its edges only when aligned.
                axes[row, column].contour(reference, levels=levels, colors=["#ff3030", "#30c0ff"], linewidths=0.8,
                                          extent=extent, origin="upper")
            axes[row, 3].imshow(checkerboard(reference, after), cmap="gray", vmin=0, vmax=1, extent=extent,
                                interpolation="nearest")
            axes[row, 3].set_axis_off()
            axes[row, 0].set_title(f"{view.name} {plane_name}: {columns[0]}", color="white", fontsize=8)
            for column in (1, 2, 3):
                axes[row, column].set_title(columns[column], color="white", fontsize=8)
    return _save(figure, path)


def artefact_montage(
    ct_hu: sitk.Image, keep_mask: sitk.Image, masked_hu: sitk.Image, path: str | os.PathLike,
    title: str = "", display_hu: tuple[float, float] = (-200.0, 1600.0), n_slices: int = 3,
) -> Path:
    """Draw the artefact-mask montage: CT with the mask outline and removed voxels, then the masked CT.

    Args:
        ct_hu: registered CT before masking (HU).
        keep_mask: the mask (non-zero: kept).
        masked_hu: the CT after masking.
        path: PNG file to write.
        title: figure title.
        display_hu: grey-level range (HU); wide enough to show bone and the holder.
        n_slices: axial slices shown, evenly spaced through the kept region.

    Returns:
        ``path``.
    """
    # Views, not copies: on a 512x512 CT each volume is 150 MB and three slices are drawn.
    ct = sitk.GetArrayViewFromImage(ct_hu)
    mask = sitk.GetArrayViewFromImage(keep_mask) > 0
    masked = sitk.GetArrayViewFromImage(masked_hu)
    occupied = np.flatnonzero(mask.any(axis=(1, 2)))
    if occupied.size == 0:
        occupied = np.arange(ct.shape[0])
    picks = np.linspace(occupied[0], occupied[-1], n_slices + 2)[1:-1].round().astype(int)
    sx, sy, _ = ct_hu.GetSpacing()
    extent = (0.0, ct.shape[2] * sx, ct.shape[1] * sy, 0.0)
    removed_colour = ListedColormap([(0, 0, 0, 0), (1.0, 0.2, 0.1, 0.55)])
    figure = Figure(figsize=(n_slices * _PANEL_INCHES, 2 * _PANEL_INCHES + 0.5))
    figure.patch.set_facecolor("black")
    if title:
        figure.suptitle(title, color="white")
    axes = figure.subplots(2, n_slices, squeeze=False)
    for column, z in enumerate(picks):
        _grey(axes[0, column], ct[z], extent, display_hu)
        removed = (~mask[z]) & (ct[z] > -500)
        axes[0, column].imshow(removed.astype(np.uint8), cmap=removed_colour, vmin=0, vmax=1, extent=extent,
                               interpolation="nearest")
        if mask[z].any() and not mask[z].all():
            axes[0, column].contour(mask[z].astype(np.float32), levels=[0.5], colors=["#ffe030"], linewidths=1.0,
                                    extent=extent, origin="upper")
        axes[0, column].set_title(f"slice {z}: mask outline, removed in red", color="white", fontsize=8)
        _grey(axes[1, column], masked[z], extent, display_hu)
        axes[1, column].set_title("after masking", color="white", fontsize=8)
    return _save(figure, path)


def slice_strip(slices: Mapping[str, Sequence[np.ndarray]], path: str | os.PathLike, title: str = "",
                n_slices: int = 8, value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Draw a strip of extracted slices per modality (one row each), evenly spaced through the set.

    Args:
        slices: ``{name: slices}`` (2D arrays, or 2.5D stacks whose centre channel is shown).
        path: PNG file to write.
        title: figure title.
        n_slices: slices shown per row at most.
        value_range: grey-level range (the slices' intensity range).

    Returns:
        ``path``.
    """
    names = [name for name in slices if len(slices[name])]
    shown = {name: [slices[name][i] for i in np.unique(np.linspace(0, len(slices[name]) - 1, n_slices).round().astype(int))]
             for name in names}
    n_columns = max([len(v) for v in shown.values()], default=1)
    figure = Figure(figsize=(n_columns * _PANEL_INCHES * 0.75, max(1, len(names)) * _PANEL_INCHES * 0.75 + 0.5))
    figure.patch.set_facecolor("black")
    if title:
        figure.suptitle(title, color="white")
    axes = figure.subplots(max(1, len(names)), n_columns, squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for row, name in enumerate(names):
        for column, array in enumerate(shown[name]):
            array = np.asarray(array)
            plane = array[array.shape[0] // 2] if array.ndim == 3 else array
            axes[row, column].imshow(plane, cmap="gray", vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
        axes[row, 0].set_title(name, color="white", fontsize=8, loc="left")
    return _save(figure, path)
