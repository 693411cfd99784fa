"""The cohort runner: every preprocessing step over every subject of a cohort.

``python -m preprocessing run --config CONFIG --input DIR --output OUT [--workers N | --dask-workers N | --scheduler ADDRESS]``

Modules, one job each:

* :mod:`.discovery`: the subjects of an input folder and their pseudonyms;
* :mod:`.selection`: the subjects a slice-count rule leaves out (reported, not processed);
* :mod:`.references`: the cohort-wide reference of each modality;
* :mod:`.steps`: the per-subject steps, each declaring what it reads and writes, and the tasks that run them;
* :mod:`.markers`: completion markers and the output lock (safe on a shared filesystem);
* :mod:`.reports`: ``dataset.json`` split by subject, ``report.json`` / ``report.csv``;
* :mod:`.demo_truth`: the demo cohort's ground truth;
* :mod:`.pool`: where tasks run (local process pool, Dask) and what a lost worker means;
* :mod:`.run`: :func:`run_cohort`, the phases in order.

Outputs: ``OUT/subjects/<pseudonym>/`` (volumes, masks, transforms, slices, truth, QC), and at the
root ``dataset.json`` (MONAI datalist, split by subject), ``report.json`` / ``report.csv``. Every
output file has a provenance sidecar (:mod:`preprocessing.provenance`); subject IDs are
pseudonyms (:mod:`preprocessing.pseudonym`).
"""

from preprocessing.runner.common import STATUS_EXCLUDED, STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, STEPS, RunnerError
from preprocessing.runner.discovery import CohortInputs, SubjectSource, discover_subjects
from preprocessing.runner.pool import WorkerLost, WorkerPool, WorkerSettings, dask_pool, local_pool
from preprocessing.runner.reports import split_subjects
from preprocessing.runner.run import run_cohort

__all__ = [
    "STATUS_EXCLUDED",
    "STATUS_FAILED",
    "STATUS_OK",
    "STATUS_SKIPPED",
    "STEPS",
    "CohortInputs",
    "RunnerError",
    "SubjectSource",
    "WorkerLost",
    "WorkerPool",
    "WorkerSettings",
    "dask_pool",
    "discover_subjects",
    "local_pool",
    "run_cohort",
    "split_subjects",
]
