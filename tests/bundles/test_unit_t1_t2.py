"""The T1 <-> T2 UNIT bundle, run as a user runs it: train, resume, infer both ways, evaluate, verify, export each
direction, the ablation overlays and the ablation runner, and the errors raised before any work."""

import csv
import json
import math
import re

import pytest
import torch
from monai.bundle import ConfigParser

from modality_translation.ablation import AblationError, main as ablation_main, read_rows, run_ablation
from modality_translation.engines import checkpoint_path
from modality_translation.networks import SelfAttention, UNITNetwork, has_spectral_norm
from tests.bundles.helpers import (
    BUNDLES,
    IMAGE_SIZE,
    TINY_NETWORKS,
    TINY_TRAINING,
    assert_killed_training_resumes_exactly,
    assert_predictions_on_source_grids,
    export_tiny_generator,
    fail_before_training,
    infer,
    load_generators,
    read_metrics,
    run_bundle,
    split_items,
    tiny_training_workflow,
    train,
    train_with_two_processes,
    verify_metadata_and_network_shapes,
)

BUNDLE = BUNDLES / "unit_t1_t2"
CONFIGS = BUNDLE / "configs"
TRAIN_CONFIG = "bundles/unit_t1_t2/configs/train.json"
OVERLAYS = sorted((CONFIGS / "ablation").glob("*.json"))


def tiny_unit(state: dict) -> UNITNetwork:
    """The tiny network of the tests' training, loaded with a saved state dict."""
    network = UNITNetwork(channels=TINY_NETWORKS["generator_channels"])
    network.load_state_dict(state)
    return network.eval()


@pytest.fixture(scope="module")
def trained(demo_dataset, tmp_path_factory):
    """Two epochs of training, from the repository root."""
    folder = tmp_path_factory.mktemp("unit_training")
    return folder, train(TRAIN_CONFIG, demo_dataset, folder)


def test_training_writes_checkpoints_model_grids_and_validation_metrics(trained):
    folder, log = trained
    models, grids = folder / "models", folder / "eval" / "grids"
    assert set(torch.load(checkpoint_path(models, 2), weights_only=True)) >= {
        "unit", "d_a", "d_b", "g_optimizer", "d_optimizer", "trainer", "rng"}
    # model.pt is the UNIT network's state dict (encoders and generators of both domains); the latent
    # code of the tiny configuration has 8 * 8 = 64 channels.
    model = load_generators(models)
    assert model["encoder_a.shared.body.0.weight"].shape == (64, 64, 3, 3)
    assert torch.equal(model["encoder_a.shared.body.0.weight"], model["encoder_b.shared.body.0.weight"])
    assert {key.split(".")[0] for key in model} == {"encoder_a", "encoder_b", "generator_a", "generator_b"}
    for name in ("train", "validation_t1_to_t2", "validation_t2_to_t1"):
        assert (grids / f"{name}_epoch=2.png").stat().st_size > 1000
    ssim = [float(v) for v in re.findall(r"Metrics -- .*val_t1_to_t2_ssim: ([-\d.]+)", log)]
    assert len(ssim) == 2 and all(-1.0 <= v <= 1.0 for v in ssim)
    assert re.search(r"val_t2_to_t1_psnr: [\d.]+", log)
    for loss in ("loss_kl", "loss_cycle_kl", "loss_reconstruction", "loss_cycle", "loss_adv", "loss_D"):
        assert re.search(rf"{loss}: [\d.]+", log), loss


def test_killed_training_resumes_at_its_epoch_with_the_same_state(demo_dataset, trained, tmp_path):
    # Also the latent noise: the random generators are part of the checkpoint.
    assert_killed_training_resumes_exactly(TRAIN_CONFIG, demo_dataset, tmp_path, trained[0])


def test_multi_process_training_with_distributed_data_parallel(demo_dataset, tmp_path):
    # The training pass and the validation views go through the DDP wrapper's forward.
    log = train_with_two_processes("unit_t1_t2", demo_dataset, tmp_path)
    assert len(re.findall(r"Epoch\[1\] Metrics -- .*val_t1_to_t2_ssim", log)) == 1
    assert len(re.findall(r"Epoch\[1\] Metrics -- .*val_t2_to_t1_ssim", log)) == 1
    model = load_generators(tmp_path / "models")
    assert "encoder_a.shared.body.0.weight" in model and not any(key.startswith("module.") for key in model)


@pytest.fixture(scope="module")
def inferred(demo_dataset, trained):
    """Inference on the test split, run from inside the bundle folder, with DICOM output."""
    folder, _ = trained
    return infer("configs/inference.json", demo_dataset, folder, cwd=BUNDLE)


def test_inference_translates_both_ways_through_the_shared_latent_space(demo_dataset, trained, inferred):
    predictions = {}
    for direction, source in (("t1_to_t2", "t1"), ("t2_to_t1", "t2_in_t1")):
        predictions[direction] = assert_predictions_on_source_grids(demo_dataset, inferred, direction, source)
        for values in predictions[direction]:
            assert values.min() >= -1.0 and values.max() <= 1.0 and values.std() > 0
    # The two directions are two different paths through the same weights.
    assert not all(abs(a - b).max() < 1e-3 for a, b in zip(predictions["t1_to_t2"], predictions["t2_to_t1"]))


def test_evaluation_writes_per_subject_masked_ssim_psnr_and_summary(demo_dataset, inferred):
    run_bundle("run", "evaluate", "--config_file", "bundles/unit_t1_t2/configs/evaluate.json",
               "--dataset_dir", str(demo_dataset), "--output_dir", str(inferred))
    subjects = [item["subject"] for item in split_items(demo_dataset)]
    for direction, target in (("t1_to_t2", "t2"), ("t2_to_t1", "t1")):
        rows, summary = read_metrics(inferred / direction)
        assert [row["subject"] for row in rows] == subjects
        assert all(-1.0 <= float(row["ssim_masked"]) <= 1.0 and float(row["psnr_db"]) > 0 for row in rows)
        assert summary["evaluation"]["modality"] == target and summary["ssim_masked"]["n"] == len(subjects)
        assert summary["psnr_db"]["n"] == len(subjects)


def test_metadata_network_shapes_and_export_of_each_direction(trained, tmp_path):
    # The default network (256 x 256, 64 channels, T1 -> T2) against metadata.json's network_data_format.
    verify_metadata_and_network_shapes(CONFIGS)
    folder, _ = trained
    network = tiny_unit(load_generators(folder / "models"))
    x = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    for direction in ("a_to_b", "b_to_a"):
        exported = export_tiny_generator(CONFIGS, folder / "models", "", tmp_path / f"{direction}.ts",
                                         **{"network_def#direction": direction})
        with torch.no_grad():
            torch.testing.assert_close(exported(x), network.translate(x, direction), rtol=1e-4, atol=1e-5)


def test_model_zoo_training_properties_and_the_paper_recipe(demo_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workflow = tiny_training_workflow(CONFIGS, demo_dataset, tmp_path)
    trainer = workflow.trainer
    assert workflow.max_epochs == 100
    assert trainer.weights == {"lambda_adversarial": 1.0, "lambda_reconstruction": 10.0, "lambda_kl": 0.01,
                               "lambda_cycle": 10.0, "lambda_cycle_kl": 0.01}
    assert trainer.adversarial_loss.mode == "bce" and isinstance(trainer.reconstruction_loss, torch.nn.L1Loss)
    assert isinstance(trainer.cycle_loss, torch.nn.L1Loss)
    for optimizer in (trainer.g_optimizer, trainer.d_optimizer):
        assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["betas"] == (0.5, 0.999)
    unit = trainer.unit
    assert unit.encoder_a.shared is unit.encoder_b.shared and unit.generator_a.shared is unit.generator_b.shared
    assert not any(isinstance(m, SelfAttention) for m in unit.modules()) and not has_spectral_norm(unit)
    # Both directions are validated on the live network.
    assert workflow.parser.get_parsed_content("validate#evaluator").generator.network is unit
    assert workflow.parser.get_parsed_content("validate#reverse#evaluator").generator.direction == "b_to_a"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[path.stem for path in OVERLAYS])
def test_each_ablation_overlay_sets_its_switches_in_the_networks_and_its_own_folders(overlay):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(overlay)])
    parser.update({"bundle_root": str(BUNDLE), **TINY_TRAINING})
    declared = json.loads(overlay.read_text())
    name = declared["ablation"]["name"]
    assert overlay.stem == name
    assert parser.get_parsed_content("ckpt_dir") == str(BUNDLE / "models" / "ablation" / name)
    assert parser.get_parsed_content("output_dir") == str(BUNDLE / "eval" / "ablation" / name)
    unit, d_a = parser.get_parsed_content("unit"), parser.get_parsed_content("d_a")
    attention, kinds = declared["attention"], declared["spectral_norm"]
    assert unit.attention == attention
    in_encoder = any(isinstance(m, SelfAttention) for m in unit.encoder_a.modules())
    in_generator = any(isinstance(m, SelfAttention) for m in unit.generator_a.modules())
    assert (in_encoder, in_generator) == (attention in ("encoder", "both"), attention in ("generator", "both"))
    assert has_spectral_norm(unit.encoder_b) == ("encoder" in kinds)
    assert has_spectral_norm(unit.generator_b) == ("generator" in kinds)
    assert has_spectral_norm(d_a) == ("discriminator" in kinds)
    for key in ("reconstruction_penalty", "cycle_penalty"):
        assert parser.get_parsed_content(f"train#trainer#{key}") == declared["reconstruction_penalty"]
    # The same overlay builds the same network for inference.
    inference = ConfigParser()
    inference.read_config([str(CONFIGS / "inference.json"), str(overlay)])
    inference.update({"bundle_root": str(BUNDLE), **TINY_NETWORKS})
    assert inference.get_parsed_content("network_def").state_dict().keys() == unit.state_dict().keys()


def test_the_ablation_rows_of_the_study(tmp_path):
    rows = read_rows(BUNDLE)
    assert [row.row for row in rows] == list(range(1, len(rows) + 1))
    names = [row.name for row in rows]
    assert names[:2] == ["baseline", "spectral_norm"]
    assert {"attention_encoder", "attention_generator", "charbonnier",
            "attention_encoder_charbonnier_spectral_norm"} <= set(names)
    with pytest.raises(AblationError, match=r"has no row 'sn'; its rows are \['baseline', 'spectral_norm'"):
        read_rows(BUNDLE, ["sn"])


@pytest.mark.parametrize("overrides, message", [
    ({"attention": "decoder"}, r"attention must be one of \('encoder', 'generator', 'both', 'none'\), got 'decoder'"),
    ({"spectral_norm": ["encoder", "decoder"]}, r"each one of \('encoder', 'generator', 'discriminator'\)"),
    ({"reconstruction_penalty": "l2"}, r"must be one of \('l1', 'charbonnier'\), got 'l2'"),
])
def test_unknown_switch_value_fails_before_training_naming_the_allowed_values(demo_dataset, tmp_path, overrides, message):
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(demo_dataset), **overrides)
    assert isinstance(error, ValueError) and re.search(message, str(error)), error


def test_ablation_runner_trains_translates_evaluates_each_row_and_writes_the_table(demo_dataset, tmp_path):
    rows = ["baseline", "attention_encoder_charbonnier_spectral_norm"]
    training = {key: str(value) for key, value in TINY_TRAINING.items() if key not in TINY_NETWORKS}
    md_path, csv_path = run_ablation(
        BUNDLE, rows, work_dir=tmp_path / "work", table_dir=tmp_path / "tables",
        overrides={"dataset_dir": str(demo_dataset), **{key: str(value) for key, value in TINY_NETWORKS.items()}},
        training_overrides={**training, "train#trainer#max_epochs": "1"}, jobs=2,
    )
    with open(csv_path) as handle:
        records = list(csv.DictReader(handle))
    assert [record["name"] for record in records] == rows and [record["row"] for record in records] == ["1", "6"]
    for record in records:
        for direction in ("t1_to_t2", "t2_to_t1"):
            assert -1.0 <= float(record[f"{direction}_ssim_masked_mean"]) <= 1.0
            assert math.isfinite(float(record[f"{direction}_psnr_db_mean"]))
            assert int(record[f"{direction}_psnr_db_n"]) == len(split_items(demo_dataset))
    assert 'attention = "encoder"' in records[1]["settings"]
    assert all(float(record["training_minutes"]) > 0 for record in records)
    # The validation figures of every row's training, per epoch, from its TensorBoard events.
    with open(tmp_path / "tables" / "ablation_validation.csv") as handle:
        history = list(csv.DictReader(handle))
    assert [(h["name"], h["epoch"]) for h in history] == [(rows[0], "1"), (rows[1], "1")]
    assert all(-1.0 <= float(h["val_t1_to_t2_ssim"]) <= 1.0 for h in history)
    # The same table again from the finished rows, without running anything.
    again, _ = run_ablation(BUNDLE, rows, work_dir=tmp_path / "work", table_dir=tmp_path / "again", tables_only=True,
                            overrides={"dataset_dir": str(demo_dataset)})
    assert again.read_text().splitlines()[2:] == md_path.read_text().splitlines()[2:]
    table = md_path.read_text()
    assert "| # | configuration | training (min) | T1 → T2 SSIM (head) | T1 → T2 PSNR (dB) | T2 → T1 SSIM (head) | T2 → T1 PSNR (dB) |" in table
    assert len([line for line in table.splitlines() if re.match(r"\| [16] \| `", line)]) == 2
    # Each row trained its own configuration, in its own folder, one epoch.
    baseline = load_generators(tmp_path / "work" / "baseline" / "models")
    modified = load_generators(tmp_path / "work" / rows[1] / "models")
    assert not any("gamma" in key or "parametrizations" in key for key in baseline)
    assert any(key.endswith("gamma") for key in modified) and any("parametrizations" in key for key in modified)
    assert checkpoint_path(tmp_path / "work" / "baseline" / "models", 1).is_file()
    assert not checkpoint_path(tmp_path / "work" / "baseline" / "models", 2).exists()


def test_ablation_runner_names_the_failed_row_and_stage(tmp_path, capsys):
    with pytest.raises(AblationError, match=r"row 'baseline': training failed with exit status 1"):
        run_ablation(BUNDLE, ["baseline"], work_dir=tmp_path, overrides={"dataset_dir": str(tmp_path / "no_cohort")})
    assert "datalist does not exist" in (tmp_path / "baseline" / "training.log").read_text()
    # Bad arguments: exit status 2 before any run.
    with pytest.raises(SystemExit) as exit_info:
        ablation_main([str(BUNDLE), "--rows", "sn"])
    assert exit_info.value.code == 2 and "has no row 'sn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation_main([str(BUNDLE), "--set", "image_size"])
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ablation_main([str(BUNDLE), "--jobs", "0"])
    assert exit_info.value.code == 2 and "--jobs must be at least 1" in capsys.readouterr().err
