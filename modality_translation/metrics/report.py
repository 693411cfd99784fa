"""Evaluation report: per-subject metrics as CSV and their summary statistics as JSON.

Both files are written atomically (:mod:`medgan_common.atomic`), so an interrupted evaluation never
leaves a truncated report under its final name.

The summary gives, per metric, the mean, the sample standard deviation (``ddof=1``, as results are
usually reported; ``null`` for fewer than 2 values), the median and ``n``, over the finite values only.
Non-finite values (an infinite PSNR for an identical pair, a NaN for an undefined metric) are counted
in ``n_non_finite`` instead, so that they neither poison the mean nor disappear silently; they would
not be valid JSON numbers anyway.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medgan_common.atomic import atomic_write_json, atomic_write_text


def _metric_names(rows: Sequence[Mapping[str, Any]], subject_key: str) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key != subject_key:
                names[key] = None
    return list(names)


def summarize_metrics(rows: Sequence[Mapping[str, Any]], subject_key: str = "subject") -> dict[str, dict[str, Any]]:
    """Mean, std, median and counts of every metric over subjects.

    Args:
        rows: one mapping per subject: ``subject_key`` and metric name -> number (a metric may be
            missing or ``None`` for a subject).
        subject_key: the key that names the subject (not summarised).

    Returns:
        Metric name -> ``{"mean", "std", "median", "n", "n_non_finite"}``; statistics are ``None``
        when no finite value exists.

    Raises:
        ValueError: if a metric value is not a number.
    """
    summary: dict[str, dict[str, Any]] = {}
    for name in _metric_names(rows, subject_key):
        values = []
        for row in rows:
            value = row.get(name)
            if value is None:
                continue
            try:
                values.append(float(value))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metric {name!r} of subject {row.get(subject_key)!r} is not a number: {value!r}") from exc
        finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "median": float(np.median(finite)) if finite.size else None,
            "n": int(finite.size),
            "n_non_finite": len(values) - int(finite.size),
        }
    return summary


def write_metrics_report(
    rows: Sequence[Mapping[str, Any]],
    csv_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    subject_key: str = "subject",
) -> dict[str, dict[str, Any]]:
    """Write the per-subject CSV and the summary JSON.

    Args:
        rows: one mapping per subject (see :func:`summarize_metrics`).
        csv_path: CSV with a header ``subject_key, metric...`` and one line per subject, in the given
            order; a missing metric is an empty cell.
        summary_path: JSON of :func:`summarize_metrics`' result.
        subject_key: the key that names the subject.

    Returns:
        The summary written.

    Raises:
        ValueError: if a row has no subject, a subject appears twice, or a value is not a number.
    """
    subjects = [row.get(subject_key) for row in rows]
    if any(subject is None for subject in subjects):
        raise ValueError(f"every row needs a {subject_key!r} entry")
    duplicates = sorted(str(subject) for subject, count in Counter(subjects).items() if count > 1)
    if duplicates:
        raise ValueError(f"subjects listed more than once: {', '.join(duplicates)}")
    summary = summarize_metrics(rows, subject_key)

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[subject_key, *summary], restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_json(summary_path, summary)
    return summary
