"""Volume selection by slice count (``input.keep_slice_counts``): which subjects a cohort run leaves out.

A study may keep only volumes acquired with one protocol, recognised by their slice count (the
pix2pix T1 -> T2 study kept IXI's T1 volumes of 150 slices and T2 volumes of 130, the most common
counts). The rule is applied once every subject is read (the counts of a DICOM series are known only
then, and ``most_common`` needs the whole cohort's); a subject with a volume that does not match is
not processed, and the report lists it as excluded with the reason. Nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from preprocessing.config import MOST_COMMON
from preprocessing.runner.common import STATUS_EXCLUDED, STATUS_OK

__all__ = ["exclude_by_slice_count"]


def _kept_counts(rule: list[int] | str, counts: Counter) -> list[int]:
    """The slice counts a rule keeps; ``most_common``: the count of most volumes, ties to the larger count."""
    if rule != MOST_COMMON:
        return list(rule)
    if not counts:
        return []
    return [max(counts, key=lambda count: (counts[count], count))]


def _words(counts: list[int]) -> str:
    return " or ".join(str(c) for c in counts)


def exclude_by_slice_count(config: Mapping[str, Any], reads: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Mark the subjects whose volumes the ``input.keep_slice_counts`` rules do not keep as excluded.

    Args:
        config: the run configuration.
        reads: ``{subject: read result}`` of phase 1 (each ``metadata[modality]["slices"]``); the
            results of excluded subjects are changed in place to status ``excluded`` with the reason,
            e.g. ``"excluded: t1 has 146 slices, rule keeps 150"``.

    Returns:
        Per modality with a rule: ``{"rule": [counts] or "most_common", "keeps": [counts],
        "slice_counts": {count: volumes}}`` over the subjects read successfully, for the report.
    """
    rules = config["input"]["keep_slice_counts"]
    read = {subject: result for subject, result in reads.items() if result["status"] == STATUS_OK}
    summary: dict[str, dict[str, Any]] = {}
    reasons: dict[str, list[str]] = {}
    for modality, rule in sorted(rules.items()):
        found = {s: r["metadata"][modality]["slices"] for s, r in read.items() if modality in r["metadata"]}
        counts = Counter(found.values())
        keeps = _kept_counts(rule, counts)
        summary[modality] = {"rule": rule, "keeps": keeps,
                             "slice_counts": {str(c): counts[c] for c in sorted(counts)}}
        which = " (the most common)" if rule == MOST_COMMON else ""
        for subject, count in sorted(found.items()):
            if count not in keeps:
                reasons.setdefault(subject, []).append(
                    f"{modality} has {count} slices, rule keeps {_words(keeps)}{which}")
    for subject, why in reasons.items():
        reads[subject].update(status=STATUS_EXCLUDED, reason="excluded: " + "; ".join(why))
    return summary
