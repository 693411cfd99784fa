"""Validation pairs whose target is a volume cut exactly like the source's training slices.

A CycleGAN is validated by translating source slices and comparing them with the target modality
of the *same* anatomy. The preprocessing writes slices only of the volumes it trains on, but the
datalist also holds volumes on the same grids that are paired with them: the subject's T2 registered
onto its own T1 (``t2_in_t1``), and, for the demo cohort, the ground truth of every modality in
every registered space (``truth_ct_in_t2``, ``truth_t2_in_t1``, ...). :func:`matched_slice_dataset`
cuts such a target volume at the recorded geometry of every source slice (same index, padding and
resizing: ``preprocessing.slices.extract_slices``, the function that made the source slices), after
bringing it to the network scale the way the preprocessing did (``IntensityMapping``: the CT window
of the cohort for Hounsfield units, the cohort's MR normalisation inside a head mask for MR).

The geometry comes from the ``<source>_slice_index`` file that the cohort runner writes beside the
slices (``preprocessing.slices.save_slices``); the target must lie on the grid recorded there,
otherwise the pairs would not show the same anatomy and the error names both files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import Dataset
from monai.transforms import Resized

from medgan_common.dataset_keys import SUBJECT, slice_index_key, slices_key
from medgan_common.errors import GeometryError, InputReadError
from modality_translation.data.datalist import DatalistError, check_modality_name, load_translation_datalist, read_datalist
from modality_translation.inference.intensity import IntensityMapping
from preprocessing.slices import SliceGeometry, extract_slices, read_slice_index

# Geometry written by the preprocessing (float64 JSON) and read back from a NIfTI header (float32
# fields) differ by rounding only.
_GRID_TOLERANCE_MM = 1e-3


def _listed_path(base: Path, value: Any, subject: str, key: str, datalist: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise DatalistError(datalist, f"subject {subject!r} has no {key!r} file")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _read_image(path: Path, what: str) -> sitk.Image:
    if not path.is_file():
        raise InputReadError(path, f"{what} does not exist")
    try:
        return sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as error:  # SimpleITK reports every read failure as RuntimeError
        raise InputReadError(path, f"cannot read the {what}: {error}") from error


def _grid_difference(shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float],
                     direction: Sequence[float], recorded: SliceGeometry) -> str | None:
    """How a volume grid differs from the one a slice was cut from (``None``: the same grid)."""
    if tuple(shape) != tuple(recorded.volume_shape):
        return f"volume shape {tuple(shape)} differs from the shape {tuple(recorded.volume_shape)}"
    for name, value, expected in (
        ("spacing", spacing, recorded.spacing),
        ("origin", origin, recorded.origin),
        ("direction", direction, recorded.direction),
    ):
        if not np.allclose(value, expected, atol=_GRID_TOLERANCE_MM):
            return f"volume {name} {np.round(value, 4).tolist()} differs from {np.round(expected, 4).tolist()}"
    return None


def _check_grid(image: sitk.Image, path: Path, geometry: SliceGeometry, index_path: Path) -> None:
    """Raise unless ``image`` lies on the grid the slices of ``index_path`` were cut from."""
    difference = _grid_difference(tuple(reversed(image.GetSize())), image.GetSpacing(), image.GetOrigin(),
                                  image.GetDirection(), geometry)
    if difference is not None:
        raise GeometryError(path, f"{difference} recorded in {index_path}: the target must lie on the source's grid")


def check_paired_slices(source_index: str | os.PathLike, target_index: str | os.PathLike,
                        source_files: Sequence[str], target_files: Sequence[str], subject: str) -> None:
    """Raise unless each pair of slices was cut at the same place of volumes on the same grid.

    A pix2pix pair (the T1 slice and the slice of the T2 registered onto that T1) shows the same
    anatomy only if both volumes share one grid and both slices have the same index, neighbours and
    size; the slice indexes the preprocessing wrote beside the slices record all of that.

    Args:
        source_index: ``<source>_slice_index`` file of the subject.
        target_index: ``<target>_slice_index`` file of the subject.
        source_files: the subject's source slices, in pair order.
        target_files: the paired target slices.
        subject: the subject, for the message.

    Raises:
        GeometryError: naming the target index, the slice and the difference.
        DatalistError: a slice missing from its index.
        InputReadError: an unreadable index.
    """
    source_index, target_index = Path(source_index), Path(target_index)
    sources = recorded_geometries(source_index, source_files, subject)
    targets = recorded_geometries(target_index, target_files, subject)
    for file, source, target in zip(target_files, sources, targets):
        difference = _grid_difference(target.volume_shape, target.spacing, target.origin, target.direction, source)
        if difference is None:
            for name in ("axis", "index", "neighbours", "output_shape"):
                if getattr(source, name) != getattr(target, name):
                    difference = f"slice {name} {getattr(target, name)} differs from {getattr(source, name)}"
                    break
        if difference is not None:
            raise GeometryError(
                target_index, f"slice {Path(file).name} of subject {subject!r}: {difference} of its paired source "
                f"slice (recorded in {source_index}); a pair must be cut at the same place of one grid"
            )


def matched_target_slices(
    target: np.ndarray | sitk.Image, geometries: Sequence[SliceGeometry], pad_value: float = -1.0
) -> list[np.ndarray]:
    """Cut a volume already on the network scale at the recorded geometries of other slices.

    Args:
        target: [z, y, x] volume on the grid the geometries were recorded on (a SimpleITK image or
            an array), intensities already on the network scale.
        geometries: the source slices' records (all cut from one volume, so they share every field
            but the index).
        pad_value: value of the padding (the network scale's background).

    Returns:
        One ``output_shape`` float32 array (or ``(2N + 1, *output_shape)`` for 2.5D) per geometry,
        in the order of ``geometries``.

    Raises:
        ValueError: no geometries, or geometries of different volumes or settings.
    """
    if not geometries:
        raise ValueError("no slice geometries to cut the target at")
    first = geometries[0]
    shared = {name: value for name, value in first.to_dict().items() if name != "index"}
    for geometry in geometries[1:]:
        if {name: value for name, value in geometry.to_dict().items() if name != "index"} != shared:
            raise ValueError("the slice geometries were recorded for different volumes or settings")
    array = sitk.GetArrayFromImage(target) if isinstance(target, sitk.Image) else np.asarray(target)
    slices, _ = extract_slices(
        array.astype(np.float32, copy=False),
        axis=first.axis,
        selection={"mode": "indices", "indices": [g.index for g in geometries]},
        neighbours=first.neighbours,
        output_shape=first.output_shape,
        pad_value=pad_value,
        # The preprocessing clips the slices to the network range; the target gets the same.
        intensity_range=first.out_range,
        out_range=first.out_range,
        interpolation=first.interpolation,
        spacing=first.spacing,
        origin=first.origin,
        direction=first.direction,
    )
    # extract_slices returns the selected indices in sorted order; give them back in the caller's order.
    by_index = dict(zip(sorted({g.index for g in geometries}), slices))
    return [by_index[g.index] for g in geometries]


def recorded_geometries(index_path: Path, files: Sequence[str], subject: str) -> list[SliceGeometry]:
    """The geometries a slice index records for ``files`` (by file name), in their order.

    Raises:
        DatalistError: a file the index does not list.
        InputReadError: an unreadable index.
    """
    recorded = {path.name: geometry for path, geometry in read_slice_index(index_path)}
    geometries = []
    for file in files:
        name = Path(file).name
        if name not in recorded:
            raise DatalistError(index_path, f"slice {name} of subject {subject!r} is not in the slice index")
        geometries.append(recorded[name])
    return geometries


def read_slice_array(path: str) -> np.ndarray:
    """A saved slice as ``(C, rows, columns)`` (the layout of ``preprocessing.slices.save_slices``)."""
    try:
        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    except Exception as error:  # nibabel raises several types for unreadable files
        raise InputReadError(path, f"cannot read the slice: {error}") from error
    return data[None] if data.ndim == 2 else np.moveaxis(data, -1, 0)


def matched_slice_dataset(
    datalist: str | os.PathLike,
    source: str,
    target_key: str,
    target_modality: str,
    split: str = "validation",
    mask_key: str | None = None,
    target_intensity: Mapping[str, Any] | None = None,
    crop_size: Sequence[int] | None = None,
    source_key: str = "A",
    output_target_key: str = "B",
    mask_output_key: str | None = None,
) -> Dataset:
    """Pairs ``{A: source slice, B: target volume cut at that slice}`` of one datalist split.

    Args:
        datalist: the cohort's ``dataset.json``.
        source: the slices' key stem: ``"<source>_slices"`` and ``"<source>_slice_index"`` must be in
            every item (``"t1"``, ``"ct"``, ``"t2_in_t1"``...).
        target_key: item key of the target volume on the source's grid (``"truth_t2_in_t1"`` for
            the demo cohort, ``"t2_in_t1"`` for a registered pair).
        target_modality: modality of the target (``"ct"``, ``"t2"``...): how it is brought to the
            network scale, and the name its file must not contradict.
        split: datalist split.
        mask_key: item key of the head mask on the source's grid, used to normalise an MR target and
            returned under ``mask_output_key`` (``None``: computed from the target in its own units,
            ``IntensityMapping.compute_head_mask``).
        target_intensity: keyword arguments of ``IntensityMapping`` overriding what the datalist
            records (its ``ct_window`` and ``normalisation``); ``{"on_network_scale": true}`` for a
            target the preprocessing already normalised (``t2_in_t1``, ``t1``, ``ct``).
        crop_size: (rows, columns) of the returned images; ``None`` keeps the recorded slice size.
        source_key: output key of the source slices.
        output_target_key: output key of the target slices.
        mask_output_key: also return the head mask cut like the slices (1 inside, 0 outside) under
            this key, so that metrics can leave out the background (e.g. ``MaskIntensityd``):
            whole-slice SSIM is dominated by how exactly the air matches.

    Returns:
        A MONAI ``Dataset`` of ``{source_key: (C, H, W), output_target_key: (1, H, W)}`` float32
        tensors (and ``mask_output_key: (1, H, W)``), in datalist order (subjects, then slices).

    Raises:
        DatalistError: a missing split, key, slice or index entry (the file and subject named).
        ModalityMismatchError: a target file named as another modality.
        InputReadError: an unreadable slice, index or volume.
        GeometryError: a target (or mask) that does not lie on the source slices' grid.
    """
    path = Path(datalist).resolve()
    content = read_datalist(path)
    mapping = IntensityMapping.resolve(target_modality, dict(target_intensity or {}), content)
    items = load_translation_datalist(path, split, modalities=(), check_files=False)
    base = path.parent
    records = []
    for item, listed in zip(items, content[split]):
        subject = item[SUBJECT]
        files = item.get(slices_key(source))
        if not isinstance(files, list) or not files:
            raise DatalistError(path, f"subject {subject!r} in split {split!r} has no {slices_key(source)!r} slice list")
        index_path = _listed_path(base, item.get(slice_index_key(source)), subject, slice_index_key(source), path)
        geometries = recorded_geometries(index_path, files, subject)
        target_path = _listed_path(base, item.get(target_key), subject, target_key, path)
        # The name as listed (relative to the cohort): folders above the cohort do not count.
        check_modality_name(target_path, target_modality, name=str(listed[target_key]))
        target = _read_image(target_path, f"{target_key} volume of subject {subject!r}")
        _check_grid(target, target_path, geometries[0], index_path)
        target_array = sitk.GetArrayFromImage(target)
        mask = None
        if mask_key is not None:
            mask_path = _listed_path(base, item.get(mask_key), subject, mask_key, path)
            mask_image = _read_image(mask_path, f"{mask_key} mask of subject {subject!r}")
            _check_grid(mask_image, mask_path, geometries[0], index_path)
            mask = sitk.GetArrayFromImage(mask_image) > 0
        elif mask_output_key is not None:
            mask = mapping.compute_head_mask(target_array)
        on_scale = mapping.to_network(target_array, mask)
        targets = matched_target_slices(on_scale, geometries, pad_value=mapping.background_value)
        masks = [None] * len(targets)
        if mask_output_key is not None:
            # Nearest-neighbour resizing keeps the mask binary; the padding is outside the head.
            mask_geometries = [replace(g, interpolation="nearest-exact") for g in geometries]
            masks = [m > 0.5 for m in matched_target_slices(mask.astype(np.float32), mask_geometries, pad_value=0.0)]
        for file, target_slice, mask_slice in zip(files, targets, masks):
            source_slice = read_slice_array(file)
            if source_slice.shape[1:] != target_slice.shape[-2:]:
                raise DatalistError(
                    file, f"slice shape {source_slice.shape[1:]} differs from its recorded {target_slice.shape[-2:]}"
                )
            # The target is compared with the generator's one-channel output: the centre channel.
            centre = target_slice if target_slice.ndim == 2 else target_slice[target_slice.shape[0] // 2]
            record = {source_key: torch.from_numpy(source_slice), output_target_key: torch.from_numpy(centre[None].copy())}
            if mask_slice is not None:
                centre_mask = mask_slice if mask_slice.ndim == 2 else mask_slice[mask_slice.shape[0] // 2]
                record[mask_output_key] = torch.from_numpy(centre_mask[None].astype(np.float32))
            records.append(record)
    transform = None
    if crop_size is not None:
        keys = (source_key, output_target_key) + ((mask_output_key,) if mask_output_key is not None else ())
        modes = ("bilinear", "bilinear", "nearest")[: len(keys)]
        transform = Resized(keys, spatial_size=tuple(int(n) for n in crop_size), mode=modes)
    return Dataset(records, transform=transform)
