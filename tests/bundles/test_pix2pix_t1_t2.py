"""The T1 -> T2 pix2pix bundle, run as a user runs it: train, resume, infer, evaluate, verify, export, fail early."""

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from modality_translation.data.datalist import DatalistError
from modality_translation.engines import checkpoint_path
from preprocessing.errors import GeometryError
from tests.bundles.helpers import (
    BUNDLES,
    IMAGE_SIZE,
    TINY_TRAINING,
    absolute_datalist_copy,
    assert_killed_training_resumes_exactly,
    assert_predictions_on_source_grids,
    export_tiny_generator,
    fail_before_training,
    infer,
    load_generators,
    read_metrics,
    run_bundle,
    split_items,
    train,
    train_with_two_processes,
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
    log = train_with_two_processes("pix2pix_t1_t2", demo_dataset, tmp_path)
    assert len(re.findall(r"Epoch\[1\] Metrics -- .*val_t1_to_t2_ssim", log)) == 1
    model = load_generators(tmp_path / "models")
    assert "down.0.0.weight" in model and not any(key.startswith("module.") for key in model)


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


def test_metadata_network_shapes_and_export(trained, tmp_path):
    verify_metadata_and_network_shapes(CONFIGS)
    folder, _ = trained
    network = export_tiny_generator(CONFIGS, folder / "models", "", tmp_path / "model.ts")
    state = load_generators(folder / "models")
    assert torch.equal(network.state_dict()["down.0.0.weight"], state["down.0.0.weight"])
    assert network(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)


def test_model_zoo_training_properties_and_the_paper_recipe(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), logging_file=False, workflow_type="train",
                              dataset_dir=str(demo_dataset), ckpt_dir=str(tmp_path / "models"),
                              output_dir=str(tmp_path / "eval"), **TINY_TRAINING)
    workflow.initialize()
    assert workflow.check_properties() == []
    trainer = workflow.trainer
    assert workflow.max_epochs == 200 and trainer.lambda_reconstruction == 100.0
    assert isinstance(trainer.reconstruction_loss, torch.nn.L1Loss) and trainer.adversarial_loss.mode == "bce"
    assert trainer.g_optimizer.defaults["lr"] == 2e-4 and trainer.g_optimizer.defaults["betas"] == (0.5, 0.999)
    dropouts = [m.p for m in trainer.generator.modules() if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout)]
    assert dropouts == [0.5, 0.5, 0.5]
    # Conditional discriminator: source channel + judged image.
    first = next(m for m in trainer.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 2


def test_datalist_without_the_pair_fails_before_training(demo_dataset, tmp_path):
    def drop_pair(content):
        del content["training"][0]["t2_in_t1_slices"]

    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "cohort", drop_pair)
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy.parent))
    assert isinstance(error, DatalistError) and "'t2_in_t1_slices'" in str(error)


def test_pair_on_another_grid_fails_before_training(demo_dataset, tmp_path):
    moved_index = tmp_path / "moved_t2_in_t1_slices.json"

    def on_another_grid(content):
        # The T2 of the first subject as if resampled onto a grid of twice the slice spacing.
        item = content["training"][0]
        index = json.loads(Path(item["t2_in_t1_slice_index"]).read_text())
        for entry in index["slices"]:
            entry["geometry"]["spacing"][2] *= 2
        moved_index.write_text(json.dumps(index))
        item["t2_in_t1_slice_index"] = str(moved_index)

    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "cohort", on_another_grid)
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy.parent))
    assert isinstance(error, GeometryError) and str(error).startswith(str(moved_index))
    assert "volume spacing" in str(error) and "a pair must be cut at the same place of one grid" in str(error)


def test_neighbour_count_other_than_the_data_fails_before_training(demo_dataset, tmp_path):
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(demo_dataset), neighbours=1)
    assert isinstance(error, DatalistError) and "has 1 channel(s), expected 3" in str(error)
