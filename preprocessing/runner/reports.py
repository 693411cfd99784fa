"""The run's reports: the MONAI datalist split by subject, ``report.json`` and ``report.csv``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medgan_common import dataset_keys as keys
from medgan_common.atomic import atomic_write_json, atomic_write_text
from preprocessing.provenance import input_record, write_sidecar
from preprocessing.runner.common import STATUS_EXCLUDED, STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, STEPS
from preprocessing.runner.discovery import CohortInputs

__all__ = ["split_subjects", "step_totals", "write_cohort_outputs"]


def split_subjects(subjects: list[str], fractions: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Assign subjects to training / validation / test.

    The subjects are sorted, shuffled with ``seed`` and cut by ``fractions`` (largest remainder
    rounding). With three subjects or more, every split of positive fraction gets at least one
    subject (taken from the largest split).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each list sorted.
    """
    names = keys.SPLITS
    order = sorted(subjects)
    np.random.default_rng(seed).shuffle(order)
    n = len(order)
    exact = [fractions[k] * n for k in names]
    counts = [int(np.floor(v)) for v in exact]
    for index in sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))[: n - sum(counts)]:
        counts[index] += 1
    if n >= 3:
        for index in range(3):
            if fractions[names[index]] > 0 and counts[index] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[index] = 1
    splits, start = {}, 0
    for name, count in zip(names, counts):
        splits[name] = sorted(order[start : start + count])
        start += count
    return splits


def step_totals(seconds: Mapping[str, float]) -> dict[str, float]:
    """Seconds per step (summed over modalities) and in total, from ``step.modality`` keys.

    ``read`` is the whole of phase 1 (its ``read.<modality>`` entries are parts of it); ``total``
    adds phase 1 and phase 2.
    """
    totals = {step: 0.0 for step in STEPS}
    for key, value in seconds.items():
        step, _, part = key.partition(".")
        if step in totals and step != "read":
            totals[step] += value
    totals["read"] = seconds.get("read", 0.0)
    totals["total"] = seconds.get("read", 0.0) + seconds.get("total", 0.0)
    return {k: round(v, 3) for k, v in totals.items()}


def write_cohort_outputs(config: dict, config_hash: str, inputs: CohortInputs, references: dict, results: dict,
                         output: Path, workers: int, threads: int, seconds: float, phases: dict[str, float],
                         selection: dict | None = None) -> dict:
    """Write ``dataset.json``, ``report.json``, ``report.csv`` (and the pseudonym map if configured).

    Args:
        config: the run configuration (pseudonymised).
        config_hash: its SHA-256.
        inputs: what discovery found.
        references: ``{modality: record}`` of the reference phase.
        results: ``{subject: result}`` of every subject (status, reason, entry, metrics, seconds, inputs).
        output: the output folder.
        workers: parallel workers of the run.
        threads: ANTs threads per worker.
        seconds: the run's wall time.
        phases: wall seconds per phase.
        selection: the slice-count rules as applied (:func:`~preprocessing.runner.selection.exclude_by_slice_count`).

    Returns:
        The report.
    """
    from preprocessing.windowing import get_window

    subjects = [s.subject for s in inputs.subjects]
    usable = [s for s in subjects if results[s]["status"] in (STATUS_OK, STATUS_SKIPPED)]
    splits = split_subjects(usable, config["split"], int(config["seed"]))
    modalities = sorted({m for s in inputs.subjects for m in s.volumes}, key=lambda m: (m != "ct", m))
    slice_sizes = {}
    for subject in usable:
        entry = results[subject]["entry"]
        for key in entry:
            owner = keys.slice_index_owner(key)
            if owner is not None and owner not in slice_sizes:
                index = json.loads((output / entry[key]).read_text())
                if index["slices"]:
                    slice_sizes[owner] = index["slices"][0]["geometry"]["output_shape"]
    pairing, ct_pairing = config["pairing"], config["ct_pairing"]
    pairs = ({keys.pair_key(m, pairing["fixed"]): [m, pairing["fixed"]] for m in pairing["moving"]}
             if pairing["enabled"] else {})
    if ct_pairing["enabled"] and "ct" in modalities:
        pairs.update({keys.pair_key("ct", m): ["ct", m] for m in ct_pairing["fixed"] if m in modalities})
    datalist = {
        keys.NAME: config["name"],
        keys.DESCRIPTION: config["description"] or f"preprocessed with the '{config['name']}' configuration",
        keys.CONFIG: config["name"],
        keys.CONFIG_SHA256: config_hash,
        keys.MODALITIES: modalities,
        keys.PAIRS: pairs,
        keys.CT_WINDOW: {**get_window(config["ct"]["window"]).to_dict(), "out_range": config["ct"]["out_range"],
                         "volumes": "ct: windowed, ct_hu: Hounsfield units"} if "ct" in modalities else None,
        keys.NORMALISATION: config["mr"]["normalization"],
        keys.SLICE_AXIS: config["slices"]["axis"],
        keys.SLICE_SIZE: slice_sizes,
        keys.REFERENCES: {m: {k: v for k, v in r.items() if k in keys.REFERENCE_FIELDS} for m, r in references.items()},
        **{count: len(splits[name]) for name, count in keys.SPLIT_COUNTS.items()},
        **{name: [results[s]["entry"] for s in members] for name, members in splits.items()},
    }
    dataset_path = output / keys.DATALIST_FILE
    atomic_write_json(dataset_path, datalist)
    markers = [input_record(output / "subjects" / s / f"{s}_subject.json", f"subjects/{s}/{s}_subject.json",
                            "subject record") for s in usable]
    write_sidecar(dataset_path, "datalist", markers, {"config": config, "split": config["split"]})

    rows = []
    for subject in subjects:
        result = results[subject]
        seconds_by_key = result.get("seconds", {})
        rows.append({
            "subject": subject,
            "status": result["status"],
            "reason": result.get("reason", ""),
            "split": next((name for name, members in splits.items() if subject in members), ""),
            "seconds": step_totals(seconds_by_key),
            "seconds_detail": {k: round(v, 3) for k, v in sorted(seconds_by_key.items())},
            "registration": result.get("metrics", {}).get("registration", {}),
            "inputs": result.get("inputs", {}),
        })
    report = {
        "config": config["name"],
        "config_sha256": config_hash,
        "layout": inputs.layout,
        "workers": workers,
        "ants_threads_per_worker": threads,
        "seconds": round(seconds, 3),
        "phase_seconds": phases,
        "counts": {status: sum(r["status"] == status for r in rows)
                   for status in (STATUS_OK, STATUS_SKIPPED, STATUS_FAILED, STATUS_EXCLUDED)},
        "unassigned_inputs": inputs.unassigned,
        "volume_selection": selection or {},
        "references": datalist["references"],
        "subjects": rows,
    }
    atomic_write_json(output / "report.json", report)
    write_sidecar(output / "report.json", "report", [], {"config": config["name"], "config_sha256": config_hash})
    buffer = io.StringIO()
    columns = ["subject", "status", "reason", "split", *(f"seconds_{s}" for s in (*STEPS, "total"))]
    table = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    table.writeheader()
    for row in rows:
        table.writerow({"subject": row["subject"], "status": row["status"], "reason": row["reason"], "split": row["split"],
                        **{f"seconds_{k}": v for k, v in row["seconds"].items()}})
    atomic_write_text(output / "report.csv", buffer.getvalue())
    write_sidecar(output / "report.csv", "report", [], {"config": config["name"], "config_sha256": config_hash})
    if config["write_pseudonym_map"]:
        atomic_write_json(output / "pseudonym_map.json", {s.source: s.subject for s in inputs.subjects})
    return report
