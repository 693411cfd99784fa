import json
from pathlib import Path

import numpy as np
import pytest

from medgan_common.errors import GeometryError
from modality_translation.data import DatalistError, unpaired_slice_dataset
from modality_translation.data.level_matching import level_matched_candidates, slice_level_mm, slice_levels
from preprocessing.slices import SliceGeometry
from tests.modality_translation.data.cohort import SIZE, edit_datalist, write_cohort

SUBJECTS = ["sub-001", "sub-002", "sub-003"]
# Subject s is sliced from index OFFSETS[s] on (its head sits higher in the common grid).
OFFSETS = {"sub-001": 0, "sub-002": 2, "sub-003": 4}
SPACING_Z = 2.5


def _geometry(index, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), origin=(0.0, 0.0, 10.0)):
    return SliceGeometry(axis=0, index=index, plane="axial", neighbours=0, original_shape=(SIZE, SIZE),
                         padding=((0, 0), (0, 0)), output_shape=(SIZE, SIZE), scale=(1.0, 1.0),
                         volume_shape=(20, SIZE, SIZE), spacing=(1.0, 1.0, SPACING_Z), origin=origin, direction=direction)


def _write_indexes(path, geometry_of=lambda subject, modality, position: _geometry(OFFSETS.get(subject, 0) + position)):
    def add(content):
        for item in (i for split in ("training", "validation", "test") for i in content[split]):
            for modality in ("t1", "t2"):
                index = {"slices": [{"file": Path(f).name,
                                     "geometry": geometry_of(item["subject"], modality, p).to_dict()}
                                    for p, f in enumerate(item[f"{modality}_slices"])]}
                relative = f"{item['subject']}/slices/{modality}/index.json"
                (path.parent / relative).write_text(json.dumps(index))
                item[f"{modality}_slice_index"] = relative

    edit_datalist(path, add)


def _cohort(tmp_path):
    path = write_cohort(tmp_path, splits={"training": SUBJECTS, "validation": ["sub-004"], "test": ["sub-005"]},
                        slices={"t1": 4, "t2": 4})
    _write_indexes(path)
    return path


def _subject_and_position(image, modality_index):
    """Decode the identity that ``cohort.slice_array`` writes into the first pixel (ramp start -1)."""
    offset = float(image[0, 0, 0]) + 1.0 - 0.03 * modality_index
    subject_number = int(np.floor(offset / 0.1 + 1e-3))
    return SUBJECTS[subject_number], int(round((offset - 0.1 * subject_number) / 0.005))


def test_slice_level_is_the_height_along_the_slice_normal():
    level, normal = slice_level_mm(_geometry(4))
    assert level == pytest.approx(10.0 + 4 * SPACING_Z)
    np.testing.assert_allclose(normal, [0.0, 0.0, 1.0])
    # A volume stored head-first (z flipped): the level is still origin + index * spacing along its normal.
    flipped = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    level, normal = slice_level_mm(_geometry(4, direction=flipped, origin=(0.0, 0.0, 60.0)))
    assert level == pytest.approx(-(60.0 - 4 * SPACING_Z))
    np.testing.assert_allclose(normal, [0.0, 0.0, -1.0])


def test_candidates_are_other_subjects_within_the_window_or_the_nearest_level():
    levels_a = np.array([0.0, 10.0, 100.0])
    subjects_a = ["a", "a", "b"]
    levels_b = np.array([0.0, 2.0, 3.0, 9.0, 11.0, 40.0])
    subjects_b = ["a", "b", "c", "b", "a", "c"]
    candidates = level_matched_candidates(levels_a, subjects_a, levels_b, subjects_b, window_mm=2.5)
    assert candidates[0].tolist() == [1]  # b at 2 mm; a's own slice at 0 mm is never a candidate
    assert candidates[1].tolist() == [3]  # 9 mm (b); 11 mm is subject a's own
    assert candidates[2].tolist() == [5]  # nothing within 2.5 mm of 100 mm: the nearest other subject's level
    assert level_matched_candidates(levels_a, subjects_a, levels_b, subjects_b, window_mm=100)[0].tolist() == [1, 2, 3, 5]
    with pytest.raises(ValueError, match="no slice of a subject other than 'a'"):
        level_matched_candidates(levels_a[:1], ["a"], levels_b[:1], ["a"], window_mm=1)
    with pytest.raises(ValueError, match=">= 0 mm"):
        level_matched_candidates(levels_a, subjects_a, levels_b, subjects_b, window_mm=-1)


def test_level_matched_draws_are_other_subjects_at_the_same_height(tmp_path):
    path = _cohort(tmp_path)
    window = 1.0 * SPACING_Z
    dataset = unpaired_slice_dataset(path, "t1", "t2", train=False, crop_size=(SIZE, SIZE), seed=1,
                                     level_window_mm=window)
    assert len(dataset) == 12
    seen_subject_offsets = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            subject_a, position_a = _subject_and_position(sample["A"], 0)
            subject_b, position_b = _subject_and_position(sample["B"], 1)
            assert subject_b != subject_a
            level_a = OFFSETS[subject_a] + position_a
            level_b = OFFSETS[subject_b] + position_b
            nearest = min(abs(OFFSETS[s] + p - level_a) for s in SUBJECTS if s != subject_a for p in range(4))
            assert abs(level_b - level_a) * SPACING_Z <= max(window, nearest * SPACING_Z) + 1e-6
            seen_subject_offsets.add(level_b - level_a)
    assert seen_subject_offsets >= {-1, 0, 1}, "the window's whole width is drawn from"
    # Reproducible: the same seed and epoch draw the same partners.
    again = unpaired_slice_dataset(path, "t1", "t2", train=False, crop_size=(SIZE, SIZE), seed=1, level_window_mm=window)
    again.set_epoch(3)
    assert all(again.sample_indices(i) == dataset.sample_indices(i) for i in range(len(dataset)))


def test_without_a_window_the_draw_is_the_reference_one(tmp_path):
    path = _cohort(tmp_path)
    plain = unpaired_slice_dataset(path, "t1", "t2", train=False, crop_size=(SIZE, SIZE), seed=1)
    assert plain.b_candidates is None
    # The reference draw also pairs a slice with its own subject's, which the level-matched one never does.
    own = [_subject_and_position(plain[i]["A"], 0)[0] == _subject_and_position(plain[i]["B"], 1)[0]
           for epoch in range(3) for i in range(len(plain)) if plain.set_epoch(epoch) is None]
    assert any(own)


def test_levels_need_the_slice_indexes_and_one_slicing_direction(tmp_path):
    path = write_cohort(tmp_path, splits={"training": SUBJECTS, "validation": ["sub-004"], "test": ["sub-005"]})
    with pytest.raises(DatalistError, match="has no 't1_slice_index'"):
        unpaired_slice_dataset(path, "t1", "t2", level_window_mm=2.0)
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0)
    _write_indexes(path, lambda subject, modality, position: (
        _geometry(position, direction=coronal) if subject == "sub-002" else _geometry(position)))
    with pytest.raises(GeometryError, match="sub-002.*one common space"):
        unpaired_slice_dataset(path, "t1", "t2", level_window_mm=2.0)


def test_levels_follow_the_datalist_order(tmp_path):
    path = _cohort(tmp_path)
    items = json.loads(path.read_text())["training"]
    levels = slice_levels(items, "t2", base=path.parent)
    expected = [10.0 + (OFFSETS[s] + p) * SPACING_Z for s in SUBJECTS for p in range(4)]
    np.testing.assert_allclose(levels, expected)
    # A slice missing from its index is named.
    items[0]["t2_slices"] = items[0]["t2_slices"] + ["sub-001/slices/t2/missing.nii.gz"]
    with pytest.raises(DatalistError, match="missing.nii.gz of subject 'sub-001' is not in the slice index"):
        slice_levels(items, "t2", base=path.parent)
