"""The dataset.json keys: the builders, and the datalist the preprocessing runner writes spelled with them."""

from __future__ import annotations

import json

import pytest

from medgan_common import dataset_keys as keys
from preprocessing.demo import build_demo_cohort
from preprocessing.runner import run_cohort
from tests.preprocessing.runner.cohort_run import FAST

# The companions a volume key can have in an item.
COMPANIONS = (keys.mask_key, keys.transforms_key, keys.slices_key, keys.slice_index_key, keys.hu_key)


def test_builders_spell_the_keys():
    assert keys.pair_key("t2", "t1") == "t2_in_t1"
    assert keys.slices_key("t2_in_t1") == "t2_in_t1_slices"
    assert keys.slice_index_key("t1") == "t1_slice_index"
    assert keys.slice_index_owner("ct_in_t2_slice_index") == "ct_in_t2" and keys.slice_index_owner("t1_slices") is None
    assert keys.mask_key("t1") == "t1_mask" and keys.transforms_key("t1") == "t1_transforms"
    assert keys.hu_key(keys.pair_key("ct", "t2")) == "ct_in_t2_hu"
    assert keys.truth_key("ct", "t2") == "truth_ct_in_t2" and keys.truth_labels_key("t2") == "truth_labels_in_t2"
    assert keys.SPLITS == ("training", "validation", "test")


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> dict:
    """The dataset.json of one small demo subject, preprocessed with the runner tests' fast configuration."""
    root = tmp_path_factory.mktemp("keys")
    build_demo_cohort(root / "cohort", 1, "small", seed=0, workers=1, progress=False, anatomy_name="procedural")
    config = root / "fast.yaml"
    config.write_text(FAST)
    run_cohort(str(config), root / "cohort", root / "out", workers=1, progress=False)
    return json.loads((root / "out" / keys.DATALIST_FILE).read_text())


def test_runner_datalist_uses_exactly_these_keys(datalist):
    assert sorted(datalist) == sorted(keys.TOP_LEVEL_KEYS)
    modalities = datalist[keys.MODALITIES]
    assert modalities == ["ct", "t1", "t2"]
    pairs = datalist[keys.PAIRS]
    assert pairs == {keys.pair_key("t2", "t1"): ["t2", "t1"], keys.pair_key("ct", "t2"): ["ct", "t2"],
                     keys.pair_key("ct", "t1"): ["ct", "t1"]}
    assert {count: len(datalist[split]) for split, count in keys.SPLIT_COUNTS.items()} == {
        count: datalist[count] for count in keys.SPLIT_COUNTS.values()}
    volumes = [*modalities, *pairs]
    assert set(datalist[keys.SLICE_SIZE]) == set(volumes)
    assert all(set(record) <= set(keys.REFERENCE_FIELDS) for record in datalist[keys.REFERENCES].values())

    [item] = [item for split in keys.SPLITS for item in datalist[split]]
    truth = {keys.truth_key(image, space) for space in modalities for image in modalities if image != space}
    truth |= {keys.truth_labels_key(space) for space in modalities}
    spelled = {keys.SUBJECT, *volumes, *(build(v) for v in volumes for build in COMPANIONS), *truth}
    # Every key of the item is one of these spellings, and each volume has its slices, index and mask.
    assert set(item) <= spelled, set(item) - spelled
    for volume in volumes:
        assert {volume, keys.slices_key(volume), keys.slice_index_key(volume), keys.mask_key(volume)} <= set(item)
    assert {keys.hu_key("ct"), *(keys.hu_key(p) for p, (moving, _) in pairs.items() if moving == "ct")} <= set(item)
    assert {keys.transforms_key(m) for m in modalities} <= set(item) and truth <= set(item)
