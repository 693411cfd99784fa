"""Package-wide fixtures of the runner tests: one small demo cohort and one reference run of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from preprocessing.demo import build_demo_cohort
from tests.preprocessing.runner.cohort_run import FAST, N_SUBJECTS, run_cli


@pytest.fixture(scope="package")
def cohort(tmp_path_factory) -> Path:
    """The procedural phantom: the runner's thresholds (holder left below 1 % at 4 mm CT voxels, the
    truth's contrast through the registration) were set on it. The template anatomy's small cohort
    is preprocessed by the bundle tests; its artefact figures are in docs/preprocessing.md."""
    folder = tmp_path_factory.mktemp("cohort")
    build_demo_cohort(folder, N_SUBJECTS, "small", seed=0, workers=2, progress=False, anatomy_name="procedural")
    return folder


@pytest.fixture(scope="package")
def fast_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "fast.yaml"
    path.write_text(FAST)
    return path


@pytest.fixture(scope="package")
def run(cohort, fast_config, tmp_path_factory) -> Path:
    """The reference run, through the command line, on the local process pool of 2 workers."""
    output = tmp_path_factory.mktemp("run")
    result = run_cli("run", "--config", str(fast_config), "--input", str(cohort), "--output", str(output),
                     "--workers", "2", "--quiet")
    assert result.returncode == 0, result.stderr
    return output
