"""The T1 <-> T2 CycleGAN bundle, run as a user runs it: train, resume, infer, evaluate, verify, export, fail early."""

import re
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.bundle import run as run_in_process

from modality_translation.data.datalist import DatalistError, ModalityMismatchError
from modality_translation.engines import checkpoint_path
from tests.bundles.helpers import (
    BUNDLES,
    IMAGE_SIZE,
    REPO_ROOT,
    absolute_datalist_copy,
    assert_killed_training_resumes_exactly,
    assert_predictions_on_source_grids,
    export_tiny_generator,
    fail_before_training,
    infer,
    load_generators,
    read_metrics,
    root_cause,
    run_bundle,
    split_items,
    tiny_training_workflow,
    train,
    train_with_two_processes,
    verify_metadata_and_network_shapes,
)

BUNDLE = BUNDLES / "cyclegan_t1_t2"
CONFIGS = BUNDLE / "configs"
TRAIN_CONFIG = "bundles/cyclegan_t1_t2/configs/train.json"


@pytest.fixture(scope="module")
def trained(demo_dataset, tmp_path_factory):
    """Two epochs of training, from the repository root."""
    folder = tmp_path_factory.mktemp("t1_t2_training")
    return folder, train(TRAIN_CONFIG, demo_dataset, folder)


def test_training_writes_checkpoints_model_grids_and_validation_metrics(trained):
    folder, log = trained
    models, grids = folder / "models", folder / "eval" / "grids"
    assert checkpoint_path(models, 1).is_file() and checkpoint_path(models, 2).is_file()
    model = load_generators(models)
    assert set(model) == {"g_ab", "g_ba"}
    # The 5-level U-Net of the tiny configuration: its innermost convolution has 8 * 8 = 64 channels.
    assert model["g_ab"]["down.4.1.weight"].shape == (64, 64, 4, 4)
    for name in ("train", "validation_t1_to_t2", "validation_t2_to_t1"):
        assert (grids / f"{name}_epoch=2.png").stat().st_size > 1000
    assert list((folder / "eval").glob("events.out.tfevents.*"))
    ssim = [float(v) for v in re.findall(r"Metrics -- .*val_t1_to_t2_ssim: ([-\d.]+)", log)]
    assert len(ssim) == 2 and all(-1.0 <= v <= 1.0 for v in ssim)
    assert re.search(r"val_t2_to_t1_psnr: [\d.]+", log)


def test_killed_training_resumes_at_its_epoch_with_the_same_state(demo_dataset, trained, tmp_path):
    assert_killed_training_resumes_exactly(TRAIN_CONFIG, demo_dataset, tmp_path, trained[0])


def test_multi_process_training_with_distributed_data_parallel(demo_dataset, tmp_path):
    # Two CPU processes with the gloo backend stand for two GPUs: the same config, the same code path.
    log = train_with_two_processes("cyclegan_t1_t2", demo_dataset, tmp_path)
    # Rank 0 alone logs, validates into the log and saves; the weights are saved without the DDP wrapper.
    assert len(re.findall(r"Epoch\[1\] Metrics -- .*val_t1_to_t2_ssim", log)) == 1
    assert checkpoint_path(tmp_path / "models", 1).is_file()
    model = load_generators(tmp_path / "models")
    assert set(model) == {"g_ab", "g_ba"} and not any(key.startswith("module.") for key in model["g_ab"])


@pytest.fixture(scope="module")
def inferred(demo_dataset, trained):
    """Inference on the test split, run from inside the bundle folder, with DICOM output."""
    folder, _ = trained
    return infer("configs/inference.json", demo_dataset, folder, cwd=BUNDLE)


def test_inference_translates_test_volumes_onto_their_own_grid(demo_dataset, inferred):
    # T2 -> T1 translates the T2 registered onto the T1 (the space the generators were trained in).
    for direction, source in (("t1_to_t2", "t1"), ("t2_to_t1", "t2_in_t1")):
        for values in assert_predictions_on_source_grids(demo_dataset, inferred, direction, source):
            assert values.min() >= -1.0 and values.max() <= 1.0 and values.std() > 0


def test_evaluation_writes_per_subject_metrics_and_summary(demo_dataset, inferred):
    run_bundle("run", "evaluate", "--config_file", "bundles/cyclegan_t1_t2/configs/evaluate.json",
               "--dataset_dir", str(demo_dataset), "--output_dir", str(inferred))
    subjects = [item["subject"] for item in split_items(demo_dataset)]
    for direction, target in (("t1_to_t2", "t2"), ("t2_to_t1", "t1")):
        rows, summary = read_metrics(inferred / direction)
        assert [row["subject"] for row in rows] == subjects
        assert all(0.0 < float(row["ssim"]) <= 1.0 and float(row["psnr_db"]) > 0 for row in rows)
        assert summary["evaluation"]["modality"] == target and summary["evaluation"]["data_range"] == 2.0
        assert summary["evaluation"]["target_key"] == {"t2": "truth_t2_in_t1", "t1": "t1"}[target]
        assert summary["ssim"]["n"] == len(subjects)


def test_patch_training_of_both_generators_translates_whole_slices(demo_dataset, tmp_path):
    # 16 x 16 patches of the 32 x 32 slices: 4-level U-Nets, run on whole slices by validation and inference.
    log = train(TRAIN_CONFIG, demo_dataset, tmp_path, "--patch_size", "16", "--jitter_scale", "1.0")
    model = load_generators(tmp_path / "models")
    for name in ("g_ab", "g_ba"):
        assert "down.3.1.weight" in model[name] and not any(key.startswith("down.4.") for key in model[name])
    assert len(re.findall(r"Metrics -- .*val_t1_to_t2_ssim: ([-\d.]+)", log)) == 2
    inferred = infer("bundles/cyclegan_t1_t2/configs/inference.json", demo_dataset, tmp_path)
    for direction, source in (("t1_to_t2", "t1"), ("t2_to_t1", "t2_in_t1")):
        for values in assert_predictions_on_source_grids(demo_dataset, inferred, direction, source):
            assert values.std() > 0


def test_metadata_network_shapes_and_export(trained, tmp_path):
    # The default network (256 x 256, 8-level U-Net) against metadata.json's network_data_format.
    verify_metadata_and_network_shapes(CONFIGS)
    folder, _ = trained
    network = export_tiny_generator(CONFIGS, folder / "models", "g_ab", tmp_path / "model.ts")
    generator_state = load_generators(folder / "models")["g_ab"]
    assert torch.equal(network.state_dict()["down.0.0.weight"], generator_state["down.0.0.weight"])
    output = network(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE))
    assert output.shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("cwd, config_file", [(REPO_ROOT, TRAIN_CONFIG), (BUNDLE, "configs/train.json")])
def test_bundle_root_and_default_paths_from_repository_and_bundle_folder(monkeypatch, cwd, config_file):
    monkeypatch.chdir(cwd)
    # The command line of python -m monai.bundle run ... --config_file <config_file>, where bundle_root() reads it.
    monkeypatch.setattr(sys, "argv", ["monai/bundle/__main__.py", "run", "--config_file", config_file])
    workflow = ConfigWorkflow(config_file=config_file, logging_file=False, init_id="none", run_id="ckpt_dir")
    workflow.initialize()
    assert workflow.run() == [str(BUNDLE / "models")]
    # The default data: the full-size demo cohort in the repository's demo_data/full folder.
    workflow = ConfigWorkflow(config_file=config_file, logging_file=False, init_id="none", run_id="dataset_dir")
    workflow.initialize()
    assert workflow.run() == [str(REPO_ROOT / "demo_data" / "full" / "preprocessed")]
    # The small one is the cohort of the repository's quick start.
    workflow = ConfigWorkflow(config_file=config_file, logging_file=False, init_id="none", run_id="dataset_dir",
                              **{"demo#size": "small"})
    workflow.initialize()
    assert workflow.run() == [str(REPO_ROOT / "demo_data" / "preprocessed")]


def test_model_zoo_training_properties_are_all_present(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workflow = tiny_training_workflow(CONFIGS, demo_dataset, tmp_path)
    assert workflow.max_epochs == 200 and workflow.trainer.generator_steps_per_discriminator_step == 1
    assert workflow.trainer.lambda_cycle == 10.0 and workflow.trainer.lambda_identity == 5.0


def test_missing_dataset_fails_before_training_naming_the_datalist(tmp_path):
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(tmp_path / "no_cohort"))
    assert isinstance(error, DatalistError)
    assert str(error).startswith(str(tmp_path / "no_cohort" / "dataset.json") + ": datalist does not exist")


def test_empty_split_fails_before_training(demo_dataset, tmp_path):
    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "cohort",
                                  lambda content: content.update(validation=[]))
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy.parent))
    assert isinstance(error, DatalistError) and "split 'validation' is empty" in str(error)


def test_volume_of_the_wrong_modality_fails_before_training(demo_dataset, tmp_path):
    def t2_as_t1(content):
        item = content["training"][0]
        item["t1_slices"] = item["t2_slices"]

    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "cohort", t2_as_t1)
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy.parent))
    assert isinstance(error, ModalityMismatchError)
    assert "named as a T2 image but is used as T1" in str(error) and "_t2_axial_" in str(error)


def test_inference_without_trained_weights_fails_before_translating(demo_dataset, tmp_path):
    with pytest.raises(Exception) as failure:
        run_in_process("inference", config_file=str(CONFIGS / "inference.json"), logging_file=False,
                       bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), ckpt_dir=str(tmp_path / "models"),
                       output_dir=str(tmp_path / "eval"))
    error = root_cause(failure.value)
    assert isinstance(error, FileNotFoundError) and error.filename == str(tmp_path / "models" / "model.pt")
    assert "trained generators" in str(error)
    assert not (tmp_path / "eval").exists()
