"""A tiny preprocessed demo cohort, built once per test session as the bundles build a missing one."""

from pathlib import Path

import pytest

from modality_translation.bundle_support import prepare_datalist
from tests.bundles.helpers import FAST_PREPROCESSING


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """A 3-subject small demo cohort, built and preprocessed as the bundles do when it is missing."""
    root = tmp_path_factory.mktemp("demo")
    datalist = prepare_datalist(
        root / "preprocessed" / "dataset.json", ("ct", "t1", "t2"), build_demo=True, demo_dir=root / "cohort",
        demo_size="small", demo_subjects=3, preprocessing_config=FAST_PREPROCESSING, workers=2, progress=False,
    )
    return Path(datalist).parent
