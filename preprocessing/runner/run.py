"""``run_cohort``: every preprocessing step over every subject of a cohort, on any executor.

Two phases, because references are cohort-wide:

1. every subject is read (in parallel) and cached as NIfTI under ``OUT/cache``; the subjects a
   slice-count rule leaves out are marked excluded (:mod:`.selection`); then, per modality, the
   reference is chosen among the others (:mod:`.references`);
2. subjects are processed in parallel, each against the references (:mod:`.steps`).

Robustness: a subject that fails (bad file, failed step, its worker lost twice) is reported with
its reason and the others go on. A subject is complete when its marker file (:mod:`.markers`)
matches the hashes of its inputs, of the configuration, of the references and of the code; a
rerun skips complete subjects and redoes the others from scratch, and because every file is
written atomically and every computation is seeded with a fixed thread count, a run killed at any
point and rerun gives the same bytes as an uninterrupted run (for the same threads per worker).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.config import config_sha256, load_config
from preprocessing.provenance import code_version
from preprocessing.pseudonym import Redactor
from preprocessing.runner.common import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, RunnerError, sha
from preprocessing.runner.discovery import CohortInputs, discover_subjects
from preprocessing.runner.markers import OutputLock, complete, remove_stray_temporaries
from preprocessing.runner.pool import WorkerPool, WorkerSettings, core_count, local_pool
from preprocessing.runner.references import prepare_references
from preprocessing.runner.reports import write_cohort_outputs
from preprocessing.runner.selection import exclude_by_slice_count
from preprocessing.runner.steps import process_job, read_job

__all__ = ["run_cohort"]


def run_cohort(
    config: str | os.PathLike | Mapping[str, Any],
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    threads: int | None = None,
    executor: Executor | WorkerPool | AbstractContextManager[WorkerPool] | None = None,
) -> dict[str, Any]:
    """Preprocess a cohort (see the module docstring).

    Args:
        config: a shipped configuration name, a YAML/JSON path, or a mapping (see :mod:`preprocessing.config`).
        input_dir: the input folder (demo cohort, IXI folder or CQ500-like DICOM tree).
        output_dir: the output folder (created if needed; a previous run's outputs are reused where complete).
        workers: parallel processes of the local pool (default: one per core).
        progress: show progress bars on stderr.
        threads: ANTs/ITK (and torch) threads per worker; default cores // workers, so that
            workers x threads = cores. Results depend on it (ANTs sums in thread order).
        executor: where the tasks run: any ``concurrent.futures`` executor whose workers are
            processes (e.g. a Dask ``Client.get_executor()``; its tasks prepare each worker
            process themselves), a :class:`~preprocessing.runner.pool.WorkerPool`, or a context
            manager giving one, e.g. ``dask_pool(WorkerSettings(seed, threads), "tcp://host:8786")``.
            Default: a local process pool of ``workers`` processes with ``threads`` threads each.

    Returns:
        The report (also written to ``report.json``).

    Raises:
        ConfigError: an invalid configuration.
        InputReadError: the input folder does not exist or holds nothing recognisable.
        RunnerError: another run writes to the output, a reference cannot be made, or the pool's
            settings differ from ``threads`` and the configuration's seed.
    """
    config, output = load_config(config), Path(output_dir)
    inputs = discover_subjects(input_dir, config)
    if not inputs.subjects:
        raise RunnerError(f"no subject found in the input ({inputs.layout} layout)")
    workers = max(1, int(workers or core_count()))
    settings = WorkerSettings(int(config["seed"]), max(1, int(threads or core_count() // workers)))
    names = {s.source: s.subject for s in inputs.subjects}
    # The configuration is copied into sidecars and may name a reference subject by its source
    # folder name: from here on it speaks of pseudonyms only.
    config = json.loads(Redactor(names)(json.dumps(config)))
    start, phases = time.perf_counter(), {}
    with OutputLock(output), _pool(executor, min(workers, len(inputs.subjects)), settings) as workers_pool:
        remove_stray_temporaries(output)
        phases["start_workers_and_read"] = time.perf_counter()
        reads = read_subjects(workers_pool, inputs, config, output, progress)
        selection = exclude_by_slice_count(config, reads)
        phases["references"] = time.perf_counter()
        references = prepare_references(workers_pool, config, inputs, reads, output, progress)
        phases["process"] = time.perf_counter()
        results = process_subjects(workers_pool, inputs, config, reads, references, output, progress)
        phases["end"] = time.perf_counter()
        remove_stray_temporaries(output)  # left by a worker that was lost mid-write
        marks = list(phases.items())
        phase_seconds = {name: round(marks[i + 1][1] - when, 3) for i, (name, when) in enumerate(marks[:-1])}
        return write_cohort_outputs(config, config_sha256(config), inputs, references, results, output,
                                    workers_pool.workers, settings.threads, time.perf_counter() - start, phase_seconds,
                                    selection)


def _pool(executor: Executor | WorkerPool | AbstractContextManager[WorkerPool] | None, workers: int,
          settings: WorkerSettings) -> AbstractContextManager[WorkerPool]:
    """The run's worker pool as a context manager (see ``executor`` in :func:`run_cohort`)."""
    if executor is None:
        return local_pool(workers, settings)
    if isinstance(executor, Executor):
        return nullcontext(WorkerPool(executor, settings, workers))
    if isinstance(executor, WorkerPool):
        executor = nullcontext(executor)
    return _CheckedPool(executor, settings)


class _CheckedPool(AbstractContextManager):
    """A caller's pool, checked to prepare its workers as this run needs (same seed, same threads)."""

    def __init__(self, pool: AbstractContextManager[WorkerPool], settings: WorkerSettings):
        self.pool, self.settings = pool, settings

    def __enter__(self) -> WorkerPool:
        entered = self.pool.__enter__()
        if entered.settings != self.settings:
            self.pool.__exit__(None, None, None)
            raise RunnerError(f"the worker pool prepares its workers with {entered.settings}, this run needs "
                              f"{self.settings} (--threads and the configuration's seed)")
        return entered

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self.pool.__exit__(*exc_info)


def _redaction(inputs: CohortInputs) -> tuple[dict[str, str], dict[str, str]]:
    """Source name → pseudonym, and the input folder's spellings → ``<input>``, for every reason a task reports."""
    names = {s.source: s.subject for s in inputs.subjects}
    return names, {str(inputs.root.resolve()): "<input>", str(inputs.root): "<input>"}


def read_subjects(pool: WorkerPool, inputs: CohortInputs, config: dict, output: Path,
                  progress: bool) -> dict[str, dict]:
    """Phase 1: hash and read (into ``OUT/cache``) every subject; ``{subject: read result}``."""
    names, anywhere = _redaction(inputs)
    jobs = {source.subject: {"subject": source.subject, "volumes": {m: str(p) for m, p in source.volumes.items()},
                             "truth": str(source.truth) if source.truth else None, "problems": source.problems,
                             "mask": str(source.mask) if source.mask else None,
                             "cache": str(output / "cache" / source.subject), "dicom": config["input"]["dicom"],
                             "names": names, "anywhere": anywhere}
            for source in inputs.subjects}
    reads = {}
    for subject, result, error in pool.results(read_job, jobs, "read", progress):
        reads[subject] = result if error is None else {
            "subject": subject, "status": STATUS_FAILED, "reason": f"reading failed: {error}", "seconds": {}}
    return reads


def process_subjects(pool: WorkerPool, inputs: CohortInputs, config: dict, reads: Mapping[str, dict],
                     references: Mapping[str, dict], output: Path, progress: bool) -> dict[str, dict]:
    """Phase 2: every subject read successfully and not already complete; ``{subject: result}``."""
    names, anywhere = _redaction(inputs)
    config_hash, code = config_sha256(config), code_version()
    results: dict[str, dict] = {}
    jobs: dict[str, dict] = {}
    for source in inputs.subjects:
        read = reads[source.subject]
        if read["status"] != STATUS_OK:  # failed, or excluded by a selection rule
            # An earlier run's outputs of the subject must not outlive it.
            shutil.rmtree(output / "subjects" / source.subject, ignore_errors=True)
            results[source.subject] = {"subject": source.subject, "status": read["status"], "reason": read["reason"],
                                       "seconds": read["seconds"]}
            continue
        modalities = sorted(source.volumes, key=lambda m: (m != "ct", m))
        used = {m: references[m] for m in modalities if m in references}
        key = sha(json.dumps({"config": config_hash, "inputs": read["inputs_sha256"], "code": code,
                              "references": used}, sort_keys=True))
        done = complete(output, source.subject, key)
        if done is not None:  # its time in this run: checking the inputs' hashes (phase 1) only
            results[source.subject] = {"subject": source.subject, "status": STATUS_SKIPPED, "entry": done["entry"],
                                       "metrics": done["metrics"], "seconds": read["seconds"]}
            continue
        jobs[source.subject] = {
            "subject": source.subject, "output": str(output), "config": config, "modalities": modalities,
            "volumes": {m: str(p) for m, p in source.volumes.items()}, "references": used,
            "truth": str(source.truth) if source.truth else None, "inputs_sha256": read["inputs_sha256"],
            "mask": str(source.mask) if source.mask else None,
            "names": names, "anywhere": anywhere, "identifiers": read["identifiers"], "key": key}
    # Longest first: the last subjects to start are then the shortest, so the workers finish
    # together instead of one waiting for the other's last large subject.
    ordered = sorted(jobs, key=lambda s: estimated_work(jobs[s], reads[s]["metadata"]), reverse=True)
    for subject, result, error in pool.results(process_job, {s: jobs[s] for s in ordered}, "process", progress):
        if error is not None:  # the worker was lost on every attempt: no partial subject stays behind
            shutil.rmtree(output / "subjects" / subject, ignore_errors=True)
            result = {"subject": subject, "status": STATUS_FAILED, "reason": f"processing failed: {error}",
                      "seconds": {}}
        result["seconds"] = {**reads[subject]["seconds"], **result["seconds"]}
        results[subject] = result
    for subject, read in reads.items():
        if "metadata" in read:  # read: processed, or excluded by its slice counts
            results[subject]["inputs"] = read["metadata"]
    return results


def estimated_work(job: dict, metadata: Mapping[str, dict]) -> float:
    """Relative cost of processing a subject: the voxels it registers, plus a tenth for every other step.

    A subject whose volume is a modality's reference is not registered for that modality (identity).
    """
    work = 0.0
    for modality in job["modalities"]:
        voxels = float(np.prod(metadata.get(modality, {}).get("size", [0])))
        reference = job["references"].get(modality)
        registered = reference is not None and reference.get("subject") != job["subject"]
        work += voxels * (1.1 if registered else 0.1)
    return work
