"""Level-matched unpaired sampling: each slice of one domain meets slices of the other domain cut at
the same height of the head, from other subjects.

The reference CycleGAN draws the domain-B slice of every sample uniformly from all B slices. On
axial head slices this pits a slice through the orbits against one through the vertex: the
discriminator then rewards a generator that changes the anatomy (adds a skull base, removes the
ventricles) as much as one that changes the contrast, and the cycle loss alone has to keep the
anatomy. When both domains lie in one common space (the preprocessing's ``common_space``: every
subject's CT and MR registered onto references that are themselves co-registered), a slice's
position along the slice axis says which part of the head it cuts, and drawing B among the slices
within a few millimetres of A's level gives the discriminator the same anatomy level to judge in
both domains. The draw stays unpaired: only slices of *other* subjects are candidates, so a subject
that has both modalities is never paired with itself, as in a cohort of different patients.

The levels come from the slice indexes the preprocessing writes beside the slices
(``<modality>_slice_index``: the volume's geometry and each slice's index), in millimetres along
the slice normal. Levels from volumes that are not in one common space are not comparable; the
bundles turn the option on only for such cohorts (off by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medgan_common.dataset_keys import SUBJECT, slice_index_key, slices_key
from medgan_common.errors import GeometryError
from modality_translation.data.datalist import DatalistError
from modality_translation.data.matched_slices import recorded_geometries
from preprocessing.slices import SliceGeometry


def slice_level_mm(geometry: SliceGeometry) -> tuple[float, np.ndarray]:
    """Height of a slice along its volume's slice normal, and that normal.

    Args:
        geometry: the slice's recorded geometry.

    Returns:
        ``(level in mm, unit normal in LPS)``: the normal is the direction of the volume's slice axis
        (array axis ``geometry.axis`` of ``[z, y, x]``, SimpleITK dimension ``2 - axis``), the level
        the projection of the slice's first voxel onto it.
    """
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    dimension = 2 - geometry.axis
    normal = direction[:, dimension]
    voxel = np.zeros(3)
    voxel[dimension] = geometry.index
    point = np.asarray(geometry.origin, dtype=np.float64) + direction @ (voxel * np.asarray(geometry.spacing))
    return float(point @ normal), normal


def slice_levels(items: Sequence[dict[str, Any]], modality: str, base: str | os.PathLike | None = None) -> np.ndarray:
    """Levels (mm) of every slice of ``modality`` over ``items``, in the order of ``flatten_slices``.

    Args:
        items: datalist items holding ``<modality>_slices`` and ``<modality>_slice_index``.
        modality: the modality (or pair key) whose slices are measured.
        base: folder that relative slice-index paths are relative to (the datalist's folder).

    Returns:
        A float array with one level per slice.

    Raises:
        DatalistError: an item without a slice index, or a slice that its index does not list.
        GeometryError: slices of the modality cut along different directions (their levels would
            not be comparable).
        InputReadError: an unreadable slice index.
    """
    levels: list[float] = []
    reference_normal: np.ndarray | None = None
    for item in items:
        index_key = slice_index_key(modality)
        if not isinstance(item.get(index_key), str):
            raise DatalistError(base, f"subject {item.get(SUBJECT)!r} has no {index_key!r}: level-matched "
                                      "sampling needs the slice indexes the preprocessing writes")
        index_path = Path(item[index_key])
        if base is not None and not index_path.is_absolute():
            index_path = Path(base) / index_path
        for geometry in recorded_geometries(index_path, item[slices_key(modality)], item.get(SUBJECT)):
            level, normal = slice_level_mm(geometry)
            if reference_normal is None:
                reference_normal = normal
            elif abs(float(normal @ reference_normal)) < 0.999:
                raise GeometryError(index_path, f"subject {item.get(SUBJECT)!r} is sliced along {normal.round(3).tolist()}, "
                                                f"another subject along {reference_normal.round(3).tolist()}: "
                                                "slice levels are comparable only in one common space")
            levels.append(level * float(np.sign(normal @ reference_normal)))
    return np.asarray(levels, dtype=np.float64)


def level_matched_candidates(
    levels_a: np.ndarray, subjects_a: Sequence[Any], levels_b: np.ndarray, subjects_b: Sequence[Any],
    window_mm: float,
) -> list[np.ndarray]:
    """For every A slice, the B slices of other subjects whose level is within ``window_mm`` of it.

    Where no B slice of another subject lies within the window (an A slice beyond every other
    subject's head), the candidates are the B slices of other subjects at the nearest level found,
    so that every A slice still has a partner.

    Args:
        levels_a: level (mm) of each A slice.
        subjects_a: subject of each A slice.
        levels_b: level (mm) of each B slice.
        subjects_b: subject of each B slice.
        window_mm: largest level difference of a candidate (mm, >= 0).

    Returns:
        One sorted array of B indices per A slice, never empty.

    Raises:
        ValueError: a negative window, lengths that differ, or B slices of no subject other than
            one A slice's own.
    """
    if window_mm < 0:
        raise ValueError(f"the level window must be >= 0 mm, got {window_mm}")
    levels_a, levels_b = np.asarray(levels_a, dtype=np.float64), np.asarray(levels_b, dtype=np.float64)
    if len(levels_a) != len(subjects_a) or len(levels_b) != len(subjects_b):
        raise ValueError("every slice needs one level and one subject")
    subjects_b = np.asarray([str(s) for s in subjects_b])
    candidates = []
    for level, subject in zip(levels_a, subjects_a):
        others = np.flatnonzero(subjects_b != str(subject))
        if others.size == 0:
            raise ValueError(f"domain B has no slice of a subject other than {subject!r}: an unpaired draw is impossible")
        distance = np.abs(levels_b[others] - level)
        within = others[distance <= window_mm]
        # Rounding of the recorded geometry: levels a few micrometres apart are the same level.
        candidates.append(within if within.size else others[distance <= distance.min() + 1e-6])
    return candidates
