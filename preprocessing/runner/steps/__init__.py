"""The per-subject steps of phase 2, in pipeline order, and the task that runs them on one subject.

Read (phase 1, :mod:`.read`) → CT artefact mask on the CT as read (``per_subject`` mode) →
registration onto each modality's reference → CT artefact mask on the registered grid and CT window →
MR head mask and normalisation → T2 (and other MR) onto the subject's own T1 → the CT onto the
subject's own MR (``ct_pairing``) → slices → demo truth → QC montages. Each step declares the values it reads and writes (:mod:`.base`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from medgan_common import dataset_keys as keys
from preprocessing.provenance import input_record
from preprocessing.pseudonym import Redactor
from preprocessing.runner.common import STATUS_FAILED, STATUS_OK, read_image, reason
from preprocessing.runner.markers import write_marker
from preprocessing.runner.steps.base import Step, SubjectContext, SubjectWriter, Timer, run_steps
from preprocessing.runner.steps.ct import MaskAndWindowCT
from preprocessing.runner.steps.holder import RemoveHolderAsRead
from preprocessing.runner.steps.normalise import NormaliseMR
from preprocessing.runner.steps.pair import PairWithinSubject
from preprocessing.runner.steps.pair_ct import PairCTWithOwnMR
from preprocessing.runner.steps.qc import DrawQC
from preprocessing.runner.steps.read import read_job
from preprocessing.runner.steps.register import RegisterToReferences
from preprocessing.runner.steps.slices import ExtractSlices
from preprocessing.runner.steps.truth import CarryTruth

logger = logging.getLogger(__name__)

__all__ = ["PIPELINE", "Step", "process_job", "read_job"]

#: Phase 2, in order.
PIPELINE: tuple[Step, ...] = (
    RemoveHolderAsRead(),
    RegisterToReferences(),
    MaskAndWindowCT(),
    NormaliseMR(),
    PairWithinSubject(),
    PairCTWithOwnMR(),
    ExtractSlices(),
    CarryTruth(),
    DrawQC(),
)


def process_job(job: dict) -> dict:
    """Phase 2 for one subject: every step, then its completion marker.

    Never raises: a failure is returned with its reason (source names and identifiers redacted),
    and the subject's folder is removed so that no half-made subject is left behind.

    Args:
        job: the subject's task (see :func:`preprocessing.runner.run.process_subjects`).

    Returns:
        ``{"subject", "status", "entry", "metrics", "seconds"}`` or, failed, ``{"subject", "status", "reason", "seconds"}``.
    """
    redact = Redactor(job["names"], job["identifiers"], job["anywhere"])
    timer = Timer()
    result: dict[str, Any] = {"subject": job["subject"]}
    output = Path(job["output"])
    folder = output / "subjects" / job["subject"]
    try:
        with timer("total"):
            entry, metrics = _process_subject(job, folder, timer)
        write_marker(output, job["subject"], job["key"], entry, metrics)
        result.update(status=STATUS_OK, entry=entry, metrics=metrics)
    except Exception as error:  # isolate the failure: report it, leave no half-made subject behind
        logger.debug("subject %s failed", job["subject"], exc_info=True)
        shutil.rmtree(folder, ignore_errors=True)
        result.update(status=STATUS_FAILED, reason=reason(error, redact))
    result["seconds"] = timer.seconds
    return result


def _process_subject(job: dict, folder: Path, timer: Timer) -> tuple[dict, dict]:
    """Run :data:`PIPELINE` on one subject; returns its dataset item and metrics."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cache = Path(job["output"]) / "cache" / job["subject"]
    raw_inputs = {m: [input_record(cache / f"{m}.nii", f"{job['subject']}/{m}", "input volume",
                                   sha256=job["inputs_sha256"][m])] for m in job["modalities"]}
    given = {}
    if job.get("mask"):  # delivered with the volumes (SynthRAD2023)
        raw_inputs["mask"] = [input_record(cache / "mask.nii", f"{job['subject']}/mask", "input mask",
                                           sha256=job["inputs_sha256"]["mask"])]
        given["mask"] = read_image(cache / "mask.nii")
    context = SubjectContext(job, folder, timer, SubjectWriter(Path(job["output"]), folder), raw_inputs)
    values = run_steps(PIPELINE, context, {
        "raw": {m: read_image(cache / f"{m}.nii") for m in job["modalities"]},
        "given": given,
        "entry": {keys.SUBJECT: job["subject"]},
        "registration": {},
    })
    metrics: dict[str, Any] = {"registration": values["registration"]}
    if "ct" in values.get("artefact_mask", {}):
        metrics["artefact_mask"] = values["artefact_mask"]["ct"]
    return values["entry"], metrics
