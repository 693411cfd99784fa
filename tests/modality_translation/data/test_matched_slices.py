"""Target volumes cut at the recorded geometry of a datalist's source slices."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medgan_common.errors import GeometryError
from modality_translation.data.datalist import DatalistError, ModalityMismatchError
from modality_translation.data.matched_slices import matched_slice_dataset, matched_target_slices
from preprocessing.slices import extract_slices, save_slices

SHAPE = (12, 20, 16)  # [z, y, x]
SPACING = (3.0, 1.5, 3.0)  # (x, y, z) mm: 48 mm wide, 30 mm high, so slices are padded to a square
ORIGIN = (-10.0, 5.0, 2.0)
WINDOW = {"center": 40.0, "width": 400.0}  # HU [-160, 240] -> [-1, 1]


def image(array: np.ndarray, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    result = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    result.SetSpacing(spacing)
    result.SetOrigin(origin)
    return result


def source_volume() -> np.ndarray:
    """A [-1, 1] volume varying along every axis."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return np.clip(0.5 * x + 0.3 * y + 0.2 * z, -1, 1).astype(np.float32)


def write_subject(root, subject, target_hu, target_name, indices=(3, 4, 7), target_spacing=SPACING):
    """Source slices of ``source_volume`` (as the cohort runner writes them) and a CT target volume in HU."""
    folder = root / subject
    slices, geometries = extract_slices(
        image(source_volume()), "axial", {"mode": "indices", "indices": list(indices)},
        output_shape=(16, 16), intensity_range=(-1.0, 1.0), out_range=(-1.0, 1.0),
    )
    paths = save_slices(slices, geometries, folder / "slices" / "t2", f"{subject}_t2")
    sitk.WriteImage(image(target_hu, spacing=target_spacing), str(folder / target_name))
    return {
        "subject": subject,
        "t2": f"{subject}/{subject}_t2.nii.gz",
        "t2_slices": [str(p.relative_to(root)) for p in paths[:-1]],
        "t2_slice_index": str(paths[-1].relative_to(root)),
        "truth_ct_in_t2": f"{subject}/{target_name}",
    }


def write_datalist(root, items, split="validation"):
    content = {"modalities": ["ct", "t2"], "ct_window": {**WINDOW, "out_range": [-1.0, 1.0]}, split: items}
    path = root / "dataset.json"
    path.write_text(json.dumps(content))
    return path


def hu_of(window_values: np.ndarray) -> np.ndarray:
    """HU whose window value (centre 40, width 400) is ``window_values``."""
    return WINDOW["center"] + window_values * WINDOW["width"] / 2


def test_target_slices_match_the_source_slices_cut_at_the_same_geometry(tmp_path):
    # The target is the source volume expressed in HU: once windowed, its slices must equal the
    # source slices, whatever padding and resizing the geometry recorded.
    item = write_subject(tmp_path, "sub-01", hu_of(source_volume()), "sub-01_truth_ct_in_t2.nii.gz")
    datalist = write_datalist(tmp_path, [item])
    dataset = matched_slice_dataset(datalist, "t2", "truth_ct_in_t2", "ct")
    assert len(dataset) == 3
    for sample in dataset:
        assert sample["A"].shape == sample["B"].shape == (1, 16, 16)
        assert sample["A"].dtype == sample["B"].dtype == torch.float32
        np.testing.assert_allclose(sample["B"].numpy(), sample["A"].numpy(), atol=1e-5)
    # Different slices really differ (the test would pass trivially on a constant volume).
    assert not torch.allclose(dataset[0]["B"], dataset[2]["B"])


def test_target_values_are_windowed_with_the_cohorts_window_and_clipped(tmp_path):
    target_hu = np.full(SHAPE, 140.0, dtype=np.float32)  # window value (140 - 40) / 200 = 0.5
    target_hu[:, :, :4] = 5000.0  # above the window: clipped to 1
    item = write_subject(tmp_path, "sub-01", target_hu, "sub-01_truth_ct_in_t2.nii.gz", indices=(5,))
    dataset = matched_slice_dataset(write_datalist(tmp_path, [item]), "t2", "truth_ct_in_t2", "ct")
    values = dataset[0]["B"].numpy()[0]
    assert values[8, 12] == pytest.approx(0.5, abs=1e-5)
    assert values[8, 0] == pytest.approx(1.0, abs=1e-5)  # the first 4 columns, 5000 HU
    # Rows: 30 mm padded to the 48 mm of the columns, with the background -1.
    assert values[1, 12] == pytest.approx(-1.0, abs=1e-5)


def test_target_on_the_network_scale_passes_through_and_crop_size_resizes(tmp_path):
    item = write_subject(tmp_path, "sub-01", source_volume(), "sub-01_t2_in_t1.nii.gz")
    item["t2_in_t1"] = item.pop("truth_ct_in_t2")
    datalist = write_datalist(tmp_path, [item])
    dataset = matched_slice_dataset(datalist, "t2", "t2_in_t1", "t2", target_intensity={"on_network_scale": True},
                                    crop_size=(32, 32))
    sample = dataset[1]
    assert sample["A"].shape == sample["B"].shape == (1, 32, 32)
    np.testing.assert_allclose(sample["B"].numpy(), sample["A"].numpy(), atol=1e-5)


def test_order_follows_the_datalist_not_the_slice_index(tmp_path):
    item = write_subject(tmp_path, "sub-01", hu_of(source_volume()), "sub-01_truth_ct_in_t2.nii.gz")
    item["t2_slices"] = list(reversed(item["t2_slices"]))
    dataset = matched_slice_dataset(write_datalist(tmp_path, [item]), "t2", "truth_ct_in_t2", "ct")
    for sample in dataset:
        np.testing.assert_allclose(sample["B"].numpy(), sample["A"].numpy(), atol=1e-5)


def test_matched_target_slices_refuses_geometries_of_different_volumes():
    _, first = extract_slices(image(source_volume()), "axial", {"mode": "indices", "indices": [1]}, output_shape=(8, 8))
    _, second = extract_slices(image(source_volume()), "axial", {"mode": "indices", "indices": [2]}, output_shape=(16, 16))
    with pytest.raises(ValueError, match="different volumes or settings"):
        matched_target_slices(source_volume(), [first[0], second[0]])
    with pytest.raises(ValueError, match="no slice geometries"):
        matched_target_slices(source_volume(), [])


def test_target_on_another_grid_is_refused_naming_both_files(tmp_path):
    item = write_subject(tmp_path, "sub-01", hu_of(source_volume()), "sub-01_truth_ct_in_t2.nii.gz",
                         target_spacing=(3.0, 1.5, 2.5))
    with pytest.raises(GeometryError, match=r"spacing .* differs .*_t2_slices\.json"):
        matched_slice_dataset(write_datalist(tmp_path, [item]), "t2", "truth_ct_in_t2", "ct")


def test_missing_keys_and_wrong_modality_names_are_refused(tmp_path):
    item = write_subject(tmp_path, "sub-01", hu_of(source_volume()), "sub-01_truth_ct_in_t2.nii.gz")
    datalist = write_datalist(tmp_path, [item])
    with pytest.raises(DatalistError, match="has no 'truth_t1_in_t2' file"):
        matched_slice_dataset(datalist, "t2", "truth_t1_in_t2", "t1")
    with pytest.raises(DatalistError, match="has no 't1_slices' slice list"):
        matched_slice_dataset(datalist, "t1", "truth_ct_in_t2", "ct")
    with pytest.raises(DatalistError, match="datalist has no split 'test'"):
        matched_slice_dataset(datalist, "t2", "truth_ct_in_t2", "ct", split="test")
    # A T1 file given as the CT target.
    (tmp_path / "sub-01" / "sub-01_truth_ct_in_t2.nii.gz").rename(tmp_path / "sub-01" / "sub-01_t1.nii.gz")
    item["truth_ct_in_t2"] = "sub-01/sub-01_t1.nii.gz"
    with pytest.raises(ModalityMismatchError, match="named as a T1 image but is used as CT"):
        matched_slice_dataset(write_datalist(tmp_path, [item]), "t2", "truth_ct_in_t2", "ct")


def test_head_mask_is_cut_like_the_slices_from_the_mask_file_or_the_target(tmp_path):
    target_hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    target_hu[:, 6:14, 4:12] = 40.0  # a "head" block of soft tissue in air
    item = write_subject(tmp_path, "sub-01", target_hu, "sub-01_truth_ct_in_t2.nii.gz", indices=(5,))
    box = np.zeros(SHAPE, dtype=np.uint8)
    box[:, 2:18, 2:14] = 1  # a larger mask file, to tell it from the mask computed from the target
    sitk.WriteImage(image(box), str(tmp_path / "sub-01" / "sub-01_t2_mask.nii.gz"))
    item["t2_mask"] = "sub-01/sub-01_t2_mask.nii.gz"
    datalist = write_datalist(tmp_path, [item])

    from_file = matched_slice_dataset(datalist, "t2", "truth_ct_in_t2", "ct", mask_key="t2_mask", mask_output_key="mask")[0]
    computed = matched_slice_dataset(datalist, "t2", "truth_ct_in_t2", "ct", mask_output_key="mask", crop_size=(32, 32))[0]
    expected_box = extract_slices(image(box.astype(np.float32)), "axial", {"mode": "indices", "indices": [5]},
                                  output_shape=(16, 16), interpolation="nearest-exact", pad_value=0.0)[0][0] > 0.5
    np.testing.assert_array_equal(from_file["mask"].numpy()[0], expected_box.astype(np.float32))
    assert set(np.unique(computed["mask"].numpy())) == {0.0, 1.0} and computed["mask"].shape == (1, 32, 32)
    # The computed head mask covers the tissue block only, a smaller part of the slice than the mask file.
    assert 0 < computed["mask"].mean() < 0.6 * from_file["mask"].mean()
    assert "mask" not in matched_slice_dataset(datalist, "t2", "truth_ct_in_t2", "ct", mask_key="t2_mask")[0]
