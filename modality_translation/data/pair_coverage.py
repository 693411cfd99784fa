"""Training pairs whose target lies outside its own field of view.

A paired target is another scan resampled onto the source's grid (the T2 registered onto its T1,
the CT onto its MR). Where the target scan did not reach (a T2 whose field of view stops above the
neck that the T1 still covers), the resampled target holds background although the source shows
tissue. Kept as pairs, those slices teach the generator to erase tissue: on the demo cohort the
lowest tenth of every head came out as background, the worst error of the T1 -> T2 evaluation.
This module measures, per pair, the fraction of the source's head pixels at which the target holds
data, and leaves out the pairs below a threshold, reporting each subject's count (never silently).

Both images are on the network scale, where the preprocessing sets everything outside the head
mask to the bottom of the range (``-1``) and a CT's window maps air there too; a pixel holds data
when it lies above that floor. Air inside the head (sinuses) counts as no data, a few per cent of a
slice at most, which the threshold allows for.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from modality_translation.data.datalist import DatalistError
from modality_translation.data.matched_slices import read_slice_array

logger = logging.getLogger(__name__)

#: Distance above the range's floor from which a pixel holds data (the floor itself is background).
DATA_TOLERANCE = 1e-3


def target_coverage(source: np.ndarray, target: np.ndarray, floor: float = -1.0) -> float:
    """Fraction of the source's head pixels at which the target holds data.

    Args:
        source: source slice on the network scale (2D, or 2.5D ``(C, H, W)``: the centre channel counts).
        target: the paired target slice, same layout.
        floor: the scale's background value.

    Returns:
        A fraction in [0, 1]; 1 for a source slice without head pixels (nothing to miss).
    """
    source, target = (np.asarray(image, dtype=np.float32) for image in (source, target))
    if source.ndim == 3:
        source = source[source.shape[0] // 2]
    if target.ndim == 3:
        target = target[target.shape[0] // 2]
    head = source > floor + DATA_TOLERANCE
    if not head.any():
        return 1.0
    return float(np.mean(target[head] > floor + DATA_TOLERANCE))


def covered_pairs(records: Sequence[dict[str, Any]], min_coverage: float, keys: tuple[str, str] = ("A", "B"),
                  floor: float = -1.0) -> list[dict[str, Any]]:
    """The pair records whose target covers at least ``min_coverage`` of the source's head.

    Args:
        records: pair records (``keys[0]``: source slice file, ``keys[1]``: target slice file,
            ``"subject"``), as :func:`~modality_translation.data.datalist.pair_slices` gives them.
        min_coverage: smallest fraction of the source's head pixels at which the target must hold data.
        keys: record keys of the source and target files.
        floor: background value of the network scale.

    Returns:
        The kept records, in their order. Each subject with pairs left out is logged with its count.

    Raises:
        ValueError: a threshold outside [0, 1].
        DatalistError: no pair left.
        InputReadError: an unreadable slice.
    """
    if not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be within [0, 1], got {min_coverage}")
    kept, left_out, total = [], Counter(), Counter()
    for record in records:
        subject = record.get("subject")
        total[subject] += 1
        coverage = target_coverage(read_slice_array(record[keys[0]]), read_slice_array(record[keys[1]]), floor)
        if coverage >= min_coverage:
            kept.append(record)
        else:
            left_out[subject] += 1
    for subject, count in left_out.items():
        logger.warning("subject %r: %d of %d pairs left out of training, their target holds data on less than "
                       "%.0f %% of the source's head (outside the target scan's field of view)",
                       subject, count, total[subject], 100 * min_coverage)
    if not kept:
        raise DatalistError(None, f"no pair has a target covering {100 * min_coverage:.0f} % of its source's head "
                                  f"({len(records)} pairs checked)")
    return kept
