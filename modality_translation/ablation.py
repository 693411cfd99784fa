"""A bundle's ablation, end to end: train, translate and evaluate every row's configuration, then tabulate.

A bundle declares its ablation as overlay files in ``configs/ablation/``: each is merged over the
bundle's ``train.json``, ``inference.json`` and ``evaluate.json`` (``--config_file "['...', '<overlay>']"``)
and names its row::

    {"ablation": {"row": 2, "name": "spectral_norm", "description": "baseline + spectral normalisation ..."},
     "spectral_norm": ["encoder", "generator", "discriminator"], ...}

For every row (in ``row`` order) :func:`run_ablation` runs, as a user would, ``python -m monai.bundle run
training``, ``run inference`` and ``run evaluate`` with the overlay merged, each row in its own
checkpoint and output folders, and then writes the table of the evaluation's figures per translation
direction: ``ssim_masked`` (SSIM inside the head) and ``psnr_db``, mean and sample standard deviation
over the held-out subjects, as Markdown (``ablation.md``) and CSV (``ablation.csv``). A killed run
continues where it stopped when started again: a training resumes from its last checkpoint (a
finished one returns at once), inference and evaluation are repeated.

    python -m modality_translation.ablation bundles/unit_t1_t2 [--rows NAME ...] [--work-dir DIR]
        [--table-dir DIR] [--set KEY=VALUE ...] [--train-set KEY=VALUE ...] [--jobs N] [--tables-only]

``--set`` overrides go to all three stages (e.g. ``dataset_dir=...``, ``image_size=64``), ``--train-set``
overrides to the training only (e.g. ``train#trainer#max_epochs=75``): a MONAI config refuses an
override of a key it does not have.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgan_common.atomic import atomic_write_text
from medgan_common.errors import PreprocessingError

#: The bundle's config of each stage, and the order the stages run in.
STAGES = {"training": "train.json", "inference": "inference.json", "evaluate": "evaluate.json"}
#: Folder of the overlays in a bundle.
ABLATION_FOLDER = Path("configs") / "ablation"
#: The wall time of a row's training stages, summed over its starts (a resumed training adds its
#: remaining part; a finished one, started again, the few seconds it takes to return).
TRAINING_TIME_FILE = "training_time.json"
TRAINING_TIME_KEY = "training"
#: Per row and validated epoch, the validation figures of its training (from its TensorBoard events).
VALIDATION_FILE = "ablation_validation.csv"
#: Overlay keys that place a row's outputs, not part of its configuration.
_PLACEMENT_KEYS = ("ablation", "ckpt_dir", "output_dir")
#: Summary figures of the table: (key in metrics_summary.json, column title); a direction shows those its
#: evaluation gives (the MAE in HU and that of bone for a synthetic CT).
FIGURES = (("ssim_masked", "SSIM (head)"), ("psnr_db", "PSNR (dB)"), ("mae_hu", "MAE (HU)"),
           ("mae_hu_bone", "bone MAE (HU)"))


class AblationError(PreprocessingError):
    """An ablation that cannot run or whose stage failed (a ``ValueError`` naming the file and the problem)."""


@dataclass(frozen=True)
class AblationRow:
    """One row of an ablation: an overlay file and what it declares.

    Attributes:
        row: position in the table.
        name: the row's name (unique; also its folder name).
        description: what the row changes.
        overlay: the overlay file.
        settings: the overlay's configuration keys (without its placement keys), for the table.
    """

    row: int
    name: str
    description: str
    overlay: Path
    settings: dict[str, Any] = field(default_factory=dict)


def read_rows(bundle: str | os.PathLike, names: Sequence[str] | None = None) -> list[AblationRow]:
    """The rows of a bundle's ablation, in ``row`` order, or the ``names`` asked for, in that order.

    Raises:
        AblationError: no ``configs/ablation`` folder or overlay in it, an overlay that is not JSON or
            lacks ``ablation.row`` / ``ablation.name``, two rows of one name, or an unknown name asked
            for (naming the rows there are).
    """
    folder = Path(bundle) / ABLATION_FOLDER
    overlays = sorted(folder.glob("*.json"))
    if not overlays:
        raise AblationError(folder, "holds no ablation overlay (*.json)")
    rows = []
    for path in overlays:
        try:
            content = json.loads(path.read_text())
            declared = content["ablation"]
            row = AblationRow(int(declared["row"]), str(declared["name"]), str(declared.get("description", "")), path,
                              {key: value for key, value in content.items() if key not in _PLACEMENT_KEYS})
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AblationError(path, f"is not an ablation overlay with 'ablation': {{'row': N, 'name': ...}} ({error!r})") from None
        rows.append(row)
    rows.sort(key=lambda row: (row.row, row.name))
    by_name = {}
    for row in rows:
        if row.name in by_name:
            raise AblationError(row.overlay, f"row name {row.name!r} is also the name of {by_name[row.name].overlay}")
        by_name[row.name] = row
    if names is None:
        return rows
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise AblationError(folder, f"has no row {', '.join(map(repr, unknown))}; its rows are {list(by_name)}")
    return [by_name[name] for name in names]


def parse_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """``["a#b=1", ...]`` -> ``{"a#b": "1"}``: config overrides, passed to ``monai.bundle`` as written.

    Raises:
        ValueError: for an entry without ``=`` or with an empty key.
    """
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"an override is KEY=VALUE (e.g. train#trainer#max_epochs=75), got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def row_folders(row: AblationRow, bundle: Path, work_dir: Path | None) -> tuple[Path, Path]:
    """``(checkpoint folder, output folder)`` of a row: ``<work_dir>/<name>/{models,eval}``, or without a work
    folder the bundle's ``models/ablation/<name>`` and ``eval/ablation/<name>`` (those the overlays name)."""
    if work_dir is not None:
        return work_dir / row.name / "models", work_dir / row.name / "eval"
    return bundle / "models" / "ablation" / row.name, bundle / "eval" / "ablation" / row.name


def stage_overlay(bundle: Path, stage: str, row: AblationRow, folder: Path) -> Path:
    """The overlay file of a row for one stage: the row's own for the training; for inference and
    evaluation, written into ``folder``, the overlay's keys whose first part the stage's config has.

    A row's configuration is its training's (``train#trainer#...``, ``g_optimizer#lr``); inference and
    evaluation take what their configs know of it (where the data is, how the networks are built, the
    row's folders), since MONAI refuses to merge a key whose parent a config lacks.
    """
    if stage == "training":
        return row.overlay
    config = json.loads((bundle / "configs" / STAGES[stage]).read_text())
    overlay = json.loads(row.overlay.read_text())
    kept = {key: value for key, value in overlay.items() if key.split("#", 1)[0] in config or key in _PLACEMENT_KEYS}
    path = folder / f"{stage}_overlay.json"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(kept, indent=4) + "\n")
    return path


def stage_command(bundle: Path, stage: str, row: AblationRow, ckpt_dir: Path, output_dir: Path,
                  overrides: Mapping[str, str], overlay: Path | None = None) -> list[str]:
    """The ``python -m monai.bundle run <stage>`` command of a row, its overlay (or ``overlay``, see
    :func:`stage_overlay`) merged over the stage's config."""
    configs = [str(bundle / "configs" / STAGES[stage]), str(overlay or row.overlay)]
    command = [sys.executable, "-m", "monai.bundle", "run", stage, "--config_file", repr(configs),
               "--output_dir", str(output_dir)]
    if stage != "evaluate":
        command += ["--ckpt_dir", str(ckpt_dir)]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    return command


def stage_environment(jobs: int, environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a row's stages: its share of the cores unless the caller set the thread count.

    Rows running side by side each with as many threads as the machine has cores oversubscribe it:
    on 2 cores, two rows of 2 threads each ran several times slower than two rows of one thread.

    Args:
        jobs: rows run at the same time.
        environment: the caller's environment (default ``os.environ``); an ``OMP_NUM_THREADS`` in it is kept.

    Returns:
        A copy of ``environment`` with ``OMP_NUM_THREADS`` = cores // jobs (at least 1) where it was unset.
    """
    environment = dict(os.environ if environment is None else environment)
    environment.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, jobs))))
    return environment


def _run_stage(command: list[str], log: Path, row: AblationRow, stage: str, environment: Mapping[str, str] | None = None) -> None:
    """Run one stage, its output in ``log``; raise naming the row, the stage and the log's last lines if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # Appended: a stage started again (a resumed training) keeps the log of its earlier starts.
    with open(log, "a") as handle:
        handle.write(" ".join(command) + "\n\n")
        handle.flush()
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False, env=environment).returncode
    if status != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise AblationError(log, f"row {row.name!r}: {stage} failed with exit status {status}; last lines:\n{tail}")


def record_training_time(path: Path, seconds: float) -> dict[str, Any]:
    """Add one start's wall time to a row's ``training_time.json`` (``{"seconds": total, "runs": [...]}``)."""
    previous = json.loads(path.read_text()) if path.is_file() else {}
    runs = [*previous.get("runs", []), float(seconds)]
    record = {"seconds": sum(runs), "runs": runs}
    atomic_write_text(path, json.dumps(record) + "\n")
    return record


def read_row_metrics(output_dir: Path) -> dict[str, dict]:
    """``{direction: metrics summary}`` of a row: every ``<output_dir>/<direction>/metrics_summary.json``, sorted.

    Raises:
        AblationError: when there is none (the evaluation wrote nothing).
    """
    summaries = {path.parent.name: json.loads(path.read_text()) for path in sorted(output_dir.glob("*/metrics_summary.json"))}
    if not summaries:
        raise AblationError(output_dir, "holds no <direction>/metrics_summary.json: the evaluation wrote nothing")
    return summaries


def _figure(summary: Mapping, key: str) -> tuple[float, float, int]:
    """``(mean, std, n)`` of a summary entry; NaN where missing (the std of one subject is ``None``)."""
    entry = summary.get(key) or {}

    def number(name: str) -> float:
        value = entry.get(name)
        return math.nan if value is None else float(value)

    return number("mean"), number("std"), int(entry.get("n") or 0)


def _direction_title(direction: str) -> str:
    source, _, target = direction.partition("_to_")
    return f"{source.upper()} → {target.upper()}" if target else direction


def _setting_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())


def direction_figures(results: Sequence[tuple[AblationRow, Mapping[str, dict]]]) -> dict[str, list[tuple[str, str]]]:
    """``{direction: [(key, title), ...]}``: the figures of :data:`FIGURES` some row's evaluation gives, per direction."""
    directions = sorted({direction for _, metrics in results for direction in metrics if direction != TRAINING_TIME_KEY})
    return {direction: [(key, title) for key, title in FIGURES
                        if any(key in metrics.get(direction, {}) for _, metrics in results)] for direction in directions}


def table_rows(results: Sequence[tuple[AblationRow, Mapping[str, dict]]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV columns and one record per row: its declaration, its settings, and per direction the
    mean, standard deviation and subject count of every figure of :func:`direction_figures`."""
    figures = direction_figures(results)
    columns = ["row", "name", "description", "settings", "training_minutes"]
    for direction, keys in figures.items():
        for key, _ in keys:
            columns += [f"{direction}_{key}_mean", f"{direction}_{key}_std", f"{direction}_{key}_n"]
    records = []
    for row, metrics in results:
        seconds = (metrics.get(TRAINING_TIME_KEY) or {}).get("seconds")
        record: dict[str, Any] = {"row": row.row, "name": row.name, "description": row.description,
                                  "settings": _setting_text(row.settings),
                                  "training_minutes": math.nan if seconds is None else float(seconds) / 60.0}
        for direction, keys in figures.items():
            for key, _ in keys:
                mean, std, count = _figure(metrics.get(direction, {}), key)
                record.update({f"{direction}_{key}_mean": mean, f"{direction}_{key}_std": std, f"{direction}_{key}_n": count})
        records.append(record)
    return columns, records


def _cell(mean: float, std: float, key: str) -> str:
    if not math.isfinite(mean):
        return "—"
    digits = 3 if key.startswith("ssim") else 0 if key.startswith("mae_hu") else 2
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if math.isfinite(std) else f"{mean:.{digits}f}"


def markdown_table(results: Sequence[tuple[AblationRow, Mapping[str, dict]]], note: str = "") -> str:
    """The ablation as a Markdown table: one line per row, mean ± sample std of each figure per direction."""
    columns, records = table_rows(results)
    figures = direction_figures(results)
    header = ["#", "configuration", "training (min)"] + [f"{_direction_title(d)} {title}" for d, keys in figures.items()
                                                          for _, title in keys]
    lines = [f"| {' | '.join(header)} |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for (row, _), record in zip(results, records):
        minutes = record["training_minutes"]
        cells = [str(row.row), f"`{row.name}`: {row.description}", f"{minutes:.1f}" if math.isfinite(minutes) else "—"]
        cells += [_cell(record[f"{d}_{key}_mean"], record[f"{d}_{key}_std"], key) for d, keys in figures.items()
                  for key, _ in keys]
        lines.append(f"| {' | '.join(cells)} |")
    counts = sorted({record[f"{d}_{keys[0][0]}_n"] for record in records for d, keys in figures.items() if keys})
    footer = (f"\nMean ± sample standard deviation over the held-out subjects (n = {', '.join(map(str, counts))}); "
              "SSIM inside the head mask (data range 2 on the network scale; for a synthetic CT the SynthRAD "
              "conventions, HU clipped to [-1024, 3000], data range 4024), PSNR likewise; MAE in HU inside the head, "
              "unclipped.")
    return "\n".join(([note, ""] if note else []) + lines) + "\n" + footer + "\n"


def validation_history(output_dir: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {metric: value}}``: the validation figures a row's training wrote to TensorBoard
    (``<output_dir>/events.out.tfevents.*``, every start of the training; later values win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history: dict[int, dict[str, float]] = {}
    for path in sorted(output_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            if tag.startswith("val_"):
                for event in events.Scalars(tag):
                    history.setdefault(int(event.step), {})[tag] = float(event.value)
    return history


def write_validation_history(rows: Sequence[AblationRow], output_dirs: Sequence[Path], path: Path) -> Path:
    """``ablation_validation.csv``: per row and validated epoch, every validation figure (atomically)."""
    histories = [(row, validation_history(folder)) for row, folder in zip(rows, output_dirs)]
    tags = sorted({tag for _, history in histories for values in history.values() for tag in values})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "name", "epoch", *tags])
    for row, history in histories:
        for epoch in sorted(history):
            writer.writerow([row.row, row.name, epoch, *(f"{history[epoch].get(tag, math.nan):.4f}" for tag in tags)])
    atomic_write_text(path, buffer.getvalue())
    return path


def write_tables(results: Sequence[tuple[AblationRow, Mapping[str, dict]]], table_dir: Path, note: str = "") -> tuple[Path, Path]:
    """Write ``ablation.md`` and ``ablation.csv`` into ``table_dir`` (atomically); return their paths."""
    table_dir.mkdir(parents=True, exist_ok=True)
    columns, records = table_rows(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    csv_path, md_path = table_dir / "ablation.csv", table_dir / "ablation.md"
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_text(md_path, markdown_table(results, note))
    return md_path, csv_path


def run_ablation(
    bundle: str | os.PathLike,
    rows: Sequence[str] | None = None,
    work_dir: str | os.PathLike | None = None,
    table_dir: str | os.PathLike | None = None,
    overrides: Mapping[str, str] | None = None,
    training_overrides: Mapping[str, str] | None = None,
    jobs: int = 1,
    tables_only: bool = False,
) -> tuple[Path, Path]:
    """Train, translate and evaluate every row of a bundle's ablation, then write the tables.

    Args:
        bundle: the bundle folder (with ``configs/ablation/*.json``).
        rows: names of the rows to run, in this order (default: all, in ``row`` order).
        work_dir: folder of the rows' checkpoints, outputs and logs (``<work_dir>/<name>/``); default:
            the bundle's ``models/ablation/<name>`` and ``eval/ablation/<name>``.
        table_dir: folder of ``ablation.md`` and ``ablation.csv``; default: ``work_dir``, else the
            bundle's ``eval/ablation``.
        overrides: config overrides of every stage (``{"dataset_dir": "...", "image_size": "64"}``).
        training_overrides: config overrides of the training only (``{"train#trainer#max_epochs": "75"}``).
        jobs: rows run at the same time, each in its own processes (its stages one after the other),
            each with its share of the cores (``OMP_NUM_THREADS`` = cores // jobs, unless the caller's
            environment sets it). The rows share the cohort: with
            more than one job, build and preprocess it first.
        tables_only: run nothing: write the tables from the rows' finished evaluations (rows run in
            several starts, e.g. some of them at a time, tabulated together).

    Returns:
        The paths of ``ablation.md`` and ``ablation.csv``.

    Raises:
        AblationError: a bad overlay or row name (before any run), or a stage that failed (naming the
            row, the stage and its log).
    """
    bundle = Path(bundle).resolve()
    selected = read_rows(bundle, rows)
    work = None if work_dir is None else Path(work_dir).resolve()
    tables = Path(table_dir) if table_dir is not None else (work or bundle / "eval" / "ablation")
    overrides = dict(overrides or {})
    if jobs < 1:
        raise AblationError(bundle, f"jobs must be at least 1, got {jobs}")

    environment = stage_environment(jobs)

    def run_row(row: AblationRow) -> tuple[AblationRow, dict[str, dict]]:
        ckpt_dir, output_dir = row_folders(row, bundle, work)
        logs = (work / row.name) if work is not None else output_dir
        for stage in () if tables_only else STAGES:
            stage_overrides = {**overrides, **(training_overrides or {})} if stage == "training" else overrides
            print(f"[ablation] row {row.row} {row.name}: {stage}", flush=True)
            overlay = stage_overlay(bundle, stage, row, logs)
            started = time.monotonic()
            _run_stage(stage_command(bundle, stage, row, ckpt_dir, output_dir, stage_overrides, overlay),
                       logs / f"{stage}.log", row, stage, environment)
            if stage == "training":
                record_training_time(logs / TRAINING_TIME_FILE, time.monotonic() - started)
        metrics = read_row_metrics(output_dir)
        timing = logs / TRAINING_TIME_FILE
        metrics[TRAINING_TIME_KEY] = json.loads(timing.read_text()) if timing.is_file() else {}
        return row, metrics

    # Threads only wait for the rows' processes; a failed row stops the rows not yet started.
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_row, row) for row in selected]
        try:
            results = [future.result() for future in futures]
        except AblationError:
            for future in futures:
                future.cancel()
            raise
    settings = " ".join(f"--{key} {value}" for key, value in {**overrides, **(training_overrides or {})}.items())
    note = (f"Ablation of `{bundle.name}`: each row trained, translated and evaluated with its overlay "
            f"(`configs/ablation/<name>.json`){'; overrides: `' + settings + '`' if settings else ''}.")
    paths = write_tables(results, tables, note)
    write_validation_history(selected, [row_folders(row, bundle, work)[1] for row in selected],
                             tables / VALIDATION_FILE)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m modality_translation.ablation BUNDLE [...]``; exit status 2 on a bad argument."""
    parser = argparse.ArgumentParser(
        prog="python -m modality_translation.ablation",
        description="Train, translate and evaluate every row of a bundle's ablation (configs/ablation/*.json) "
                    "and write the table of SSIM inside the head and PSNR per row (ablation.md, ablation.csv).")
    parser.add_argument("bundle", type=Path, help="the bundle folder, e.g. bundles/unit_t1_t2")
    parser.add_argument("--rows", nargs="+", default=None, help="row names to run (default: all, in row order)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="checkpoints, outputs and logs of the rows (default: the bundle's models/ablation and eval/ablation)")
    parser.add_argument("--table-dir", type=Path, default=None,
                        help="where ablation.md and ablation.csv go (default: the work folder, else the bundle's eval/ablation)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of every stage, e.g. dataset_dir=demo_data/preprocessed (repeatable)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="rows run at the same time (default 1); the cohort must exist first when above 1")
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing; write the tables from the rows' finished evaluations")
    parser.add_argument("--train-set", dest="training_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override of the training only, e.g. train#trainer#max_epochs=75 (repeatable)")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        training_overrides = parse_overrides(args.training_overrides)
        read_rows(args.bundle, args.rows)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
    except ValueError as error:
        parser.error(str(error))
    try:
        md_path, csv_path = run_ablation(args.bundle, args.rows, args.work_dir, args.table_dir, overrides, training_overrides,
                                         args.jobs, args.tables_only)
    except AblationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"[ablation] tables: {md_path}, {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
