"""2D (and 2.5D) slice extraction from 3D volumes, and the exact way back.

2D translation networks train on slices of a fixed size. This module cuts slices along one axis,
optionally stacks neighbouring slices as channels (2.5D), scales intensities to ``[-1, 1]``, pads
each slice to the output's aspect ratio in millimetres (a square for the default 256 x 256, so
anatomy is never stretched) and resizes it. Every slice carries a :class:`SliceGeometry` record
with what was done, so that translated slices can be mapped back to their volume
(:func:`restore_slice`, :func:`paste_slices`) and written as NIfTI files whose affine places them
at their true position in the patient (:func:`save_slices`).

Resizing uses ``monai.transforms.Resize``: one batched torch interpolation for all slices of a
volume (fast), with Gaussian anti-aliasing when shrinking, and the half-pixel (``align_corners=False``)
grid convention that the physical-space bookkeeping below relies on. Padding uses ``numpy.pad``
with amounts computed here, since they must be recorded for the inverse anyway.

Array conventions: volumes are [z, y, x] arrays (``SimpleITK.GetArrayFromImage``); spacing,
origin and direction in the geometry record are in SimpleITK's (x, y, z) order and LPS space.
A slice along array axis ``a`` keeps the two other axes in increasing order as (rows, columns).
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize
from monai.utils import convert_to_numpy

from medgan_common.atomic import atomic_write_json, atomic_write_with
from medgan_common.errors import InputReadError, PreprocessingError
from preprocessing.windowing import rescale_intensity

PLANE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
"""Array axis of each plane for a volume in canonical orientation (identity direction, [z, y, x])."""

# LPS component of each plane's normal: sagittal slices are stacked along L, coronal along P, axial along S.
_PLANE_NORMAL_COMPONENT = {"sagittal": 0, "coronal": 1, "axial": 2}
_NEAREST_MODES = ("nearest", "nearest-exact")
_LINEAR_MODES = ("linear", "bilinear", "bicubic")

AxisSpec = Union[int, str]


def _direction_matrix(direction: Sequence[float]) -> np.ndarray:
    return np.asarray(direction, dtype=float).reshape(3, 3)


def resolve_axis(axis: AxisSpec, direction: Sequence[float] | None = None) -> int:
    """Array axis (0, 1 or 2 of a [z, y, x] array) of an axis number or a plane name.

    Args:
        axis: 0, 1, 2, or ``"axial"``, ``"coronal"``, ``"sagittal"``.
        direction: SimpleITK direction (9 numbers, row-major) of the volume; a plane name is mapped
            to the array axis closest to the plane's normal. ``None``: canonical orientation.

    Returns:
        The array axis.

    Raises:
        ValueError: an unknown name or an axis outside 0..2.
    """
    if isinstance(axis, str):
        name = axis.strip().lower()
        if name not in PLANE_AXES:
            raise ValueError(f"unknown slice axis {axis!r}; use 0, 1, 2 or one of {', '.join(PLANE_AXES)}")
        if direction is None:
            return PLANE_AXES[name]
        # Column k of the direction matrix is the LPS direction of SimpleITK index axis k,
        # i.e. of array axis 2 - k.
        column = int(np.argmax(np.abs(_direction_matrix(direction)[_PLANE_NORMAL_COMPONENT[name]])))
        return 2 - column
    if isinstance(axis, (bool, np.bool_)) or int(axis) != axis or not 0 <= int(axis) <= 2:
        raise ValueError(f"slice axis must be 0, 1 or 2 (of a [z, y, x] array) or a plane name, got {axis!r}")
    return int(axis)


def plane_name(axis: int, direction: Sequence[float] | None = None) -> str:
    """Anatomical plane (``"axial"``, ``"coronal"``, ``"sagittal"``) of slices along array ``axis``."""
    if direction is None:
        return {v: k for k, v in PLANE_AXES.items()}[axis]
    component = int(np.argmax(np.abs(_direction_matrix(direction)[:, 2 - axis])))
    return {v: k for k, v in _PLANE_NORMAL_COMPONENT.items()}[component]


@dataclass(frozen=True)
class SliceSelection:
    """Which slices to extract along the slice axis.

    Args:
        mode: ``"all"``; ``"indices"`` (explicit ``indices``); ``"middle"`` (the ``count`` central
            slices, or the slices ``first`` to ``last``); ``"range"`` (``start`` <= index < ``stop``,
            ``stop`` ``None`` = to the end); ``"head_fraction"`` (the central ``fraction`` of the
            slices in which the head mask is non-empty: brain-rich slices, no slices of the skull
            vertex or neck).
        indices: with ``"indices"``.
        count: with ``"middle"``: how many central slices (default 1).
        first, last: with ``"middle"`` instead of ``count``: the first and the last slice kept, both
            included, e.g. ``first=90, last=109`` for the 20 middle slices of a 150-slice T1 that the
            pix2pix study of T1 -> T2 kept ("the middle slices (90-110)"). A volume with fewer
            slices than ``last + 1`` is an error, not a shorter range: the slices must be the same
            anatomy in every subject.
        start, stop: with ``"range"``.
        fraction: with ``"head_fraction"``, in (0, 1].
    """

    mode: Literal["all", "indices", "middle", "range", "head_fraction"] = "all"
    indices: tuple[int, ...] = ()
    count: int | None = None
    first: int | None = None
    last: int | None = None
    start: int = 0
    stop: int | None = None
    fraction: float = 0.6

    def __post_init__(self) -> None:
        modes = ("all", "indices", "middle", "range", "head_fraction")
        if self.mode not in modes:
            raise ValueError(f"unknown slice selection mode {self.mode!r}; use one of {', '.join(modes)}")
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        if self.mode == "indices" and not self.indices:
            raise ValueError("slice selection 'indices' needs at least one index")
        if self.mode == "middle":
            if (self.first is None) != (self.last is None):
                raise ValueError("slice selection 'middle' needs both first and last (or count)")
            if self.first is not None and self.count is not None:
                raise ValueError("slice selection 'middle' takes count, or first and last, not both")
            if self.count is not None and self.count < 1:
                raise ValueError(f"slice selection 'middle' needs count >= 1, got {self.count}")
            if self.first is not None and not 0 <= self.first <= self.last:
                raise ValueError(f"slice selection 'middle' needs 0 <= first <= last, got first {self.first}, "
                                 f"last {self.last}")
        if self.mode == "range" and self.stop is not None and self.stop <= self.start:
            raise ValueError(f"slice selection 'range' needs start < stop, got [{self.start}, {self.stop})")
        if self.mode == "head_fraction" and not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"slice selection 'head_fraction' needs 0 < fraction <= 1, got {self.fraction}")

    def to_config(self) -> dict[str, Any]:
        """The mode and the fields it uses, as a configuration mapping (what :meth:`from_config` reads)."""
        used = {"all": (), "indices": ("indices",), "range": ("start", "stop"), "head_fraction": ("fraction",),
                "middle": ("first", "last") if self.first is not None else ("count",)}[self.mode]
        values = {"mode": self.mode, **{name: getattr(self, name) for name in used}}
        if "count" in values and values["count"] is None:
            values["count"] = 1  # the default of "middle"
        return json.loads(json.dumps(values))

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | SliceSelection | None) -> SliceSelection:
        """Build from a configuration mapping such as ``{"mode": "middle", "count": 5}``.

        Raises:
            ValueError: unknown keys or invalid values.
        """
        if config is None:
            return cls()
        if isinstance(config, SliceSelection):
            return config
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown slice selection option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**config)


def select_slices(
    volume_shape: Sequence[int],
    axis: int,
    selection: SliceSelection | Mapping[str, Any] | None = None,
    head_mask: np.ndarray | None = None,
) -> list[int]:
    """Indices along ``axis`` chosen by ``selection``.

    Args:
        volume_shape: shape of the [z, y, x] volume.
        axis: array axis of the slices.
        selection: a :class:`SliceSelection` or its configuration mapping (default: all slices).
        head_mask: boolean mask of the head, required by ``"head_fraction"``.

    Returns:
        Sorted, unique slice indices.

    Raises:
        PreprocessingError: indices outside the volume, a volume with fewer slices than asked, or an
            empty/missing head mask for ``"head_fraction"``.
    """
    selection = SliceSelection.from_config(selection)
    n_slices = int(volume_shape[axis])
    if selection.mode == "all":
        return list(range(n_slices))
    if selection.mode == "indices":
        outside = [i for i in selection.indices if not 0 <= i < n_slices]
        if outside:
            raise PreprocessingError(None, f"slice indices {outside} lie outside the {n_slices} slices along axis {axis}")
        return sorted(set(selection.indices))
    if selection.mode == "middle":
        if selection.first is not None:
            if selection.last >= n_slices:
                raise PreprocessingError(None, f"middle slices {selection.first} to {selection.last} asked, the volume "
                                         f"has {n_slices} along axis {axis}")
            return list(range(selection.first, selection.last + 1))
        count = 1 if selection.count is None else selection.count
        if count > n_slices:
            raise PreprocessingError(None, f"{count} middle slices asked, the volume has {n_slices} along axis {axis}")
        first = (n_slices - count) // 2
        return list(range(first, first + count))
    if selection.mode == "range":
        stop = n_slices if selection.stop is None else selection.stop
        if not 0 <= selection.start < stop <= n_slices:
            raise PreprocessingError(
                None, f"slice range [{selection.start}, {stop}) does not fit the {n_slices} slices along axis {axis}"
            )
        return list(range(selection.start, stop))
    # head_fraction
    if head_mask is None:
        raise PreprocessingError(None, "slice selection 'head_fraction' needs a head mask")
    head_mask = np.asarray(head_mask, dtype=bool)
    if head_mask.shape != tuple(volume_shape):
        raise PreprocessingError(None, f"head mask shape {head_mask.shape} differs from the volume shape {tuple(volume_shape)}")
    occupied = np.flatnonzero(head_mask.any(axis=tuple(a for a in range(3) if a != axis)))
    if occupied.size == 0:
        raise PreprocessingError(None, "slice selection 'head_fraction': the head mask is empty")
    first, extent = int(occupied[0]), int(occupied[-1] - occupied[0] + 1)
    count = max(1, math.floor(selection.fraction * extent + 0.5))  # half up, not Python's half-to-even
    start = first + (extent - count) // 2
    return list(range(start, start + count))


@dataclass(frozen=True)
class SliceGeometry:
    """Where an extracted slice comes from and how it was transformed; JSON-serialisable.

    Attributes:
        axis: array axis of the [z, y, x] volume the slice is perpendicular to.
        index: slice index along ``axis``.
        plane: anatomical plane (``"axial"``, ``"coronal"``, ``"sagittal"``).
        neighbours: 2.5D half-width: channels are slices ``index - neighbours ... index + neighbours``.
        original_shape: (rows, columns) of the slice in the volume.
        padding: ((before, after) rows, (before, after) columns) added before resizing.
        output_shape: (rows, columns) after resizing.
        scale: output pixels per padded input pixel, per axis (rows, columns).
        volume_shape: shape of the [z, y, x] volume.
        spacing, origin, direction: the volume's SimpleITK geometry ((x, y, z) order, LPS).
        interpolation: MONAI ``Resize`` mode used.
        pad_value: value of the padding.
        intensity_range: input interval mapped to ``out_range`` (``None``: intensities unchanged).
        out_range: output interval of the intensity scaling.
    """

    axis: int
    index: int
    plane: str
    neighbours: int
    original_shape: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    output_shape: tuple[int, int]
    scale: tuple[float, float]
    volume_shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    interpolation: str = "bilinear"
    pad_value: float = 0.0
    intensity_range: tuple[float, float] | None = None
    out_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """Array axes of the slice's rows and columns."""
        rows, columns = (a for a in range(3) if a != self.axis)
        return rows, columns

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Slice shape after padding, before resizing."""
        return tuple(n + before + after for n, (before, after) in zip(self.original_shape, self.padding))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dictionary (lists for tuples)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceGeometry:
        """Inverse of :meth:`to_dict`."""

        def tuples(value: Any) -> Any:
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        return cls(**{key: tuples(value) for key, value in data.items()})

    def index_to_physical(self) -> np.ndarray:
        """4 x 4 matrix mapping output (row, column, channel, 1) to LPS millimetres.

        Channel ``c`` of a 2.5D slice lies at volume index ``index - neighbours + c``; for replicated
        edge channels that position is outside the volume, as the data there are a copy.
        """
        rows_axis, columns_axis = self.in_plane_axes
        (pad_rows, _), (pad_columns, _) = self.padding
        # Output pixel u samples padded input coordinate (u + 0.5) / scale - 0.5 (half-pixel grid).
        to_array_index = np.zeros((4, 4))
        to_array_index[rows_axis, 0] = 1.0 / self.scale[0]
        to_array_index[rows_axis, 3] = 0.5 / self.scale[0] - 0.5 - pad_rows
        to_array_index[columns_axis, 1] = 1.0 / self.scale[1]
        to_array_index[columns_axis, 3] = 0.5 / self.scale[1] - 0.5 - pad_columns
        to_array_index[self.axis, 2] = 1.0
        to_array_index[self.axis, 3] = self.index - self.neighbours
        to_array_index[3, 3] = 1.0
        to_physical = np.eye(4)
        # array index [z, y, x] -> SimpleITK index (x, y, z) -> LPS
        to_physical[:3, :3] = _direction_matrix(self.direction) @ np.diag(self.spacing) @ np.eye(3)[::-1]
        to_physical[:3, 3] = self.origin
        return to_physical @ to_array_index

    def nifti_affine(self) -> np.ndarray:
        """The NIfTI (RAS) affine of the saved slice (see :meth:`index_to_physical`)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.index_to_physical()


def _resize_stack(stack: np.ndarray, size: Sequence[int], mode: str, anti_aliasing: bool = True) -> np.ndarray:
    """Resize every (rows, columns) plane of an (N, rows, columns) stack in one batched call.

    ``anti_aliasing`` smooths before shrinking (MONAI ignores it when enlarging); never for nearest modes.
    """
    if tuple(stack.shape[1:]) == tuple(size):
        return stack
    resize = Resize(
        spatial_size=tuple(int(s) for s in size),
        mode=mode,
        align_corners=False if mode in _LINEAR_MODES else None,
        anti_aliasing=anti_aliasing and mode not in _NEAREST_MODES,
    )
    return convert_to_numpy(resize(stack), dtype=np.float32)


def _padding_for(
    shape: tuple[int, int], pixel_spacing: tuple[float, float], output_shape: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric padding giving ``shape`` the physical aspect ratio of ``output_shape``.

    The output pixel size (mm) is the smallest that fits the whole slice; the padded frame is the
    output's field of view in input pixels (a square for square output and isotropic pixels).
    """
    output_pixel_mm = max(n * mm / out for n, mm, out in zip(shape, pixel_spacing, output_shape))
    padding = []
    for n, mm, out in zip(shape, pixel_spacing, output_shape):
        padded = max(n, round(out * output_pixel_mm / mm))
        padding.append(((padded - n) // 2, padded - n - (padded - n) // 2))
    return tuple(padding)  # type: ignore[return-value]


def extract_slices(
    volume: np.ndarray | sitk.Image,
    axis: AxisSpec = "axial",
    selection: SliceSelection | Mapping[str, Any] | None = None,
    head_mask: np.ndarray | None = None,
    neighbours: int = 0,
    output_shape: Sequence[int] = (256, 256),
    pad_value: float | None = None,
    intensity_range: Sequence[float] | None = None,
    out_range: Sequence[float] = (-1.0, 1.0),
    interpolation: str = "bilinear",
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
) -> tuple[list[np.ndarray], list[SliceGeometry]]:
    """Cut, pad, resize and scale slices of a 3D volume.

    Args:
        volume: [z, y, x] array, or a SimpleITK image (its spacing/origin/direction are used).
        axis: 0, 1, 2 or ``"axial"``/``"coronal"``/``"sagittal"`` (resolved with the image's direction).
        selection: which slices (:class:`SliceSelection` or its configuration mapping; default all).
        head_mask: boolean [z, y, x] head mask, for the ``"head_fraction"`` selection.
        neighbours: 2.5D half-width N: each slice gets 2N + 1 channels (neighbours beyond the volume
            repeat the edge slice); 0 gives plain 2D slices.
        output_shape: (rows, columns) of the output slices.
        pad_value: padding value; default ``out_range[0]`` when ``intensity_range`` is given, else 0.
        intensity_range: (low, high) input interval mapped linearly to ``out_range`` with clipping
            (e.g. (-1000, 2000) HU); ``None`` leaves intensities unchanged.
        out_range: output interval of the intensity scaling.
        interpolation: MONAI ``Resize`` mode (``"bilinear"``, ``"bicubic"``, ``"area"``,
            ``"nearest-exact"`` for label maps, ...).
        spacing, origin, direction: geometry of an array ``volume`` (SimpleITK order and conventions).

    Returns:
        ``(slices, geometries)``: float32 arrays of shape ``output_shape`` (2D) or
        ``(2N + 1, *output_shape)`` (2.5D), and one :class:`SliceGeometry` per slice.

    Raises:
        PreprocessingError: a volume that is not 3D or holds NaN/inf; selection errors (see :func:`select_slices`).
        ValueError: invalid parameters.
    """
    source_image = volume if isinstance(volume, sitk.Image) else None
    if source_image is not None:
        spacing, origin, direction = volume.GetSpacing(), volume.GetOrigin(), volume.GetDirection()
        # A view shares the image's buffer: the image must outlive it, so ``source_image`` keeps a
        # reference (rebinding ``volume`` alone let a caller's temporary image be freed under the view).
        volume = sitk.GetArrayViewFromImage(source_image)
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise PreprocessingError(None, f"slice extraction needs a 3D [z, y, x] volume, got shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise PreprocessingError(None, "the volume to slice contains NaN or infinite values")
    if neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}")
    output_shape = tuple(int(n) for n in output_shape)
    if len(output_shape) != 2 or min(output_shape) < 1:
        raise ValueError(f"output_shape must be two positive integers, got {output_shape}")
    array_axis = resolve_axis(axis, direction)
    indices = select_slices(volume.shape, array_axis, selection, head_mask)
    if pad_value is None:
        pad_value = float(out_range[0]) if intensity_range is not None else 0.0

    # Gather centre slices and their neighbours (indices clipped: edge slices are repeated).
    offsets = np.arange(-neighbours, neighbours + 1)
    gather = np.clip(np.asarray(indices)[:, None] + offsets[None, :], 0, volume.shape[array_axis] - 1)
    stack = np.moveaxis(np.take(volume, gather.ravel(), axis=array_axis), array_axis, 0).astype(np.float32)
    if intensity_range is not None:
        stack = rescale_intensity(stack, intensity_range, out_range, clip=True)

    spacing_xyz = tuple(float(s) for s in spacing)
    rows_axis, columns_axis = (a for a in range(3) if a != array_axis)
    pixel_spacing = (spacing_xyz[2 - rows_axis], spacing_xyz[2 - columns_axis])
    original_shape = (int(stack.shape[1]), int(stack.shape[2]))
    padding = _padding_for(original_shape, pixel_spacing, output_shape)
    padded = np.pad(stack, ((0, 0), *padding), mode="constant", constant_values=pad_value)
    resized = _resize_stack(padded, output_shape, interpolation)
    scale = tuple(out / n for out, n in zip(output_shape, padded.shape[1:]))

    shared = dict(
        axis=array_axis,
        plane=plane_name(array_axis, direction),
        neighbours=int(neighbours),
        original_shape=original_shape,
        padding=padding,
        output_shape=output_shape,
        scale=scale,
        volume_shape=tuple(int(n) for n in volume.shape),
        spacing=spacing_xyz,
        origin=tuple(float(o) for o in origin),
        direction=tuple(float(d) for d in direction),
        interpolation=interpolation,
        pad_value=float(pad_value),
        intensity_range=None if intensity_range is None else tuple(float(v) for v in intensity_range),
        out_range=tuple(float(v) for v in out_range),
    )
    channels = resized.reshape(len(indices), len(offsets), *output_shape)
    slices = [channels[i] if neighbours else channels[i, 0] for i in range(len(indices))]
    geometries = [SliceGeometry(index=int(index), **shared) for index in indices]  # type: ignore[arg-type]
    return slices, geometries


def _restore_stack(stack: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Undo resize and padding for an (N, rows, columns) stack sharing one geometry."""
    if tuple(stack.shape[1:]) != tuple(geometry.output_shape):
        raise ValueError(f"slice shape {tuple(stack.shape[1:])} differs from the recorded output shape {geometry.output_shape}")
    # No anti-aliasing: when restoring shrinks, the slice was enlarged from this very grid, so it
    # holds no detail finer than the grid can carry and smoothing would only blur it.
    unresized = _resize_stack(
        stack.astype(np.float32, copy=False), geometry.padded_shape, geometry.interpolation, anti_aliasing=False
    )
    (top, _), (left, _) = geometry.padding
    rows, columns = geometry.original_shape
    return unresized[:, top : top + rows, left : left + columns]


def restore_slice(slice2d: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Map a (translated) slice back onto its original slice grid in the volume.

    Resizes to the padded shape with the recorded interpolation and removes the padding.
    Intensities are left as they are (the output of a translation network lives in the target
    modality's range; see ``preprocessing.windowing.window_to_hu`` for CT).

    Args:
        slice2d: ``output_shape`` array, or ``(C, *output_shape)`` (each channel is restored).
        geometry: the slice's :class:`SliceGeometry`.

    Returns:
        float32 array of shape ``original_shape`` (or ``(C, *original_shape)``).

    Raises:
        ValueError: a slice whose shape does not match ``geometry.output_shape``.
    """
    array = convert_to_numpy(slice2d)
    if array.ndim == 2:
        return _restore_stack(array[None], geometry)[0]
    if array.ndim == 3:
        return _restore_stack(array, geometry)
    raise ValueError(f"a slice must be 2D or (C, H, W), got shape {array.shape}")


def paste_slices(
    slices: Sequence[np.ndarray],
    geometries: Sequence[SliceGeometry],
    volume_shape: Sequence[int] | None = None,
    fill_value: float = 0.0,
    as_image: bool = False,
) -> np.ndarray | sitk.Image:
    """Put restored slices back into a volume.

    Args:
        slices: one slice per geometry, ``output_shape`` or ``(C, *output_shape)``; of a multi-channel
            slice the centre channel (the slice itself in a 2.5D stack) is pasted.
        geometries: their :class:`SliceGeometry` records (all of the same volume).
        volume_shape: [z, y, x] shape of the volume (default: the recorded one).
        fill_value: value of the voxels of slices that were not given.
        as_image: return a SimpleITK image with the recorded spacing, origin and direction.

    Returns:
        float32 [z, y, x] array, or a SimpleITK image.

    Raises:
        ValueError: mismatched lengths, geometries of different volumes or shapes.
    """
    if len(slices) != len(geometries) or not geometries:
        raise ValueError(f"need one geometry per slice and at least one slice, got {len(slices)} slices and {len(geometries)} geometries")
    reference = geometries[0]
    volume_shape = tuple(reference.volume_shape if volume_shape is None else (int(n) for n in volume_shape))
    volume = np.full(volume_shape, fill_value, dtype=np.float32)
    groups: dict[SliceGeometry, list[int]] = {}
    for position, geometry in enumerate(geometries):
        if tuple(geometry.volume_shape) != volume_shape:
            raise ValueError(f"slice {geometry.index} comes from a volume of shape {geometry.volume_shape}, not {volume_shape}")
        # Slices that differ only in their index share the inverse resize: restore them in one batch.
        groups.setdefault(SliceGeometry(**{**asdict(geometry), "index": 0}), []).append(position)
    for group_geometry, positions in groups.items():
        planes = []
        for position in positions:
            array = convert_to_numpy(slices[position])
            planes.append(array[array.shape[0] // 2] if array.ndim == 3 else array)
        restored = _restore_stack(np.stack(planes), group_geometry)
        for plane, position in zip(restored, positions):
            geometry = geometries[position]
            target = [slice(None)] * 3
            target[geometry.axis] = geometry.index
            volume[tuple(target)] = plane
    if not as_image:
        return volume
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(reference.spacing)
    image.SetOrigin(reference.origin)
    image.SetDirection(reference.direction)
    return image


def slice_filename(prefix: str, geometry: SliceGeometry, compress: bool = True) -> str:
    """File name of a saved slice: ``<prefix>_<plane>_<index:04d>.nii[.gz]``."""
    return f"{prefix}_{geometry.plane}_{geometry.index:04d}.nii{'.gz' if compress else ''}"


def slice_index_path(folder: str | os.PathLike, prefix: str) -> Path:
    """Path of the index JSON that :func:`save_slices` writes beside the slices."""
    return Path(folder) / f"{prefix}_slices.json"


def save_slices(
    slices: Sequence[np.ndarray],
    geometries: Sequence[SliceGeometry],
    folder: str | os.PathLike,
    prefix: str,
    compress: bool = True,
    selection: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write slices as NIfTI files and an index JSON with their geometries (all atomically).

    File layout, chosen so that :func:`slice_loader` (MONAI ``LoadImage`` + ``EnsureChannelFirst``)
    reads every slice back as ``(C, rows, columns)``: a 2D slice is a 2D NIfTI ``(rows, columns)``;
    a 2.5D slice is a thin 3D NIfTI ``(rows, columns, 2N + 1)``, which is what it is physically:
    the slab of neighbouring slices. The affine places the slice at its position in the patient
    (:meth:`SliceGeometry.nifti_affine`), so viewers overlay it on the volume.

    Args:
        slices: arrays from :func:`extract_slices` (or translated slices of the same shapes).
        geometries: their :class:`SliceGeometry` records.
        folder: output folder (created if missing).
        prefix: file name prefix (e.g. the subject identifier).
        compress: write ``.nii.gz`` (default) rather than ``.nii``.
        selection: how the slices were chosen (see :func:`selection_record`), recorded in the index
            as ``"selection"``.

    Returns:
        The written slice files in the order of ``slices``, followed by the index JSON
        (:func:`slice_index_path`).

    Raises:
        ValueError: mismatched lengths or a slice whose shape does not match its geometry.
    """
    if len(slices) != len(geometries):
        raise ValueError(f"need one geometry per slice, got {len(slices)} slices and {len(geometries)} geometries")
    folder = Path(folder)
    images, paths = [], []
    for slice_array, geometry in zip(slices, geometries):
        array = convert_to_numpy(slice_array).astype(np.float32, copy=False)
        channels = 2 * geometry.neighbours + 1
        expected = tuple(geometry.output_shape) if geometry.neighbours == 0 else (channels, *geometry.output_shape)
        if array.shape != expected:
            raise ValueError(f"slice {geometry.index}: shape {array.shape} differs from the recorded {expected}")
        data = array if geometry.neighbours == 0 else np.moveaxis(array, 0, -1)
        image = nib.Nifti1Image(np.ascontiguousarray(data), geometry.nifti_affine())
        image.header.set_xyzt_units("mm")
        images.append(image)
        paths.append(folder / slice_filename(prefix, geometry, compress))
    # zlib releases the GIL while compressing, so threads write several files at once.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda job: atomic_write_with(job[1], lambda tmp: nib.save(job[0], tmp)), zip(images, paths)))
    entries = [{"file": path.name, "geometry": geometry.to_dict()} for path, geometry in zip(paths, geometries)]
    index_path = slice_index_path(folder, prefix)
    index = {"prefix": prefix, "slices": entries}
    if selection is not None:
        index["selection"] = dict(selection)
    atomic_write_json(index_path, index)
    return [*paths, index_path]


def selection_record(selection: SliceSelection | Mapping[str, Any] | None,
                     geometries: Sequence[SliceGeometry]) -> dict[str, Any]:
    """What a slice index records of the selection: the rule, and the slices it chose in this volume.

    Args:
        selection: the rule (a :class:`SliceSelection` or its configuration mapping).
        geometries: the chosen slices' records, in index order.

    Returns:
        ``{"rule": {...}, "first": i, "last": j, "count": n, "slices_along_axis": N}``: the rule (its
        mode and the fields that mode uses), the first and last index chosen (both included), how
        many were chosen and how many the volume has along the slice axis.
    """
    indices = [g.index for g in geometries]
    return {"rule": SliceSelection.from_config(selection).to_config(), "first": min(indices) if indices else None,
            "last": max(indices) if indices else None, "count": len(indices),
            "slices_along_axis": int(geometries[0].volume_shape[geometries[0].axis]) if geometries else None}


def read_slice_index(index_path: str | os.PathLike) -> list[tuple[Path, SliceGeometry]]:
    """Read the index written by :func:`save_slices`.

    Returns:
        ``(slice file path, geometry)`` pairs in the saved order.

    Raises:
        InputReadError: a missing or malformed index.
    """
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        return [(index_path.parent / entry["file"], SliceGeometry.from_dict(entry["geometry"])) for entry in index["slices"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputReadError(index_path, f"cannot read the slice index: {error}") from error


def slice_loader(neighbours: int = 0) -> Compose:
    """MONAI transform that loads a saved slice as a ``(C, rows, columns)`` ``MetaTensor``.

    Args:
        neighbours: the 2.5D half-width the slices were extracted with (their channel count is 2N + 1).
    """
    channel_dim = -1 if neighbours else None
    return Compose([LoadImage(reader="NibabelReader", image_only=True, channel_dim=channel_dim), EnsureChannelFirst()])
