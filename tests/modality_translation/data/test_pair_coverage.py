import json
import logging

import numpy as np
import pytest

from modality_translation.data import DatalistError, paired_slice_dataset
from modality_translation.data.pair_coverage import target_coverage
from tests.modality_translation.data.cohort import SIZE, save_nifti, write_cohort


def test_coverage_is_the_share_of_the_source_head_where_the_target_holds_data():
    source = np.full((8, 8), -1.0, dtype=np.float32)
    source[2:6, 2:6] = 0.3  # a 16-pixel head
    target = np.full((8, 8), -1.0, dtype=np.float32)
    target[2:4, 2:6] = 0.5  # data on the upper half of the head only
    assert target_coverage(source, target) == pytest.approx(0.5)
    target[4:6, 2:6] = -0.9
    assert target_coverage(source, target) == pytest.approx(1.0)
    # Data outside the source's head does not count; a slice without head misses nothing.
    assert target_coverage(np.full((8, 8), -1.0), target) == 1.0
    # 2.5D: the centre channels are compared.
    source_25d = np.stack([np.full((8, 8), -1.0), source, np.full((8, 8), -1.0)])
    blank_centre = np.stack([target, np.full((8, 8), -1.0), target])
    assert target_coverage(source_25d, blank_centre) == 0.0


def _blank_targets(path, subject, positions):
    """Overwrite some T2 slices of a subject with background: the T2 scan did not reach them."""
    items = [i for split in ("training", "validation", "test") for i in json.loads(path.read_text())[split]]
    item = next(i for i in items if i["subject"] == subject)
    for position in positions:
        save_nifti(path.parent / item["t2_slices"][position], np.full((SIZE, SIZE), -1.0, dtype=np.float32))


def test_pairs_outside_the_target_field_of_view_are_left_out_and_reported(tmp_path, caplog):
    path = write_cohort(tmp_path, slices={"t1": 4, "t2": 4})
    assert len(paired_slice_dataset(path, "t1", "t2", split="training", min_target_coverage=0.8)) == 8
    _blank_targets(path, "sub-002", [0, 1])
    with caplog.at_level(logging.WARNING, logger="modality_translation.data.pair_coverage"):
        dataset = paired_slice_dataset(path, "t1", "t2", split="training", train=False, crop_size=(SIZE, SIZE),
                                       min_target_coverage=0.8)
    assert len(dataset) == 6
    assert "subject 'sub-002': 2 of 4 pairs left out" in caplog.text and "sub-001" not in caplog.text
    # The blank targets are gone: every kept target holds data.
    assert all(float(dataset[i]["B"].max()) > -1.0 for i in range(len(dataset)))
    # Off by default: every pair is kept.
    assert len(paired_slice_dataset(path, "t1", "t2", split="training")) == 8


def test_no_pair_left_and_a_bad_threshold_are_errors(tmp_path):
    path = write_cohort(tmp_path, splits={"training": ["sub-001"], "validation": ["sub-002"], "test": ["sub-003"]},
                        slices={"t1": 2, "t2": 2})
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        paired_slice_dataset(path, "t1", "t2", split="training", min_target_coverage=1.5)
    _blank_targets(path, "sub-001", [0, 1])
    with pytest.raises(DatalistError, match="no pair has a target covering 80 % of its source's head"):
        paired_slice_dataset(path, "t1", "t2", split="training", min_target_coverage=0.8)
