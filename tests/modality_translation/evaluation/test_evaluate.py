"""Evaluation of translated volumes (modality_translation/evaluation/evaluate.py)."""

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from medgan_common.errors import GeometryError, InputReadError, PreprocessingError
from modality_translation.evaluation import FID_SKIPPED_NOTE, evaluate_translation, mr_metrics
from modality_translation.data.datalist import ModalityMismatchError
from modality_translation.inference import IntensityMapping, IntensityMismatchError

AFFINE = np.array([[0.0, -1.2, 0.0, 10.0], [0.0, 0.0, 1.4, -5.0], [2.0, 0.0, 0.0, 3.0], [0, 0, 0, 1]])


def _phantom(seed, shape=(32, 32, 32)):
    """(T2-like MR, CT in HU, head mask) of one subject, file voxel order."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    head = ((i - 15.5) / 13) ** 2 + ((j - 15.5) / 12) ** 2 + ((k - 15.5) / 11) ** 2 < 1
    brain = ((i - 15.5) / 10) ** 2 + ((j - 15.5) / 9) ** 2 + ((k - 15.5) / 8) ** 2 < 1
    mr = np.abs(rng.normal(0, 4, shape)) + 1
    mr[head] += 350 + 120 * np.sin(j[head] / 3.0 + seed)
    ct = np.full(shape, -1000.0)
    ct[head] = 1200.0  # skull
    ct[brain] = 30 + 8 * np.cos(k[brain] / 4.0) + rng.normal(0, 3, int(brain.sum()))
    return mr.astype(np.float32), ct.astype(np.float32), head


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), path)
    return str(path)


def _predictions(tmp_path, modality, make_pred, n=2):
    """A predictions datalist: per subject the target, the head mask and ``make_pred(target, mask)``."""
    items = []
    for s in range(n):
        mr, ct, head = _phantom(s)
        target = ct if modality == "ct" else mr
        folder = tmp_path / f"sub-{s}"
        items.append({
            "subject": f"sub-{s}",
            "target": _save(folder / "target.nii.gz", target),
            "mask": _save(folder / "mask.nii.gz", head),
            "pred": _save(folder / "pred.nii.gz", make_pred(target, head)),
        })
    path = tmp_path / "predictions.json"
    path.write_text(json.dumps({"test": items, "validation": []}))
    return path


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_identical_mr_gives_ssim_1_infinite_psnr_and_zero_mae(tmp_path):
    mapping = IntensityMapping("t2")
    datalist = _predictions(tmp_path, "t2", lambda target, mask: mapping.to_network(target, mask))
    summary = evaluate_translation(datalist, tmp_path / "eval", "target", "t2", mask_key="mask")
    rows = _read_csv(tmp_path / "eval" / "metrics.csv")
    assert [row["subject"] for row in rows] == ["sub-0", "sub-1"]
    for row in rows:
        assert float(row["ssim"]) == pytest.approx(1.0, abs=1e-6)
        assert float(row["ssim_masked"]) == pytest.approx(1.0, abs=1e-6)
        assert math.isinf(float(row["psnr_db"])) and float(row["mae"]) == 0.0
    assert summary["ssim"]["mean"] == pytest.approx(1.0, abs=1e-6) and summary["ssim"]["n"] == 2
    assert summary["ssim_masked"]["mean"] == pytest.approx(1.0, abs=1e-6) and summary["ssim_masked"]["n"] == 2
    assert summary["psnr_db"]["n_non_finite"] == 2 and summary["psnr_db"]["mean"] is None
    assert summary["fid"] == {"value": None, "note": FID_SKIPPED_NOTE}
    assert summary["evaluation"]["data_range"] == 2.0 and summary["evaluation"]["units"] == "normalised"
    assert json.loads((tmp_path / "eval" / "metrics_summary.json").read_text()) == summary


def test_mr_metrics_on_the_normalised_scale():
    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, (16, 16, 16)).astype(np.float32)
    mask = np.zeros(target.shape, bool)
    mask[2:14, 2:14, 2:14] = True
    pred = target + np.float32(0.1)
    values = mr_metrics(pred, target, mask, data_range=2.0)
    assert values["mae"] == pytest.approx(0.1, abs=1e-6)
    assert values["psnr_db"] == pytest.approx(10 * math.log10(4.0 / 0.01), abs=1e-3)  # MSE 0.01, data range 2
    # An offset of 5 % of the range: the shift to non-negative values keeps SSIM's luminance term near 1.
    assert 0.99 < values["ssim"] < 1.0
    assert 0.99 < values["ssim_masked"] < 1.0
    noisy = np.where(mask, target + rng.normal(0, 0.5, target.shape), target).astype(np.float32)
    assert mr_metrics(noisy, target, mask, 2.0)["ssim_masked"] < 0.9
    # A prediction that differs only outside the mask is perfect.
    outside = np.where(mask, target, 0.7).astype(np.float32)
    assert mr_metrics(outside, target, mask, 2.0)["mae"] == 0.0


def test_ct_metrics_in_hu_with_synthrad_conventions(tmp_path):
    identical = evaluate_translation(_predictions(tmp_path / "a", "ct", lambda t, m: t), tmp_path / "a" / "eval",
                                     "target", "ct", mask_key="mask")
    assert identical["mae_hu"]["mean"] == 0.0 and identical["ssim"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert identical["ssim_masked"]["mean"] == pytest.approx(1.0, abs=1e-6)
    assert identical["evaluation"]["units"] == "HU" and identical["evaluation"]["data_range"] == 4024.0
    shifted = evaluate_translation(_predictions(tmp_path / "b", "ct", lambda t, m: t + 25.0), tmp_path / "b" / "eval",
                                   "target", "ct", mask_key="mask")
    rows = _read_csv(tmp_path / "b" / "eval" / "metrics.csv")
    assert [float(row["mae_hu"]) for row in rows] == pytest.approx([25.0, 25.0], abs=1e-5)  # float32 files
    # Inside the clipping range a 25 HU offset gives PSNR 20 log10(4024 / 25) in the mask.
    assert float(rows[0]["psnr_db"]) == pytest.approx(20 * math.log10(4024 / 25), abs=0.05)
    assert shifted["mae_hu"]["mean"] == pytest.approx(25.0) and shifted["mae_hu"]["std"] == pytest.approx(0.0, abs=1e-6)


def test_mask_computed_from_the_target_when_no_mask_key(tmp_path):
    datalist = _predictions(tmp_path, "ct", lambda t, m: np.where(m, t + 10.0, t))
    summary = evaluate_translation(datalist, tmp_path / "eval", "target", "ct")
    # head_mask_ct (> -500 HU) is the head: every voxel of it is 10 HU off.
    assert summary["mae_hu"]["mean"] == pytest.approx(10.0)
    assert summary["evaluation"]["mask_key"] is None


class _MeanAndSpread(nn.Module):
    """Stand-in feature model: per-image mean and standard deviation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1)], dim=1)


def test_fid_from_a_local_torchscript_file_built_from_a_bundle_config(tmp_path):
    model = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(_MeanAndSpread()), str(model))
    mapping = IntensityMapping("t2")
    datalist = _predictions(tmp_path, "t2", lambda target, mask: mapping.to_network(target, mask))
    config = {"evaluate": {
        "_target_": "modality_translation.evaluation.evaluate_translation",
        "datalist": str(datalist), "output_dir": str(tmp_path / "eval"), "target_key": "target", "modality": "t2",
        "mask_key": "mask", "fid_model_path": str(model), "fid_image_size": 32,
    }}
    summary = ConfigParser(config).get_parsed_content("evaluate")
    # Identical slices: identical features, FID 0; one slice per axial plane with head voxels.
    assert summary["fid"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert summary["fid"]["n_pred_slices"] == summary["fid"]["n_target_slices"] > 40


def test_errors_before_any_work(tmp_path):
    datalist = _predictions(tmp_path, "ct", lambda t, m: t)
    output_dir = tmp_path / "eval"
    items = json.loads(datalist.read_text())["test"]

    missing = [dict(items[0]), {**items[1], "pred": str(tmp_path / "sub-1" / "gone.nii.gz")}]
    with pytest.raises(InputReadError, match=r"gone.nii.gz: prediction \('pred' of subject 'sub-1'\) does not exist"):
        evaluate_translation(missing, output_dir, "target", "ct", mask_key="mask")
    no_target = [{**items[0], "target": str(tmp_path / "nowhere.nii.gz")}]
    with pytest.raises(InputReadError, match=r"nowhere.nii.gz: target \('target' of subject 'sub-0'\) does not exist"):
        evaluate_translation(no_target, output_dir, "target", "ct")

    shifted = AFFINE.copy()
    shifted[:3, 3] += 2.0
    moved = _save(tmp_path / "moved.nii.gz", np.zeros((32, 32, 32)), shifted)
    with pytest.raises(GeometryError, match=r"moved.nii.gz: target affine .* differs from .* of .*sub-0/pred.nii.gz"):
        evaluate_translation([{**items[0], "target": moved}], output_dir, "target", "ct")
    small = _save(tmp_path / "small.nii.gz", np.zeros((32, 32, 30)))
    with pytest.raises(GeometryError, match=r"small.nii.gz: head mask shape \(32, 32, 30\) differs from \(32, 32, 32\) of .*sub-0/pred.nii.gz"):
        evaluate_translation([{**items[0], "mask": small}], output_dir, "target", "ct", mask_key="mask")

    with pytest.raises(PreprocessingError, match="datalist split 'validation' is empty"):
        evaluate_translation(datalist, output_dir, "target", "ct", split="validation")
    with pytest.raises(PreprocessingError, match="datalist split 'test' is empty"):
        evaluate_translation([], output_dir, "target", "ct")
    with pytest.raises(FileNotFoundError, match="FID TorchScript model not found"):
        evaluate_translation(datalist, output_dir, "target", "ct", fid_model_path=tmp_path / "inception.pt")
    assert not output_dir.exists()


def _labelled_predictions(tmp_path, offset_of_label):
    """CT predictions with a label map: 0 air (the outside, and a cavity inside the head), 1 soft tissue, 3 bone."""
    items = []
    for s in range(2):
        _, ct, head = _phantom(s)
        labels = np.where(head, 3, 0).astype(np.uint8)
        labels[(ct < 500) & head] = 1
        labels[12:15, 12:15, 12:15] = 0  # an air cavity inside the head
        ct[12:15, 12:15, 12:15] = -1000.0
        pred = ct + np.vectorize(offset_of_label.get)(labels)
        pred[~head] = 0.0  # outside the mask: never counted
        folder = tmp_path / f"sub-{s}"
        items.append({"subject": f"sub-{s}", "truth_ct_in_t2": _save(folder / "truth_ct_in_t2.nii.gz", ct),
                      "t2_mask": _save(folder / "mask.nii.gz", head), "labels": _save(folder / "labels.nii.gz", labels),
                      "pred": _save(folder / "pred.nii.gz", pred)})
    return items


def test_ct_mae_per_tissue_class_from_a_label_map(tmp_path):
    items = _labelled_predictions(tmp_path, {0: 100.0, 1: 100.0, 3: 100.0})
    summary = evaluate_translation(items, tmp_path / "eval", "truth_ct_in_t2", "ct", mask_key="t2_mask",
                                   labels_key="labels")
    rows = _read_csv(tmp_path / "eval" / "metrics.csv")
    assert list(rows[0]) == ["subject", "mae_hu", "psnr_db", "ssim", "ssim_masked", "mae_hu_air", "mae_hu_soft_tissue",
                             "mae_hu_bone"]
    for name in ("mae_hu", "mae_hu_air", "mae_hu_soft_tissue", "mae_hu_bone"):
        assert summary[name]["mean"] == pytest.approx(100.0, abs=1e-4) and summary[name]["n"] == 2
    assert summary["psnr_db"]["mean"] == pytest.approx(20 * math.log10(4024 / 100), abs=1e-3)
    evaluation = summary["evaluation"]
    assert evaluation["tissue_classes"] == {"air": [0], "soft_tissue": [1, 2, 4, 5, 6, 7], "bone": [3, 8]}
    assert evaluation["labels_key"] == "labels" and evaluation["ssim_outside_mask_hu"] == -1024.0

    # Each class its own error; a class map from the config; a class no subject has is left empty.
    items = _labelled_predictions(tmp_path / "b", {0: 50.0, 1: -20.0, 3: 300.0})
    summary = evaluate_translation(items, tmp_path / "b" / "eval", "truth_ct_in_t2", "ct", mask_key="t2_mask",
                                   labels_key="labels", tissue_classes={"air": [0], "bone": [3], "metal": [12]})
    assert summary["mae_hu_air"]["mean"] == pytest.approx(50.0, abs=1e-4)
    assert summary["mae_hu_bone"]["mean"] == pytest.approx(300.0, abs=1e-3)
    assert summary["mae_hu_metal"] == {"mean": None, "std": None, "median": None, "n": 0, "n_non_finite": 0}
    assert _read_csv(tmp_path / "b" / "eval" / "metrics.csv")[0]["mae_hu_metal"] == ""


def test_ct_evaluation_refuses_mr_targets_network_scale_values_and_bad_label_maps(tmp_path):
    items = _labelled_predictions(tmp_path, {0: 10.0, 1: 10.0, 3: 10.0})
    output_dir = tmp_path / "eval"
    with pytest.raises(ModalityMismatchError, match="target_key 'truth_t2_in_t2' holds a T2 image, but the evaluation's "
                                                     "target modality is CT"):
        evaluate_translation([{**items[0], "truth_t2_in_t2": items[0]["truth_ct_in_t2"]}], output_dir,
                             "truth_t2_in_t2", "ct")
    mr_file = _save(tmp_path / "sub-0" / "sub-0_t2.nii.gz", _phantom(0)[0])
    with pytest.raises(ModalityMismatchError, match=r"sub-0_t2.nii.gz: is named as a T2 image but is used as CT"):
        evaluate_translation([{**items[0], "target": mr_file}], output_dir, "target", "ct")
    windowed = _save(tmp_path / "sub-0" / "windowed.nii.gz", np.clip(_phantom(0)[1] / 1500.0, -1, 1))
    with pytest.raises(IntensityMismatchError, match=r"windowed.nii.gz: the target should be CT in Hounsfield units, "
                                                      r"but its values span \[-0.66.*\], within the network range"):
        evaluate_translation([{**items[0], "target": windowed}], output_dir, "target", "ct")
    with pytest.raises(IntensityMismatchError, match=r"windowed.nii.gz: the prediction should be CT in Hounsfield units"):
        evaluate_translation([{**items[0], "pred": windowed}], output_dir, "truth_ct_in_t2", "ct")
    with pytest.raises(ValueError, match="labels_key 'labels': the MAE per tissue class is a CT metric in HU; the "
                                         "target modality is T2"):
        evaluate_translation(items, output_dir, "truth_ct_in_t2", "t2", labels_key="labels")
    with pytest.raises(ValueError, match="label 8 is in two tissue classes"):
        evaluate_translation(items, output_dir, "truth_ct_in_t2", "ct", labels_key="labels",
                             tissue_classes={"bone": [3, 8], "marrow": [8]})
    off_grid = _save(tmp_path / "sub-0" / "labels_small.nii.gz", np.zeros((32, 32, 30), np.uint8))
    with pytest.raises(GeometryError, match=r"labels_small.nii.gz: tissue labels shape \(32, 32, 30\) differs"):
        evaluate_translation([{**items[0], "labels": off_grid}], output_dir, "truth_ct_in_t2", "ct", labels_key="labels")
    assert not output_dir.exists()
