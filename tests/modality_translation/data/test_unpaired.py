import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import Dataset
from torch.utils.data import DataLoader

from medgan_common.errors import GeometryError
from modality_translation.data import (
    DatalistError,
    PairedDataset,
    UnpairedDataset,
    paired_slice_dataset,
    unpaired_slice_dataset,
)
from preprocessing.slices import SliceGeometry
from tests.modality_translation.data.cohort import SIZE, edit_datalist, write_cohort


def domain(values):
    """A MONAI dataset of constant images whose value identifies them."""
    return Dataset([{"image": torch.full((1, 2, 2), float(v))} for v in values])


def identities(sample):
    return int(sample["A"][0, 0, 0]), int(sample["B"][0, 0, 0])


def test_length_is_the_larger_domain_and_a_cycles():
    dataset = UnpairedDataset(domain(range(3)), domain(range(100, 107)), seed=0)
    assert len(dataset) == 7
    assert [identities(dataset[i])[0] for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert len(UnpairedDataset(domain(range(5)), domain(range(2)))) == 5
    with pytest.raises(IndexError):
        dataset[7]


def test_b_draws_are_seeded_reproducible_and_change_with_epoch():
    def draws(seed, epoch):
        dataset = UnpairedDataset(domain(range(4)), domain(range(100, 140)), seed=seed)
        dataset.set_epoch(epoch)
        return [identities(dataset[i])[1] for i in range(40)]

    assert draws(1, 1) == draws(1, 1)
    assert draws(1, 1) != draws(1, 2)
    assert draws(1, 1) != draws(2, 1)
    assert all(100 <= b < 140 for b in draws(1, 1))
    # Uniform draws over 40 slices: 40 draws hit about 40 * (1 - (39/40)^40) = 25.5 distinct slices.
    assert 15 < len(set(draws(1, 1))) < 36


def test_b_draws_cover_the_domain_uniformly():
    dataset = UnpairedDataset(domain(range(2000)), domain(range(4)), seed=0)
    counts = np.bincount([identities(dataset[i])[1] for i in range(2000)], minlength=4)
    assert counts.min() > 430 and counts.max() < 570  # 500 +- 3 sigma (39)


def test_workers_and_persistent_workers_see_the_epoch():
    dataset = UnpairedDataset(domain(range(6)), domain(range(100, 112)), seed=3)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, persistent_workers=True)
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        from_workers = [identities({"A": a, "B": b}) for batch in loader for a, b in zip(batch["A"], batch["B"])]
        assert from_workers == [identities(dataset[i]) for i in range(12)]
    assert dataset.epoch == 2


def test_unpaired_slices_of_a_datalist(tmp_path):
    path = write_cohort(tmp_path, slices={"t1": 3, "t2": 2})
    dataset = unpaired_slice_dataset(path, "t1", "t2", crop_size=(24, 24), jitter_scale=1.2, seed=5)
    assert len(dataset) == 6  # 2 subjects x 3 T1 slices against 2 x 2 T2 slices
    sample = dataset[4]
    assert sample["A"].shape == (1, 24, 24) and sample["B"].shape == (1, 24, 24)
    assert torch.equal(dataset[4]["A"], sample["A"]) and torch.equal(dataset[4]["B"], sample["B"])
    dataset.set_epoch(1)
    changed = [not torch.equal(dataset[i]["A"], unpaired_slice_dataset(path, "t1", "t2", crop_size=(24, 24),
                                                                      jitter_scale=1.2, seed=5)[i]["A"]) for i in range(6)]
    assert any(changed), "another epoch draws other crops and flips"


def test_uncached_equals_cached(tmp_path):
    path = write_cohort(tmp_path)
    cached = unpaired_slice_dataset(path, "t1", "t2", crop_size=(24, 24), seed=2)
    uncached = unpaired_slice_dataset(path, "t1", "t2", crop_size=(24, 24), seed=2, cache_rate=0)
    for i in range(len(cached)):
        assert torch.equal(cached[i]["A"], uncached[i]["A"]) and torch.equal(cached[i]["B"], uncached[i]["B"])


def test_validation_twin_is_deterministic_and_uncropped(tmp_path):
    path = write_cohort(tmp_path)
    dataset = unpaired_slice_dataset(path, "t1", "t2", split="validation", train=False, crop_size=(SIZE, SIZE))
    sample = dataset[0]
    assert sample["A"].shape == (1, SIZE, SIZE)
    dataset.set_epoch(3)
    assert torch.equal(dataset[0]["A"], sample["A"])


def test_datalist_errors_surface_before_training(tmp_path):
    path = write_cohort(tmp_path, modalities=("t1",), declared=["t1", "t2"])
    with pytest.raises(DatalistError, match="has no 't2_slices'"):
        unpaired_slice_dataset(path, "t1", "t2")


def test_paired_slices_share_crop_and_flip(tmp_path):
    path = write_cohort(tmp_path)
    dataset = paired_slice_dataset(path, "t1", "t2", split="training", train=True, crop_size=(24, 24), jitter_scale=1.25)
    assert len(dataset) == 6
    for i in range(len(dataset)):
        sample = dataset[i]
        # The cohort's T2 slice is its T1 slice plus 0.03: any crop or flip applied to only one would show.
        torch.testing.assert_close(sample["B"] - sample["A"], torch.full_like(sample["A"], 0.03), atol=1e-5, rtol=0)


def test_paired_patches_share_their_place_and_validation_keeps_whole_slices(tmp_path):
    path = write_cohort(tmp_path)
    dataset = paired_slice_dataset(path, "t1", "t2", split="training", train=True, crop_size=(16, 16),
                                   slice_size=(SIZE, SIZE), jitter_scale=1.0)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["A"].shape == (1, 16, 16)
        torch.testing.assert_close(sample["B"] - sample["A"], torch.full_like(sample["A"], 0.03), atol=1e-5, rtol=0)
    whole = paired_slice_dataset(path, "t1", "t2", split="training", train=False, crop_size=(16, 16),
                                 slice_size=(SIZE, SIZE))
    assert whole[0]["A"].shape == (1, SIZE, SIZE)


def test_paired_target_key_and_its_errors(tmp_path):
    path = write_cohort(tmp_path, slices={"t1": 3, "t2": 2})
    with pytest.raises(DatalistError, match="'t1_slices' has 3 slices but 't2_slices' has 2"):
        paired_slice_dataset(path, "t1", "t2", split="training")
    dataset = paired_slice_dataset(path, "t1", "t2", split="training", target_key="t1_slices")
    assert torch.equal(dataset[0]["A"], dataset[0]["B"])

    def add_truth(content):
        content["validation"][0]["truth_t2_in_t1_slices"] = ["sub-003/missing.nii.gz"] * 3

    edit_datalist(path, add_truth)
    with pytest.raises(DatalistError, match="truth_t2_in_t1_slices file of subject 'sub-003' does not exist"):
        paired_slice_dataset(path, "t1", "t2", target_key="truth_t2_in_t1_slices")


def test_paired_dataset_seeding():
    records = Dataset([{"A": torch.full((1, 2, 2), float(i)), "B": torch.zeros(1, 2, 2), "x": i} for i in range(3)])
    dataset = PairedDataset(records, seed=0)
    assert set(dataset[1]) == {"A", "B"} and int(dataset[1]["A"][0, 0, 0]) == 1
    assert set(PairedDataset(records, keys=None)[0]) == {"A", "B", "x"}


def test_2_5d_pair_shares_crop_and_flip_and_keeps_the_centre_target_channel(tmp_path):
    path = write_cohort(tmp_path, channels=3)
    dataset = paired_slice_dataset(path, "t1", "t2", split="training", train=True, crop_size=(24, 24),
                                   jitter_scale=1.25, slice_channels=3, target_centre_channel=True, seed=4)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["A"].shape == (3, 24, 24) and sample["B"].shape == (1, 24, 24)
        # Channel c of a slice is offset by c / 100 and the T2 by 0.03: B is the T1's centre channel + 0.03.
        torch.testing.assert_close(sample["B"][0] - sample["A"][1], torch.full((24, 24), 0.03), atol=1e-5, rtol=0)
        torch.testing.assert_close(sample["A"][2] - sample["A"][0], torch.full((24, 24), 0.02), atol=1e-5, rtol=0)


def _write_slice_indexes(path, geometry_of):
    """Slice indexes beside each subject's t1 and t2 slices; ``geometry_of(modality, position)`` gives the geometry."""
    def add(content):
        for items in (content[split] for split in ("training", "validation", "test")):
            for item in items:
                for modality in ("t1", "t2"):
                    index = {"slices": [{"file": Path(f).name, "geometry": geometry_of(modality, p).to_dict()}
                                        for p, f in enumerate(item[f"{modality}_slices"])]}
                    relative = f"{item['subject']}/slices/{modality}/index.json"
                    (path.parent / relative).write_text(json.dumps(index))
                    item[f"{modality}_slice_index"] = relative

    edit_datalist(path, add)


def _geometry(index, spacing=(1.0, 1.0, 1.0)):
    return SliceGeometry(axis=0, index=index, plane="axial", neighbours=0, original_shape=(32, 32),
                         padding=((0, 0), (0, 0)), output_shape=(32, 32), scale=(1.0, 1.0), volume_shape=(10, 32, 32),
                         spacing=spacing)


def test_pairs_on_one_grid_pass_and_pairs_on_different_grids_fail_before_loading(tmp_path):
    path = write_cohort(tmp_path)
    with pytest.raises(DatalistError, match=r"has no \['t1_slice_index', 't2_slice_index'\]"):
        paired_slice_dataset(path, "t1", "t2", split="training", check_grid=True)
    _write_slice_indexes(path, lambda modality, position: _geometry(position + 3))
    assert len(paired_slice_dataset(path, "t1", "t2", split="training", check_grid=True)) == 6

    _write_slice_indexes(path, lambda modality, position: _geometry(position + 3, (1.0, 1.0, 2.0 if modality == "t2" else 1.0)))
    with pytest.raises(GeometryError, match=r"sub-001.*volume spacing \[1.0, 1.0, 2.0\] differs"):
        paired_slice_dataset(path, "t1", "t2", split="training")
    _write_slice_indexes(path, lambda modality, position: _geometry(position + (4 if modality == "t2" else 3)))
    with pytest.raises(GeometryError, match="slice index 4 differs from 3"):
        paired_slice_dataset(path, "t1", "t2", split="training")
    # Unchecked on request (e.g. a truth cut elsewhere on purpose).
    assert len(paired_slice_dataset(path, "t1", "t2", split="training", check_grid=False)) == 6


def test_datalist_without_the_pair_key_fails_naming_it(tmp_path):
    path = write_cohort(tmp_path, modalities=("t1", "t2"))
    with pytest.raises(DatalistError, match="has no 't2_in_t1_slices'"):
        paired_slice_dataset(path, "t1", "t2_in_t1", split="training")
