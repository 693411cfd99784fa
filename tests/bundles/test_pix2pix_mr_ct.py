"""The MR -> CT pix2pix bundle, run as a user runs it: train, resume, infer (HU, DICOM), evaluate, verify, export, fail early."""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigWorkflow
from monai.bundle import run as run_in_process

from medgan_common.errors import GeometryError
from modality_translation.data.datalist import DatalistError, ModalityMismatchError
from modality_translation.engines import checkpoint_path
from modality_translation.inference import IntensityMismatchError
from tests.bundles.helpers import (
    BUNDLES,
    TINY_NETWORKS,
    TINY_TRAINING,
    absolute_datalist_copy,
    assert_killed_training_resumes_exactly,
    assert_pix2pix_generator_exports,
    assert_predictions_on_source_grids,
    assert_two_process_pix2pix_training,
    datalist_with_pair_on_another_grid,
    datalist_without_pair,
    fail_before_training,
    infer,
    load_generators,
    pix2pix_training_workflow,
    read_metrics,
    root_cause,
    run_bundle,
    split_items,
    train,
    training_args,
    verify_metadata_and_network_shapes,
)

BUNDLE = BUNDLES / "pix2pix_mr_ct"
CONFIGS = BUNDLE / "configs"
TRAIN_CONFIG = "bundles/pix2pix_mr_ct/configs/train.json"
METRICS = ("val_sct_ssim", "val_sct_mae_hu", "val_sct_psnr")


def window_of(dataset: Path) -> tuple[float, float]:
    """The HU range of the cohort's CT window: what a synthetic CT in HU can span."""
    window = json.loads((dataset / "dataset.json").read_text())["ct_window"]
    return window["center"] - window["width"] / 2, window["center"] + window["width"] / 2


def validation_metrics(log: str) -> dict[str, list[float]]:
    return {name: [float(v) for v in re.findall(rf"Metrics -- .*{name}: ([-\d.]+|inf|nan)", log)] for name in METRICS}


@pytest.fixture(scope="module")
def trained(demo_dataset, tmp_path_factory):
    """Two epochs of T2 -> CT training, from the repository root."""
    folder = tmp_path_factory.mktemp("pix2pix_mr_ct_training")
    return folder, train(TRAIN_CONFIG, demo_dataset, folder)


def test_training_writes_checkpoints_model_grids_and_validation_metrics_in_hu(demo_dataset, trained):
    folder, log = trained
    models, grids = folder / "models", folder / "eval" / "grids"
    assert checkpoint_path(models, 1).is_file() and checkpoint_path(models, 2).is_file()
    assert set(torch.load(checkpoint_path(models, 2), weights_only=True)) >= {
        "generator", "discriminator", "g_optimizer", "d_optimizer", "g_scheduler", "d_scheduler", "trainer", "rng"}
    assert load_generators(models)["down.4.1.weight"].shape == (64, 64, 4, 4)  # the tiny 5-level U-Net
    for name in ("train", "validation_t2_to_ct"):
        assert (grids / f"{name}_epoch=2.png").stat().st_size > 1000
    metrics = validation_metrics(log)
    low, high = window_of(demo_dataset)
    assert all(len(values) == 2 for values in metrics.values())
    # HU, not the network scale: a barely trained generator is tens to hundreds of HU off inside the head.
    assert all(1.0 < v < high - low for v in metrics["val_sct_mae_hu"])
    assert all(-1.0 <= v <= 1.0 for v in metrics["val_sct_ssim"]) and all(v > 0 for v in metrics["val_sct_psnr"])
    assert re.search(r"loss_reconstruction: [\d.]+", log) and re.search(r"loss_D: [\d.]+", log)


def test_validation_scores_in_hu_through_the_recorded_windows_inverse(demo_dataset, tmp_path, monkeypatch):
    """The config's validation chain on real validation slices: an error of 0.1 on the network scale is
    0.1 x width / 2 HU (150 HU for the demo window of width 3000) wherever both images lie inside the window."""
    monkeypatch.chdir(tmp_path)
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), logging_file=False, workflow_type="train",
                              bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), ckpt_dir=str(tmp_path / "models"),
                              output_dir=str(tmp_path / "eval"), **TINY_TRAINING)
    workflow.initialize()
    parser = workflow.parser
    dataset = parser.get_parsed_content("validate#dataset")
    low, high = window_of(demo_dataset)
    samples = [dataset[i] for i in range(0, len(dataset), max(1, len(dataset) // 6))]
    label = torch.stack([s["B"] for s in samples])
    mask = torch.stack([s["mask"] for s in samples])
    assert label.min() >= -1.0 and label.max() <= 1.0 and mask.sum() > 0
    inside = (mask > 0) & (label < 0.9)
    shifted = torch.where(label < 0.9, label + 0.1, label)  # 150 HU too dense where it stays in the window
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    outputs = [postprocessing({"pred": p, "label": t, "mask": m}) for p, t, m in zip(shifted, label, mask)]
    pred_hu = torch.stack([torch.as_tensor(o["pred_hu"]) for o in outputs])
    label_hu = torch.stack([torch.as_tensor(o["label_hu"]) for o in outputs])
    assert label_hu.min() >= low - 1e-3 and label_hu.max() <= high + 1e-3  # HU through the window's inverse
    np.testing.assert_allclose((pred_hu - label_hu)[inside].numpy(), 0.1 * (high - low) / 2, atol=1e-2)
    # SynthRAD's images: clipped to [-1024, 3000] and shifted by 1024, 0 (-1024 HU) outside the mask.
    np.testing.assert_allclose(torch.as_tensor(outputs[0]["label"]).numpy(),
                               np.where(mask[0] > 0, np.clip(label_hu[0].numpy(), -1024, 3000) + 1024, 0), atol=1e-2)
    metrics = {name: parser.get_parsed_content(f"validate#{group}#{name}")
               for group, names in (("key_metric", ["val_sct_ssim"]), ("additional_metrics", ["val_sct_mae_hu"]))
               for name in names}
    batch = [{k: torch.as_tensor(o[k]) for k in ("pred", "label", "pred_hu", "label_hu", "head_mask")} for o in outputs]
    exact = [{**o, "pred": o["label"], "pred_hu": o["label_hu"]} for o in batch]
    for output, expected_mae in ((exact, 0.0), (batch, None)):
        for metric in metrics.values():
            metric.reset()
            metric.update(metric._output_transform(output))
        if expected_mae == 0.0:
            assert metrics["val_sct_mae_hu"].compute() == 0.0
            assert metrics["val_sct_ssim"].compute() == pytest.approx(1.0, abs=1e-6)
        else:
            assert 140.0 < metrics["val_sct_mae_hu"].compute() <= 150.0 + 1e-2  # 150 HU where shifted


def test_killed_training_resumes_at_its_epoch_with_the_same_state(demo_dataset, trained, tmp_path):
    assert_killed_training_resumes_exactly(TRAIN_CONFIG, demo_dataset, tmp_path, trained[0])


def test_multi_process_training_with_distributed_data_parallel(demo_dataset, tmp_path):
    assert_two_process_pix2pix_training("pix2pix_mr_ct", demo_dataset, tmp_path, "val_sct_mae_hu")


@pytest.fixture(scope="module")
def inferred(demo_dataset, trained):
    """Inference on the test split, run from inside the bundle folder, with DICOM output."""
    folder, _ = trained
    return infer("configs/inference.json", demo_dataset, folder, cwd=BUNDLE)


def test_inference_writes_synthetic_ct_in_hu_on_the_mr_grid_and_a_synthetic_ct_dicom_series(demo_dataset, inferred):
    low, high = window_of(demo_dataset)
    arrays = assert_predictions_on_source_grids(demo_dataset, inferred, "t2_to_ct", "t2")
    for values in arrays:  # Hounsfield units, inside the cohort's window
        assert low - 1e-3 <= values.min() and values.max() <= high + 1e-3 and np.ptp(values) > 10
    subject = split_items(demo_dataset)[0]["subject"]
    nifti = sitk.ReadImage(str(inferred / "t2_to_ct" / subject / "pred.nii.gz"))
    folder = inferred / "t2_to_ct" / subject / "pred_dicom"
    files = sorted(folder.glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"] and first.Modality == "CT"
    assert "SYNTHETIC" in first.SeriesDescription and first.SeriesDescription == "SYNTHETIC CT FROM T2"
    assert (float(first.RescaleSlope), float(first.RescaleIntercept), first.RescaleType) == (1.0, -1024.0, "HU")
    assert first.PatientID == subject
    # pydicom: each slice's stored values through the rescale are the NIfTI's HU at that position, rounded.
    hu_volume = sitk.GetArrayFromImage(nifti)
    for path in files[:: max(1, len(files) // 4)]:
        ds = pydicom.dcmread(path)
        k = nifti.TransformPhysicalPointToIndex([float(v) for v in ds.ImagePositionPatient])[2]
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(hu - hu_volume[k]).max() <= 0.5
    # SimpleITK (GDCM) reads the series back onto the NIfTI's grid with the same HU within rounding.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    resampled = sitk.Resample(series, nifti, sitk.Transform(), sitk.sitkNearestNeighbor)
    assert series.GetSize() == nifti.GetSize()
    np.testing.assert_allclose(series.GetSpacing(), nifti.GetSpacing(), atol=1e-4)
    assert np.abs(sitk.GetArrayFromImage(resampled) - hu_volume).max() <= 0.5


def test_evaluation_follows_synthrad_and_gives_the_mae_per_tissue_class(demo_dataset, inferred):
    run_bundle("run", "evaluate", "--config_file", "bundles/pix2pix_mr_ct/configs/evaluate.json",
               "--dataset_dir", str(demo_dataset), "--output_dir", str(inferred))
    rows, summary = read_metrics(inferred / "t2_to_ct")
    assert [row["subject"] for row in rows] == [item["subject"] for item in split_items(demo_dataset)]
    assert list(rows[0]) == ["subject", "mae_hu", "psnr_db", "ssim", "ssim_masked", "mae_hu_air", "mae_hu_soft_tissue",
                             "mae_hu_bone"]
    for row in rows:
        assert float(row["mae_hu"]) > 0 and float(row["psnr_db"]) > 0 and -1.0 <= float(row["ssim"]) <= 1.0
        assert float(row["mae_hu_soft_tissue"]) > 0 and float(row["mae_hu_bone"]) > 0
    evaluation = summary["evaluation"]
    assert (evaluation["units"], evaluation["target_key"], evaluation["mask_key"]) == ("HU", "truth_ct_in_t2", "t2_mask")
    assert evaluation["conventions"] == "SynthRAD2023" and evaluation["data_range"] == 4024.0
    assert evaluation["psnr_ssim_clip_hu"] == [-1024.0, 3000.0] and evaluation["labels_key"] == "truth_labels_in_t2"
    assert evaluation["tissue_classes"] == {"air": [0], "soft_tissue": [1, 2, 4, 5, 6, 7], "bone": [3, 8]}


def test_evaluation_against_the_subjects_own_ct_without_labels(demo_dataset, inferred, tmp_path):
    """A cohort without truth (SynthRAD2023): the registered CT in HU as the target, no tissue classes."""
    shutil.copytree(inferred / "t2_to_ct", tmp_path / "t2_to_ct")
    run_in_process("evaluate", config_file=str(CONFIGS / "evaluate.json"), logging_file=False,
                   bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), output_dir=str(tmp_path), target_key="ct_in_t2_hu", labels_key="$None")
    rows, summary = read_metrics(tmp_path / "t2_to_ct")
    assert list(rows[0]) == ["subject", "mae_hu", "psnr_db", "ssim", "ssim_masked"]
    assert summary["evaluation"]["target_key"] == "ct_in_t2_hu" and "tissue_classes" not in summary["evaluation"]
    assert all(float(row["mae_hu"]) > 0 for row in rows)


def test_metadata_network_shapes_and_export(trained, tmp_path):
    verify_metadata_and_network_shapes(CONFIGS)
    assert_pix2pix_generator_exports(CONFIGS, trained[0] / "models", tmp_path / "model.ts")


def test_model_zoo_training_properties_and_the_paper_recipe(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workflow = pix2pix_training_workflow(CONFIGS, demo_dataset, tmp_path)
    # The pairs: the subject's T2 slices with the same slices of its own CT registered onto that T2.
    records = workflow.parser.get_parsed_content("train#dataset").dataset.data
    assert all("_t2_" in Path(r["A"]).name or "/t2/" in r["A"] for r in records)
    assert all("ct_in_t2" in r["B"] for r in records)


def test_t1_to_ct_by_one_override_from_training_to_evaluation(demo_dataset, tmp_path):
    log = run_bundle("run", *training_args(TRAIN_CONFIG, demo_dataset, tmp_path, "--source", "t1", epochs=1)).stdout
    assert len(validation_metrics(log)["val_sct_mae_hu"]) == 1
    assert (tmp_path / "eval" / "grids" / "validation_t1_to_ct_epoch=1.png").is_file()
    run_bundle("run", "inference", "--config_file", "bundles/pix2pix_mr_ct/configs/inference.json", "--dataset_dir",
               str(demo_dataset), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
               "--source", "t1", *[part for k, v in TINY_NETWORKS.items() for part in (f"--{k}", str(v))])
    low, high = window_of(demo_dataset)
    items = split_items(demo_dataset)
    for item in items:
        pred = nib.load(tmp_path / "eval" / "t1_to_ct" / item["subject"] / "pred.nii.gz")
        source = nib.load(demo_dataset / item["t1"])
        assert pred.shape == source.shape and np.allclose(pred.affine, source.affine, atol=1e-4)
        values = pred.get_fdata()
        assert low - 1e-3 <= values.min() and values.max() <= high + 1e-3
    run_bundle("run", "evaluate", "--config_file", "bundles/pix2pix_mr_ct/configs/evaluate.json", "--dataset_dir",
               str(demo_dataset), "--output_dir", str(tmp_path / "eval"), "--source", "t1")
    rows, summary = read_metrics(tmp_path / "eval" / "t1_to_ct")
    assert [row["subject"] for row in rows] == [item["subject"] for item in items]
    assert summary["evaluation"]["target_key"] == "truth_ct_in_t1" and summary["evaluation"]["mask_key"] == "t1_mask"
    assert summary["evaluation"]["labels_key"] == "truth_labels_in_t1"


def test_datalist_without_the_pair_fails_before_training(demo_dataset, tmp_path):
    copy = datalist_without_pair(demo_dataset, tmp_path / "cohort", "ct_in_t2")
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy))
    assert isinstance(error, DatalistError) and "'ct_in_t2_slices'" in str(error)
    assert str(error).startswith(str(copy / "dataset.json"))


def test_pair_on_another_grid_fails_before_training(demo_dataset, tmp_path):
    def shifted_by_5_mm(geometry):  # the CT as if resampled onto a grid shifted by 5 mm
        geometry["origin"][0] += 5.0

    copy, moved_index = datalist_with_pair_on_another_grid(demo_dataset, tmp_path, "ct_in_t2", shifted_by_5_mm)
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy))
    assert isinstance(error, GeometryError) and str(error).startswith(str(moved_index))
    assert "volume origin" in str(error) and "a pair must be cut at the same place of one grid" in str(error)


def test_neighbour_count_other_than_the_data_fails_before_training(demo_dataset, tmp_path):
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(demo_dataset), neighbours=1)
    assert isinstance(error, DatalistError) and "has 1 channel(s), expected 3" in str(error)


def test_a_ct_source_is_refused_before_any_data_is_read(tmp_path):
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(tmp_path / "no_cohort"), source="ct")
    assert isinstance(error, ValueError) and str(error).startswith("source: 'ct' is not an MR modality")


def run_inference_in_process(dataset_dir, folder, output_dir, **overrides):
    """Inference of the trained tiny generator in-process; the root cause of its failure."""
    with pytest.raises(Exception) as failure:
        run_in_process("inference", config_file=str(CONFIGS / "inference.json"), logging_file=False,
                       bundle_root=str(BUNDLE), dataset_dir=str(dataset_dir), ckpt_dir=str(folder / "models"), output_dir=str(output_dir),
                       **{**TINY_NETWORKS, **overrides})
    assert not output_dir.exists(), "inference wrote outputs before the error"
    return root_cause(failure.value)


def test_inference_neighbour_count_other_than_the_trainings_fails_before_translating(demo_dataset, trained, tmp_path):
    error = run_inference_in_process(demo_dataset, trained[0], tmp_path / "eval", neighbours=1)
    assert isinstance(error, ValueError) and str(error).startswith(str(trained[0] / "models" / "model.pt"))
    assert "trained with 0 neighbour(s) per side (1 input channels), but inference was set to neighbours=1" in str(error)


def test_a_ct_given_as_the_mr_input_fails_before_translating(demo_dataset, trained, tmp_path):
    folder, _ = trained

    def ct_listed_as(path_key):
        def edit(content):
            for item in content["test"]:
                item["t2"] = item[path_key]
        return edit

    # Named as a CT: the windowed CT on the T2 grid (same range as a normalised T2) is refused by its name.
    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "named", ct_listed_as("ct_in_t2"))
    error = run_inference_in_process(copy.parent, folder, tmp_path / "named" / "eval")
    assert isinstance(error, ModalityMismatchError) and "is named as a CT image but is used as T2" in str(error)

    # Named as a T2 but holding a CT in HU: refused by its intensities, the file named.
    renamed = tmp_path / "renamed" / "sub_t2.nii.gz"
    renamed.parent.mkdir(parents=True)
    first = split_items(demo_dataset)[0]
    renamed.write_bytes((demo_dataset / first["ct_in_t2_hu"]).read_bytes())

    def hu_ct_named_t2(content):
        content["test"][0]["t2"] = str(renamed)

    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "renamed" / "cohort", hu_ct_named_t2)
    error = run_inference_in_process(copy.parent, folder, tmp_path / "renamed" / "eval")
    assert isinstance(error, IntensityMismatchError) and str(error).startswith(str(renamed))
    assert "should be T2 (MR) on the network scale [-1, 1]" in str(error) and "a CT in Hounsfield units" in str(error)


def test_evaluation_against_an_mr_target_fails_before_any_metric(demo_dataset, inferred, tmp_path):
    with pytest.raises(Exception) as failure:
        run_in_process("evaluate", config_file=str(CONFIGS / "evaluate.json"), logging_file=False,
                       bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), output_dir=str(inferred), target_key="truth_t1_in_t2")
    error = root_cause(failure.value)
    assert isinstance(error, ModalityMismatchError)
    assert "target_key 'truth_t1_in_t2' holds a T1 image, but the evaluation's target modality is CT" in str(error)
