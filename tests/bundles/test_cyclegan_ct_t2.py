"""The CT <-> T2 CycleGAN bundle, run as a user runs it: train, resume, infer, evaluate, verify, export, fail early."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.bundle import run as run_in_process

from modality_translation.ablation import read_rows, stage_overlay
from modality_translation.data.datalist import DatalistError, ModalityMismatchError
from modality_translation.engines import checkpoint_path
from modality_translation.inference.intensity import CT_AIR_HU
from modality_translation.networks import VGG19FeatureExtractor, WeightsFileError
from tests.bundles.helpers import (
    BUNDLES,
    REPO_ROOT,
    TINY_NETWORKS,
    TINY_TRAINING,
    absolute_datalist_copy,
    assert_killed_training_resumes_exactly,
    assert_predictions_on_source_grids,
    cli,
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

BUNDLE = BUNDLES / "cyclegan_ct_t2"
CONFIGS = BUNDLE / "configs"
TRAIN_CONFIG = "bundles/cyclegan_ct_t2/configs/train.json"


@pytest.fixture(scope="module")
def vgg19_weights(tmp_path_factory):
    """A torchvision-format VGG19 state dict of the layers the perceptual loss uses (random values)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vgg19.pth"
    torch.save(VGG19FeatureExtractor(layers=["relu1_1", "relu2_1", "relu3_1"]).state_dict(), path)
    return path


def weights_and_grids(weights):
    """The training arguments this bundle needs beyond the tiny ones: the VGG19 weights, image grids every epoch."""
    return "--vgg19_weights", str(weights), "--grid_interval", "1"


@pytest.fixture(scope="module")
def trained(demo_dataset, vgg19_weights, tmp_path_factory):
    """Two epochs of training, run from inside the bundle folder."""
    folder = tmp_path_factory.mktemp("ct_t2_training")
    return folder, train("configs/train.json", demo_dataset, folder, *weights_and_grids(vgg19_weights), cwd=BUNDLE)


def test_training_writes_checkpoints_model_grids_and_validation_metrics(trained):
    folder, log = trained
    models, grids = folder / "models", folder / "eval" / "grids"
    assert checkpoint_path(models, 1).is_file() and checkpoint_path(models, 2).is_file()
    assert set(load_generators(models)) == {"g_ab", "g_ba"}
    for name in ("train", "validation_ct_to_t2", "validation_t2_to_ct"):
        assert (grids / f"{name}_epoch=2.png").stat().st_size > 1000
    for metric in ("val_ct_to_t2_ssim", "val_t2_to_ct_ssim"):
        values = [float(v) for v in re.findall(rf"Metrics -- .*{metric}: ([-\d.]+)", log)]
        assert len(values) == 2 and all(-1.0 <= v <= 1.0 for v in values)
    # The synthetic CT's error in HU inside the head, every validation (the window spans 3000 HU).
    values = [float(v) for v in re.findall(r"Metrics -- .*val_t2_to_ct_mae_hu: ([\d.]+)", log)]
    assert len(values) == 2 and all(0.0 < v < 3000.0 for v in values)
    # k = 4: the discriminators are updated at iterations 1, 5, 9, ... only.
    updates = re.findall(r"Epoch: 1/2, Iter: (\d+)/\d+ -- d_updated: ([\d.]+)", log)
    assert updates and all((float(flag) == 1.0) == ((int(i) - 1) % 4 == 0) for i, flag in updates)


def test_killed_training_resumes_at_its_epoch_with_the_same_state(demo_dataset, vgg19_weights, trained, tmp_path):
    assert_killed_training_resumes_exactly(TRAIN_CONFIG, demo_dataset, tmp_path, trained[0],
                                           *weights_and_grids(vgg19_weights))


def test_multi_process_training_with_distributed_data_parallel(demo_dataset, vgg19_weights, tmp_path):
    # Two CPU processes with the gloo backend stand for two GPUs: the same config, the same code path.
    log = train_with_two_processes("cyclegan_ct_t2", demo_dataset, tmp_path, "--vgg19_weights", str(vgg19_weights))
    # Rank 0 alone logs, validates into the log and saves; the weights are saved without the DDP wrapper.
    assert len(re.findall(r"Epoch\[1\] Metrics -- .*val_ct_to_t2_ssim", log)) == 1
    assert checkpoint_path(tmp_path / "models", 1).is_file()
    model = load_generators(tmp_path / "models")
    assert set(model) == {"g_ab", "g_ba"} and not any(key.startswith("module.") for key in model["g_ab"])


@pytest.fixture(scope="module")
def inferred(demo_dataset, trained):
    """Inference on the test split, run from the repository root, with DICOM output."""
    folder, _ = trained
    return infer("bundles/cyclegan_ct_t2/configs/inference.json", demo_dataset, folder)


def test_inference_writes_synthetic_t2_and_ct_in_hounsfield_units_on_the_input_grids(demo_dataset, inferred):
    content = json.loads((demo_dataset / "dataset.json").read_text())
    window = content["ct_window"]
    low, high = window["center"] - window["width"] / 2, window["center"] + window["width"] / 2
    for direction, source in (("ct_to_t2", "ct"), ("t2_to_ct", "t2")):
        for values in assert_predictions_on_source_grids(demo_dataset, inferred, direction, source):
            if direction == "t2_to_ct":  # Hounsfield units, inside the cohort's window; air beyond the head
                head = values > CT_AIR_HU + 0.5
                assert np.all(values[~head] == CT_AIR_HU) and (~head).any()
                assert low - 1e-3 <= values[head].min() and values.max() <= high + 1e-3 and np.ptp(values[head]) > 10
            else:
                assert -1.0 <= values.min() and values.max() <= 1.0


def test_inference_writes_air_beyond_the_inputs_head_unless_told_not_to(demo_dataset, trained, inferred, tmp_path):
    import nibabel as nib

    from modality_translation.inference import IntensityMapping
    from modality_translation.inference.background import widen_mask

    folder, _ = trained
    output = tmp_path / "eval"
    run_bundle("run", "inference", "--config_file", "bundles/cyclegan_ct_t2/configs/inference.json",
               "--dataset_dir", str(demo_dataset), "--ckpt_dir", str(folder / "models"), "--output_dir", str(output),
               "--background_outside_head", "False", *cli(TINY_NETWORKS), cwd=REPO_ROOT)
    items = split_items(demo_dataset)
    for direction, source, air in (("t2_to_ct", "t2", CT_AIR_HU), ("ct_to_t2", "ct", -1.0)):
        plain = json.loads((output / direction / "predictions.json").read_text())["test"]
        filled = json.loads((inferred / direction / "predictions.json").read_text())["test"]  # the default
        for item, before, after in zip(items, plain, filled):
            image = nib.load(demo_dataset / item[source])
            # The input's head as the cohort's mappings find it ([z, y, x] is the NIfTI array's transpose).
            # The translator masks with the training record's options, so only what is far from this head
            # (beyond 20 mm) must be air and only the head itself must be the generator's.
            mapping = IntensityMapping.from_preprocessing_config(source, demo_dataset / "dataset.json")
            volume = image.get_fdata().astype(np.float32).T
            head = replace(mapping, on_network_scale=True).input_head_mask(volume)
            zooms = tuple(image.header.get_zooms()[:3])[::-1]
            far, head = ~widen_mask(head, zooms, 20.0).T, head.T
            before, after = nib.load(before["pred"]).get_fdata(), nib.load(after["pred"]).get_fdata()
            written = np.abs(after - air) > 0.5
            assert far.sum() > 1000 and not written[far].any()
            np.testing.assert_allclose(after[written], before[written], atol=1e-3)  # filling only ever writes air
            np.testing.assert_allclose(after[head], before[head], atol=1e-3)
            assert np.abs(before[far] - air).max() > 1e-2  # the generator alone does not write air there


def test_evaluation_gives_mae_in_hu_for_synthetic_ct_and_ssim_for_synthetic_t2(demo_dataset, inferred):
    run_bundle("run", "evaluate", "--config_file", "configs/evaluate.json", "--dataset_dir", str(demo_dataset),
               "--output_dir", str(inferred), cwd=BUNDLE)
    subjects = [item["subject"] for item in split_items(demo_dataset)]
    rows, summary = read_metrics(inferred / "t2_to_ct")
    assert [row["subject"] for row in rows] == subjects and all(float(row["mae_hu"]) > 0 for row in rows)
    assert summary["evaluation"]["units"] == "HU" and summary["evaluation"]["target_key"] == "truth_ct_in_t2"
    # Where it fails: the MAE per tissue class of the demo labels, and the worst subject as a picture.
    assert all(float(row[f"mae_hu_{tissue}"]) >= 0 for row in rows for tissue in ("soft_tissue", "bone"))
    worst = max(rows, key=lambda row: float(row["mae_hu"]))
    assert summary["worst_subject"] == {"subject": worst["subject"], "metric": "mae_hu",
                                        "value": pytest.approx(float(worst["mae_hu"])), "grid": "worst_subject.png"}
    assert (inferred / "t2_to_ct" / "worst_subject.png").stat().st_size > 5000
    rows, summary = read_metrics(inferred / "ct_to_t2")
    assert [row["subject"] for row in rows] == subjects and all(0.0 < float(row["ssim"]) <= 1.0 for row in rows)
    assert summary["worst_subject"]["metric"] == "ssim_masked"
    assert (inferred / "ct_to_t2" / "worst_subject.png").stat().st_size > 5000


def test_metadata_network_shapes_and_export(trained, tmp_path):
    verify_metadata_and_network_shapes(CONFIGS)
    folder, _ = trained
    # The synthetic-CT generator: T2 in, one CT channel per window out, blended onto the cohort's CT scale.
    network = export_tiny_generator(CONFIGS, folder / "models", "g_ba", tmp_path / "model.ts", net_id="g_ba_def")
    generator_state = load_generators(folder / "models")["g_ba"]
    assert torch.equal(network.state_dict()["network.up.0.1.weight"], generator_state["network.up.0.1.weight"])
    assert generator_state["network.up.0.1.weight"].shape[1] == 3  # brain, subdural and the cohort's window
    fake_ct = network(torch.zeros(1, 1, 32, 32))
    assert fake_ct.shape == (1, 1, 32, 32) and -1.0 <= fake_ct.min() and fake_ct.max() <= 1.0


def test_model_zoo_training_properties_and_the_studys_settings(demo_dataset, vgg19_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    workflow = tiny_training_workflow(CONFIGS, demo_dataset, tmp_path, vgg19_weights=str(vgg19_weights))
    trainer = workflow.trainer
    assert trainer.generator_steps_per_discriminator_step == 4 and trainer.lambda_identity == 0.0
    assert trainer.g_optimizer.param_groups[0]["lr"] == 1e-4 and trainer.d_optimizer.param_groups[0]["lr"] == 1e-3
    assert trainer.cycle_loss.weights == {"ssim": 1.0, "perceptual": 1.0}
    # The structure term is built (the CT side through the bundle's windows) but off by default.
    assert (trainer.lambda_structure_ab, trainer.lambda_structure_ba) == (0.0, 0.0) and trainer.lambda_background == 0.0
    assert [w.width for w in trainer.structure_loss.transform_a.windows] == [80.0, 200.0, 3000.0]
    # The perceptual term uses the given weights file.
    loaded = trainer.cycle_loss.terms["perceptual"].extractor.features[0].weight
    assert torch.equal(loaded, torch.load(vgg19_weights, weights_only=True)["features.0.weight"])


def test_without_the_perceptual_term_no_weights_file_is_needed(demo_dataset, tmp_path, monkeypatch):
    """``--perceptual_weight 0``: SSIM cycle loss only, and a missing VGG19 file is then no error."""
    monkeypatch.chdir(tmp_path)
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), logging_file=False, workflow_type="train",
                              bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), vgg19_weights=str(tmp_path / "absent.pth"),
                              perceptual_weight=0.0, ckpt_dir=str(tmp_path / "models"),
                              output_dir=str(tmp_path / "eval"), **TINY_TRAINING)
    workflow.initialize()
    assert workflow.trainer.cycle_loss.weights == {"ssim": 1.0}
    assert "perceptual" not in workflow.trainer.cycle_loss.terms


def test_structure_term_trains_through_the_bundle(demo_dataset, tmp_path, monkeypatch):
    """``--train#trainer#lambda_structure 5``: the MIND term (CT side through the windows) is in the generator loss."""
    monkeypatch.chdir(tmp_path)
    workflow = tiny_training_workflow(CONFIGS, demo_dataset, tmp_path, perceptual_weight=0.0,
                                      vgg19_weights=str(tmp_path / "absent.pth"),
                                      **{"train#trainer#lambda_structure": 5.0, "train#trainer#max_epochs": 1})
    workflow.run()
    output = workflow.trainer.state.output
    output = output[0] if isinstance(output, list) else output
    assert 0.0 < output["loss_structure"] < 2.0  # MIND descriptors lie in (0, 1], both directions summed


def test_missing_vgg19_weights_fail_first_before_any_data_is_built(tmp_path):
    demo_data = REPO_ROOT / "demo_data"
    existed = demo_data.exists()
    error = fail_before_training(CONFIGS, tmp_path, vgg19_weights=str(tmp_path / "vgg19-dcbb9e9d.pth"))
    assert isinstance(error, FileNotFoundError) and error.filename == str(tmp_path / "vgg19-dcbb9e9d.pth")
    assert "VGG19 weights file" in str(error)
    assert demo_data.exists() == existed  # the default demo cohort was not built


def test_vgg19_weights_of_another_network_are_refused(demo_dataset, tmp_path):
    wrong = tmp_path / "not_vgg19.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.1.weight": torch.zeros(64)}, wrong)
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(demo_dataset), vgg19_weights=str(wrong))
    assert isinstance(error, WeightsFileError) and str(error).startswith(str(wrong))
    assert "missing keys" in str(error)


def test_missing_dataset_fails_before_training(vgg19_weights, tmp_path):
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(tmp_path / "no_cohort"),
                                 vgg19_weights=str(vgg19_weights))
    assert isinstance(error, DatalistError) and "datalist does not exist" in str(error)


def test_inference_of_a_volume_of_the_wrong_modality_fails_before_translating(demo_dataset, trained, tmp_path):
    folder, _ = trained

    def t2_as_ct(content):
        for item in content["test"]:
            item["ct"] = item["t2"]

    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "cohort", t2_as_ct)
    with pytest.raises(Exception) as failure:
        run_in_process("inference", config_file=str(CONFIGS / "inference.json"), logging_file=False,
                       bundle_root=str(BUNDLE), dataset_dir=str(copy.parent), ckpt_dir=str(folder / "models"),
                       output_dir=str(tmp_path / "eval"), **TINY_NETWORKS)
    error = root_cause(failure.value)
    assert isinstance(error, ModalityMismatchError) and "named as a T2 image but is used as CT" in str(error)
    assert not (tmp_path / "eval").exists()


def test_inference_builds_its_networks_with_the_trainings_ct_windows(demo_dataset, trained, tmp_path):
    folder, _ = trained
    record = json.loads((folder / "models" / "training_record.json").read_text())
    assert record["settings"]["ct_channel_windows"][:2] == ["brain", "subdural"]
    inference = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), logging_file=False, workflow_type="infer",
                               bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), ckpt_dir=str(folder / "models"),
                               output_dir=str(tmp_path / "eval"), **TINY_NETWORKS)
    inference.initialize()
    generators = load_generators(folder / "models")
    for key, translator in (("g_ab", "forward"), ("g_ba", "reverse")):
        network = inference.parser.get_parsed_content(f"translators#{translator}").network
        for name, value in generators[key].items():
            assert torch.equal(network.state_dict()[name].cpu(), value), name
    # Weights trained through these windows are refused by a network built with others.
    other = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), logging_file=False, workflow_type="infer",
                           bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), ckpt_dir=str(folder / "models"),
                           output_dir=str(tmp_path / "eval"), ct_channel_windows=["stroke", "subdural", "bone"],
                           **TINY_NETWORKS)
    other.initialize()
    with pytest.raises(Exception) as failure:
        other.parser.get_parsed_content("translators#forward")
    error = root_cause(failure.value)
    assert isinstance(error, WeightsFileError) and "trained with CT input windows [0, 80], [-20, 180]" in str(error)


def test_the_ct_input_filter_is_recorded_by_training_and_applied_by_inference(demo_dataset, tmp_path, monkeypatch):
    """``--ct_input_denoise [1, 8]``: the CT -> T2 generator reads its CT through the bilateral filter; the training
    record and the weights carry it, inference builds it from the record, and a network built without it refuses them."""
    monkeypatch.chdir(tmp_path)
    workflow = tiny_training_workflow(CONFIGS, demo_dataset, tmp_path, perceptual_weight=0.0,
                                      vgg19_weights=str(tmp_path / "absent.pth"), ct_input_denoise=[1.0, 8.0],
                                      **{"train#trainer#max_epochs": 1})
    assert workflow.trainer.g_ab.channels.denoise == (1.0, 8.0)
    assert workflow.trainer.d_a.channels.denoise is None  # the CT discriminator sees the CT as it is
    workflow.run()
    record = json.loads((tmp_path / "models" / "training_record.json").read_text())
    assert record["settings"]["ct_input_denoise"] == [1.0, 8.0]
    assert load_generators(tmp_path / "models")["g_ab"]["input_denoise"].tolist() == [1.0, 8.0]
    inference = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), logging_file=False, workflow_type="infer",
                               bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), ckpt_dir=str(tmp_path / "models"),
                               output_dir=str(tmp_path / "eval"), **TINY_NETWORKS)
    inference.initialize()
    assert inference.parser.get_parsed_content("translators#forward").network.channels.denoise == (1.0, 8.0)
    unfiltered = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), logging_file=False, workflow_type="infer",
                                bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), ckpt_dir=str(tmp_path / "models"),
                                output_dir=str(tmp_path / "eval"), ct_input_denoise=None, **TINY_NETWORKS)
    unfiltered.initialize()
    with pytest.raises(Exception) as failure:
        unfiltered.parser.get_parsed_content("translators#forward")
    error = root_cause(failure.value)
    assert isinstance(error, WeightsFileError) and "trained with a bilateral CT input filter (1 px, 8 HU)" in str(error)


def test_the_generators_weight_average_is_validated_and_exported(demo_dataset, tmp_path, monkeypatch):
    """``--generator_average_decay 0.9``: validation sees the averaged generators and ``model.pt`` holds them; the
    training checkpoint keeps the trained weights and the average, so a resumed run averages on."""
    monkeypatch.chdir(tmp_path)
    workflow = tiny_training_workflow(CONFIGS, demo_dataset, tmp_path, perceptual_weight=0.0,
                                      vgg19_weights=str(tmp_path / "absent.pth"), generator_average_decay=0.9,
                                      **{"train#trainer#max_epochs": 1})
    average = workflow.parser.get_parsed_content("generator_average")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert evaluator.generator is average.network("g_ab") is not workflow.trainer.g_ab
    assert evaluator.reverse_generator is average.network("g_ba")
    workflow.run()
    exported = load_generators(tmp_path / "models")
    checkpoint = torch.load(checkpoint_path(tmp_path / "models", 1), weights_only=True)
    assert checkpoint["generator_average"]["g_ab"]["n_averaged"].item() == workflow.trainer.state.iteration
    for name in ("g_ab", "g_ba"):
        averaged = average.network(name).state_dict()
        assert set(exported[name]) == set(checkpoint[name])  # the plain network's keys: inference loads it as ever
        assert all(torch.equal(exported[name][key], averaged[key]) for key in averaged)
        assert any(not torch.equal(exported[name][key], checkpoint[name][key])
                   for key in averaged if averaged[key].is_floating_point())


def test_inference_builds_generators_of_the_recorded_depth(demo_dataset, trained, tmp_path):
    import math
    import shutil

    folder, _ = trained
    record = json.loads((folder / "models" / "training_record.json").read_text())
    assert record["settings"]["generator_depth"] == int(math.log2(record["settings"]["patch_size"]))
    models = tmp_path / "models"
    shutil.copytree(folder / "models", models)
    record["settings"]["generator_depth"] = 3
    (models / "training_record.json").write_text(json.dumps(record))
    inference = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), logging_file=False, workflow_type="infer",
                               bundle_root=str(BUNDLE), dataset_dir=str(demo_dataset), ckpt_dir=str(models),
                               output_dir=str(tmp_path / "eval"), **TINY_NETWORKS)
    inference.initialize()
    for generator in ("network_def", "g_ba_def"):
        assert inference.parser.get_parsed_content(generator).network.num_levels == 3, generator


def test_a_cohort_windowed_otherwise_than_the_bundle_is_refused_before_training(demo_dataset, vgg19_weights, tmp_path):
    def brain_window(content):
        content["ct_window"] = {"name": "brain", "center": 40.0, "width": 80.0, "out_range": [-1.0, 1.0]}

    copy = absolute_datalist_copy(demo_dataset / "dataset.json", tmp_path / "cohort", brain_window)
    error = fail_before_training(CONFIGS, tmp_path, dataset_dir=str(copy.parent), vgg19_weights=str(vgg19_weights))
    assert isinstance(error, DatalistError) and str(error).startswith(str(copy))
    assert "windowed with centre 40 HU, width 80 HU" in str(error) and "ct_window is centre 500, width 3000" in str(error)


def test_the_ablation_rows_merge_into_every_stage_and_set_what_they_name(tmp_path):
    from monai.bundle import ConfigParser

    rows = {row.name: row for row in read_rows(BUNDLE)}
    assert list(rows) == ["one_window", "windows", "windows_background", "windows_k1", "windows_l1_cycle",
                          "windows_own_spaces", "windows_background_structure", "windows_k1_background_structure",
                          "windows_level", "windows_k1_level", "windows_level_patches",
                          "windows_level_noise", "windows_level_structure", "windows_k2_level",
                          "windows_level_structure_ct_to_t2", "windows_level_lowpass_cycle",
                          "windows_level_denoise", "windows_level_average"]
    expected = {
        "one_window": {"ct_channels": 1},
        "windows": {"ct_channels": 3, "train#trainer#generator_steps_per_discriminator_step": 4,
                    "train#trainer#lambda_background": 0.0},
        "windows_background": {"train#trainer#lambda_background": 10.0, "train#trainer#background_region": "air"},
        "windows_k1": {"train#trainer#generator_steps_per_discriminator_step": 1},
        "windows_l1_cycle": {"cycle_loss_def#l1_weight": 1.0, "cycle_loss_def#ssim_weight": 0.0},
        "windows_background_structure": {"train#trainer#lambda_background": 10.0,
                                         "train#trainer#lambda_structure": 5.0},
        "windows_k1_background_structure": {"train#trainer#generator_steps_per_discriminator_step": 1,
                                            "train#trainer#lambda_background": 10.0,
                                            "train#trainer#lambda_structure": 5.0},
        "windows_level": {"level_window_mm": 5.0, "train#trainer#generator_steps_per_discriminator_step": 4,
                          "train#trainer#cycle_noise_std": [0.0, 0.0]},
        "windows_k1_level": {"level_window_mm": 5.0, "train#trainer#generator_steps_per_discriminator_step": 1},
        "windows_level_patches": {"level_window_mm": 5.0, "train#trainer#generator_steps_per_discriminator_step": 4,
                                  "patch_size": 128, "jitter_scale": 1.0},
        "windows_level_noise": {"level_window_mm": 5.0, "train#trainer#lambda_background": 0.0,
                                "train#trainer#generator_steps_per_discriminator_step": 4,
                                "train#trainer#cycle_noise_std": [20.0 * 2.0 / 3000.0, 0.05]},
        "windows_level_structure": {"level_window_mm": 5.0, "train#trainer#lambda_background": 0.0,
                                    "train#trainer#generator_steps_per_discriminator_step": 4,
                                    "train#trainer#lambda_structure": 5.0},
        "windows_k2_level": {"level_window_mm": 5.0, "train#trainer#lambda_background": 0.0,
                             "train#trainer#generator_steps_per_discriminator_step": 2},
        "windows_level_structure_ct_to_t2": {"level_window_mm": 5.0, "train#trainer#lambda_structure": [5.0, 0.0],
                                             "train#trainer#generator_steps_per_discriminator_step": 4},
        "windows_level_lowpass_cycle": {"level_window_mm": 5.0, "ct_cycle_smoothing_sigma": 1.0,
                                        "cycle_loss_ct#smoothing_sigma": 1.0},
        "windows_level_denoise": {"level_window_mm": 5.0, "ct_input_denoise": [1.0, 8.0],
                                  "network_def#denoise": [1.0, 8.0]},
        "windows_level_average": {"level_window_mm": 5.0, "generator_average_decay": 0.999,
                                  "train#trainer#generator_steps_per_discriminator_step": 4},
    }
    defaults = ConfigParser.load_config_file(str(CONFIGS / "train.json"))
    assert defaults["level_window_mm"] is None  # off by default
    # The background term, off by default, covers the air outside the head (the measured rows 3, 7, 8 set "air");
    # no noise in the cycle by default.
    assert defaults["train"]["trainer"]["background_region"] == "outside"
    assert (defaults["cycle_noise_hu"], defaults["cycle_noise_mr"]) == (0.0, 0.0)
    assert defaults["ct_cycle_smoothing_sigma"] == 0.0  # the CT cycle compares the images as they are
    assert defaults["ct_input_denoise"] is None  # the CT -> T2 generator reads the CT as it is
    assert defaults["generator_average_decay"] == 0.0  # the trained weights are validated and exported
    for name, row in rows.items():
        for stage, config in (("training", "train.json"), ("inference", "inference.json"), ("evaluate", "evaluate.json")):
            overlay = stage_overlay(BUNDLE, stage, row, tmp_path / name)
            parser = ConfigParser(ConfigParser.load_config_files([str(CONFIGS / config), str(overlay)]))
            parser["bundle_root"] = str(BUNDLE)
            assert parser.get_parsed_content("output_dir") == str(BUNDLE / "eval" / "ablation" / name)
            if stage == "training":
                assert parser.get_parsed_content("ckpt_dir") == str(BUNDLE / "models" / "ablation" / name)
                for key, value in expected.get(name, {}).items():
                    assert parser.get_parsed_content(key) == value, (name, key)
                # log2 of the training patch unless the row sets the depth
                depth = expected.get(name, {}).get("generator_depth", 7 if name == "windows_level_patches" else 8)
                for generator in ("network_def", "g_ba_def"):
                    assert parser.get_parsed_content(generator).network.num_levels == depth, (name, generator)
            if name == "windows_own_spaces" and stage != "training":
                assert parser.get_parsed_content("dataset_dir").endswith("preprocessed_own_spaces")
