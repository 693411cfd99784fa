"""The T1 -> T2 pix2pix bundle, run as a user runs it: train, resume, infer, evaluate, verify, export, fail early."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from medgan_common.errors import GeometryError
from modality_translation.data.datalist import DatalistError
from modality_translation.engines import checkpoint_path
from tests.bundles.helpers import (
    BUNDLES,
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
    run_bundle,
    split_items,
    train,
    verify_metadata_and_network_shapes,
)

BUNDLE = BUNDLES / "pix2pix_t1_t2"
CONFIGS = BUNDLE / "configs"
TRAIN_CONFIG = "bundles/pix2pix_t1_t2/configs/train.json"


@pytest.fixture(scope="module")
def trained(demo_dataset, tmp_path_factory):
    """Two epochs of training, from the repository root."""
    folder = tmp_path_factory.mktemp("pix2pix_training")
    return folder, train(TRAIN_CONFIG, demo_dataset, folder)


def test_training_writes_checkpoints_model_grids_and_validation_metrics(trained):
    folder, log = trained
    models, grids = folder / "models", folder / "eval" / "grids"
    assert checkpoint_path(models, 1).is_file() and checkpoint_path(models, 2).is_file()
    assert set(torch.load(checkpoint_path(models, 2), weights_only=True)) >= {
        "generator", "discriminator", "g_optimizer", "d_optimizer", "g_scheduler", "d_scheduler", "trainer", "rng"}
    # model.pt is the generator's state dict itself (MONAI's CheckpointSaver of a single object), as in the
    # model zoo. The 5-level U-Net of the tiny configuration: its innermost convolution has 8 * 8 = 64 channels.
    model = load_generators(models)
    assert model["down.4.1.weight"].shape == (64, 64, 4, 4)
    for name in ("train", "validation_t1_to_t2"):
        assert (grids / f"{name}_epoch=2.png").stat().st_size > 1000
    ssim = [float(v) for v in re.findall(r"Metrics -- .*val_t1_to_t2_ssim: ([-\d.]+)", log)]
    assert len(ssim) == 2 and all(-1.0 <= v <= 1.0 for v in ssim)
    assert re.search(r"loss_reconstruction: [\d.]+", log) and re.search(r"loss_D: [\d.]+", log)


def test_killed_training_resumes_at_its_epoch_with_the_same_state(demo_dataset, trained, tmp_path):
    # Also the dropout masks: the random generators are part of the checkpoint.
    assert_killed_training_resumes_exactly(TRAIN_CONFIG, demo_dataset, tmp_path, trained[0])


def test_multi_process_training_with_distributed_data_parallel(demo_dataset, tmp_path):
    assert_two_process_pix2pix_training("pix2pix_t1_t2", demo_dataset, tmp_path, "val_t1_to_t2_ssim")


@pytest.fixture(scope="module")
def inferred(demo_dataset, trained):
    """Inference on the test split, run from inside the bundle folder, with DICOM output."""
    folder, _ = trained
    return infer("configs/inference.json", demo_dataset, folder, cwd=BUNDLE)


def test_inference_and_evaluation(demo_dataset, inferred):
    for values in assert_predictions_on_source_grids(demo_dataset, inferred, "t1_to_t2", "t1"):
        assert values.min() >= -1.0 and values.max() <= 1.0 and values.std() > 0
    run_bundle("run", "evaluate", "--config_file", "bundles/pix2pix_t1_t2/configs/evaluate.json",
               "--dataset_dir", str(demo_dataset), "--output_dir", str(inferred))
    rows, summary = read_metrics(inferred / "t1_to_t2")
    assert [row["subject"] for row in rows] == [item["subject"] for item in split_items(demo_dataset)]
    assert all(0.0 < float(row["ssim"]) <= 1.0 and float(row["psnr_db"]) > 0 for row in rows)
    assert summary["evaluation"]["target_key"] == "truth_t2_in_t1"


def test_patch_training_translates_whole_slices_with_the_depth_of_its_patches(demo_dataset, tmp_path):
    # 16 x 16 patches of the 32 x 32 slices: a 4-level U-Net (not 5) that validation and inference run on
    # whole slices; inference takes the patch size from the training record, not from an override.
    log = train(TRAIN_CONFIG, demo_dataset, tmp_path, "--patch_size", "16", "--jitter_scale", "1.0")
    record = json.loads((tmp_path / "models" / "training_record.json").read_text())
    assert record["settings"]["patch_size"] == 16 and record["settings"]["image_size"] == 32
    model = load_generators(tmp_path / "models")
    assert "down.3.1.weight" in model and not any(key.startswith("down.4.") for key in model)
    assert len(re.findall(r"Metrics -- .*val_t1_to_t2_ssim: ([-\d.]+)", log)) == 2
    inferred = infer("bundles/pix2pix_t1_t2/configs/inference.json", demo_dataset, tmp_path)
    plain = assert_predictions_on_source_grids(demo_dataset, inferred, "t1_to_t2", "t1")
    for values in plain:
        assert values.min() >= -1.0 and values.max() <= 1.0 and values.std() > 0
    # Test-time flip averaging, by one override: another translation, as close to the plain one as the
    # network is to mirror-symmetric.
    run_bundle("run", "inference", "--config_file", "bundles/pix2pix_t1_t2/configs/inference.json",
               "--dataset_dir", str(demo_dataset), "--ckpt_dir", str(tmp_path / "models"),
               "--output_dir", str(tmp_path / "flip"), "--flip_average", "True")
    for item, values in zip(split_items(demo_dataset), plain):
        averaged = nib.load(tmp_path / "flip" / "t1_to_t2" / item["subject"] / "pred.nii.gz").get_fdata()
        assert averaged.shape == values.shape and not np.allclose(averaged, values)
        assert np.abs(averaged - values).mean() < np.abs(values - values.mean()).mean()


def test_metadata_network_shapes_and_export(trained, tmp_path):
    verify_metadata_and_network_shapes(CONFIGS)
    assert_pix2pix_generator_exports(CONFIGS, trained[0] / "models", tmp_path / "model.ts")


def test_model_zoo_training_properties_and_the_paper_recipe(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pix2pix_training_workflow(CONFIGS, demo_dataset, tmp_path)


def test_datalist_without_the_pair_fails_before_training(demo_dataset, tmp_path):
    copy = datalist_without_pair(demo_dataset, tmp_path / "cohort", "t2_in_t1")
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy))
    assert isinstance(error, DatalistError) and "'t2_in_t1_slices'" in str(error)


def test_pair_on_another_grid_fails_before_training(demo_dataset, tmp_path):
    def twice_the_slice_spacing(geometry):  # the T2 as if resampled onto a grid of twice the slice spacing
        geometry["spacing"][2] *= 2

    copy, moved_index = datalist_with_pair_on_another_grid(demo_dataset, tmp_path, "t2_in_t1", twice_the_slice_spacing)
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy))
    assert isinstance(error, GeometryError) and str(error).startswith(str(moved_index))
    assert "volume spacing" in str(error) and "a pair must be cut at the same place of one grid" in str(error)


def test_neighbour_count_other_than_the_data_fails_before_training(demo_dataset, tmp_path):
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(demo_dataset), neighbours=1)
    assert isinstance(error, DatalistError) and "has 1 channel(s), expected 3" in str(error)
