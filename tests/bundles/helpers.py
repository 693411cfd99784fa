"""Helpers to run the bundles as a user would (``python -m monai.bundle``) and to check what they write."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from monai.bundle import run as run_in_process

from modality_translation.engines.checkpoint import checkpoint_path


REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = REPO_ROOT / "bundles"
SCHEMA = Path(__file__).resolve().parent / "meta_schema_20240725.json"

#: The demo preprocessing made fast for tests: rigid registration with few iterations (the CT
#: paired onto its own T2 and T1 rigidly too), no QC images, 32 x 32 slices.
FAST_PREPROCESSING = {
    "extends": "demo",
    "registration": {
        "common": {
            "transforms": ["Rigid"],
            "level_unit": "voxels",
            "linear_iterations": [20, 5],
            "linear_shrink_factors": [4, 2],
            "linear_smoothing_sigmas": [2, 1],
            "reference_spacing_mm": 16.0,
        }
    },
    "pairing": {"registration": {"transforms": ["Rigid"]}},
    "ct_pairing": {"registration": {"transforms": ["Rigid"]}},
    "qc": {"enabled": False},
    "slices": {"size": 32},
}

#: Networks small enough for a test: 32 x 32 slices, 5-level U-Nets of 8 base channels, 2-layer
#: PatchGANs, batches of 2 slices, validation every epoch. Epochs are whole passes over the tiny
#: cohort's slices: with a shorter epoch_length Ignite carries one data iterator across epochs,
#: which a resumed run (a new process, a new iterator) cannot reproduce exactly.
IMAGE_SIZE = 32
TINY_NETWORKS = {"image_size": IMAGE_SIZE, "generator_channels": 8}
TINY_TRAINING = {
    **TINY_NETWORKS,
    "discriminator_def#channels": 8,
    "discriminator_def#num_layers": 2,
    "train#dataloader#batch_size": 2,
    "num_workers": 0,
    "val_interval": 1,
    "log_interval": 2,
}


def cli(overrides: dict) -> list[str]:
    """``{"a#b": 1}`` -> ``["--a#b", "1"]``: overrides on the ``python -m monai.bundle`` command line."""
    return [part for key, value in overrides.items() for part in (f"--{key}", str(value))]


def bundle_env() -> dict[str, str]:
    # One thread per process: on a shared 2-core machine a second thread mostly waits.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def bundle_command(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", command, *args]


def torchrun_command(processes: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=<processes> -m monai.bundle <args>``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc_per_node={processes}", "-m", "monai.bundle", *args]


def run_bundle(command: str, *args: str, cwd: Path = REPO_ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <command> <args>``; fail the test with its output if it fails."""
    return run_checked(bundle_command(command, *args), cwd=cwd, timeout=timeout)


def run_checked(command: list[str], cwd: Path = REPO_ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run a command with :func:`bundle_env`; fail the test with its output if it fails."""
    result = subprocess.run(command, cwd=cwd, env=bundle_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def kill_after_file(command: list[str], path: Path, cwd: Path = REPO_ROOT, timeout: float = 180) -> int:
    """Start ``command``, SIGKILL it as soon as ``path`` exists, and return its exit status."""
    process = subprocess.Popen(command, cwd=cwd, env=bundle_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + timeout
    try:
        while not path.exists():
            if process.poll() is not None:
                raise AssertionError(f"the run ended (exit {process.returncode}) before {path} appeared:\n"
                                     f"{process.stderr.read()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} did not appear within {timeout} s")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        return process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def training_args(config_file: str, dataset: Path, folder: Path, *extra: str, epochs: int = 2) -> list[str]:
    """``run training`` arguments of a tiny training of ``epochs`` epochs into ``folder/models`` and ``folder/eval``."""
    return ["training", "--config_file", config_file, "--dataset_dir", str(dataset),
            "--ckpt_dir", str(folder / "models"), "--output_dir", str(folder / "eval"),
            "--train#trainer#max_epochs", str(epochs), *extra, *cli(TINY_TRAINING)]


def train(config_file: str, dataset: Path, folder: Path, *extra: str, cwd: Path = REPO_ROOT) -> str:
    """Run a two-epoch tiny training (:func:`training_args`); return its log (stdout and stderr)."""
    result = run_bundle("run", *training_args(config_file, dataset, folder, *extra), cwd=cwd)
    return result.stdout + result.stderr


def train_with_two_processes(bundle: str, dataset: Path, folder: Path, *extra: str) -> str:
    """One epoch of tiny training by two CPU processes (gloo) with the bundle's ``multi_gpu_train.json``; the log."""
    configs = f"['bundles/{bundle}/configs/train.json','bundles/{bundle}/configs/multi_gpu_train.json']"
    return run_checked(torchrun_command(2, "run", *training_args(configs, dataset, folder, *extra, epochs=1))).stdout


def assert_two_process_pix2pix_training(bundle: str, dataset: Path, folder: Path, metric: str) -> None:
    """One epoch of a pix2pix bundle by two processes (:func:`train_with_two_processes`): rank 0 alone logs the
    validation ``metric``, and the generator is saved without the DDP wrapper."""
    log = train_with_two_processes(bundle, dataset, folder)
    assert len(re.findall(rf"Epoch\[1\] Metrics -- .*{metric}", log)) == 1
    model = load_generators(folder / "models")
    assert "down.0.0.weight" in model and not any(key.startswith("module.") for key in model)


def load_generators(models: Path) -> dict:
    """The ``model.pt`` a training saves: ``{"g_ab": state dict, "g_ba": state dict}``."""
    return torch.load(models / "model.pt", map_location="cpu", weights_only=True)


def infer(config_file: str, dataset: Path, folder: Path, cwd: Path = REPO_ROOT) -> Path:
    """Translate the test split with the tiny generators of ``folder/models``, with DICOM output; the output folder."""
    run_bundle("run", "inference", "--config_file", config_file, "--dataset_dir", str(dataset),
               "--ckpt_dir", str(folder / "models"), "--output_dir", str(folder / "eval"), "--write_dicom", "True",
               *cli(TINY_NETWORKS), cwd=cwd)
    return folder / "eval"


def split_items(dataset: Path, split: str = "test") -> list[dict]:
    """The items of a split of a cohort's ``dataset.json``, as listed (relative paths)."""
    return json.loads((dataset / "dataset.json").read_text())[split]


def assert_predictions_on_source_grids(
    dataset: Path, inferred: Path, direction: str, source_key: str
) -> list[np.ndarray]:
    """Every test subject has a prediction of ``direction`` on its ``source_key`` volume's grid, one DICOM file a slice.

    Returns:
        The prediction arrays, in subject order, for the direction's own value checks.
    """
    items = split_items(dataset)
    predictions = json.loads((inferred / direction / "predictions.json").read_text())["test"]
    assert [p["subject"] for p in predictions] == [item["subject"] for item in items]
    arrays = []
    for item, prediction in zip(items, predictions):
        pred, source_image = nib.load(prediction["pred"]), nib.load(dataset / item[source_key])
        assert pred.shape == source_image.shape
        np.testing.assert_allclose(pred.affine, source_image.affine, atol=1e-4)
        assert len(list((inferred / direction / item["subject"] / "pred_dicom").glob("*.dcm"))) == pred.shape[2]
        arrays.append(pred.get_fdata())
    return arrays


def read_metrics(folder: Path) -> tuple[list[dict[str, str]], dict]:
    """The per-subject rows of ``folder/metrics.csv`` and the summary ``folder/metrics_summary.json``."""
    with open(folder / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return rows, json.loads((folder / "metrics_summary.json").read_text())


def verify_metadata_and_network_shapes(configs: Path) -> None:
    """``metadata.json`` against the MONAI bundle schema, and the default network against its data format."""
    verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(SCHEMA))
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "train.json"), device="cpu", bundle_root=str(configs.parent))


def export_tiny_generator(configs: Path, models: Path, key: str, exported: Path, net_id: str = "network_def",
                          **overrides) -> torch.jit.ScriptModule:
    """Export the trained tiny generator ``key`` of ``models/model.pt`` to TorchScript with ``ckpt_export``; load it.

    ``net_id`` is the config id of its network (``"g_ba_def"`` where the two generators differ); ``overrides``
    are more config overrides of ``inference.json`` (e.g. ``{"network_def#direction": "b_to_a"}``).
    """
    # ckpt_dir: inference.json builds the network from the training record beside the weights, not from one a
    # training of the repository's own bundle folder (the README's quick start) may have left there.
    ckpt_export(net_id=net_id, filepath=str(exported), ckpt_file=str(models / "model.pt"), ckpt_dir=str(models),
                key_in_ckpt=key, meta_file=str(configs / "metadata.json"), config_file=str(configs / "inference.json"),
                use_trace=True, input_shape=[1, 1, IMAGE_SIZE, IMAGE_SIZE], image_size=IMAGE_SIZE,
                generator_channels=TINY_NETWORKS["generator_channels"], bundle_root=str(configs.parent), **overrides)
    return torch.jit.load(str(exported))


def assert_pix2pix_generator_exports(configs: Path, models: Path, exported: Path) -> None:
    """A pix2pix bundle's trained tiny generator (``model.pt`` is its state dict itself) exports to
    TorchScript with its weights and maps slices to slices of the same size."""
    network = export_tiny_generator(configs, models, "", exported)
    state = load_generators(models)
    assert torch.equal(network.state_dict()["down.0.0.weight"], state["down.0.0.weight"])
    assert network(torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)


def tiny_training_workflow(configs: Path, dataset: Path, folder: Path, **overrides) -> ConfigWorkflow:
    """A bundle's tiny training workflow on ``dataset``, writing under ``folder``, initialised, with the
    model zoo's training properties checked."""
    workflow = ConfigWorkflow(config_file=str(configs / "train.json"), logging_file=False, workflow_type="train",
                              bundle_root=str(configs.parent), dataset_dir=str(dataset), ckpt_dir=str(folder / "models"),
                              output_dir=str(folder / "eval"), **{**TINY_TRAINING, **overrides})
    workflow.initialize()
    assert workflow.check_properties() == []
    return workflow


def pix2pix_training_workflow(configs: Path, dataset: Path, folder: Path) -> ConfigWorkflow:
    """A pix2pix bundle's tiny training workflow, initialised, with the model zoo's training properties checked,
    the paper's recipe asserted (200 epochs, BCE + 100 L1, Adam 2e-4 (0.5, 0.999), dropout 0.5 on three
    decoder steps, a conditional discriminator on the two-channel pair); run from inside ``folder``."""
    workflow = tiny_training_workflow(configs, dataset, folder)
    trainer = workflow.trainer
    assert workflow.max_epochs == 200 and trainer.lambda_reconstruction == 100.0
    assert isinstance(trainer.reconstruction_loss, torch.nn.L1Loss) and trainer.adversarial_loss.mode == "bce"
    assert trainer.g_optimizer.defaults["lr"] == 2e-4 and trainer.g_optimizer.defaults["betas"] == (0.5, 0.999)
    dropouts = [m.p for m in trainer.generator.modules() if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout)]
    assert dropouts == [0.5, 0.5, 0.5]
    # Conditional discriminator: source channel + judged image.
    first = next(m for m in trainer.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 2
    return workflow


def datalist_without_pair(dataset: Path, destination: Path, pair: str) -> Path:
    """A copy of a cohort's datalist whose first training subject has no ``<pair>_slices``; its folder."""
    def drop_pair(content):
        del content["training"][0][f"{pair}_slices"]

    return absolute_datalist_copy(dataset / "dataset.json", destination, drop_pair).parent


def datalist_with_pair_on_another_grid(dataset: Path, destination: Path, pair: str, change) -> tuple[Path, Path]:
    """A copy of a cohort's datalist whose first training subject's ``<pair>_slice_index`` records another grid
    (``change(geometry)`` applied to every slice's geometry); its folder and the changed index file."""
    moved_index = destination / f"moved_{pair}_slices.json"

    def on_another_grid(content):
        item = content["training"][0]
        index = json.loads(Path(item[f"{pair}_slice_index"]).read_text())
        for entry in index["slices"]:
            change(entry["geometry"])
        moved_index.parent.mkdir(parents=True, exist_ok=True)
        moved_index.write_text(json.dumps(index))
        item[f"{pair}_slice_index"] = str(moved_index)

    return absolute_datalist_copy(dataset / "dataset.json", destination / "cohort", on_another_grid).parent, moved_index


def fail_before_training(configs: Path, tmp_path: Path, **overrides) -> BaseException:
    """Run the tiny training of a bundle's ``configs/train.json`` in-process with overrides; check that it stopped
    before training; return the root cause of its failure."""
    arguments = {**TINY_TRAINING, "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"),
                 **overrides}
    with pytest.raises(Exception) as failure:
        run_in_process("training", config_file=str(configs / "train.json"), logging_file=False,
                       bundle_root=str(configs.parent), **arguments)
    assert not (tmp_path / "models").exists(), "training started before the error"
    return root_cause(failure.value)


def root_cause(error: BaseException) -> BaseException:
    """The first error of a chain (MONAI wraps errors raised inside a config in RuntimeError)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def absolute_datalist_copy(datalist: Path, destination: Path, edit) -> Path:
    """Copy a datalist elsewhere with absolute paths, after ``edit(content)``."""
    content = json.loads(datalist.read_text())

    def absolute(value):
        if isinstance(value, str) and (datalist.parent / value).exists():
            return str(datalist.parent / value)
        if isinstance(value, list):
            return [absolute(v) for v in value]
        return value

    for split in ("training", "validation", "test"):
        content[split] = [{key: absolute(value) for key, value in item.items()} for item in content[split]]
    edit(content)
    destination.mkdir(parents=True, exist_ok=True)
    path = destination / "dataset.json"
    path.write_text(json.dumps(content))
    return path


def assert_same_training_state(first: Path, second: Path) -> None:
    """Two training checkpoints hold exactly the same networks, optimiser moments, schedulers, pools and RNG."""
    a = torch.load(first, map_location="cpu", weights_only=True)
    b = torch.load(second, map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()

    def compare(x, y, where):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), f"{where} differs"
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), f"{where} keys differ"
            for key in x:
                compare(x[key], y[key], f"{where}.{key}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), f"{where} lengths differ"
            for i, (u, v) in enumerate(zip(x, y)):
                compare(u, v, f"{where}[{i}]")
        else:
            assert x == y, f"{where}: {x!r} != {y!r}"

    compare(a, b, "checkpoint")


def assert_killed_training_resumes_exactly(config_file: str, dataset: Path, folder: Path, uninterrupted: Path,
                                           *extra: str) -> None:
    """Kill a two-epoch tiny training into ``folder`` as soon as its first checkpoint exists, run the same
    command again, and check that it continued at epoch 2 and ended in exactly the state of the
    uninterrupted run in ``uninterrupted`` (weights, optimiser moments, schedules, pools, RNG, epoch, iteration)."""
    first_checkpoint = checkpoint_path(folder / "models", 1)
    args = training_args(config_file, dataset, folder, *extra)
    assert kill_after_file(bundle_command("run", *args), first_checkpoint) == -9
    assert not checkpoint_path(folder / "models", 2).exists()
    # The same command again: it continues from epoch 1 (the default --resume true) instead of restarting.
    log = run_bundle("run", *args).stdout
    assert f"Restored all variables from {first_checkpoint}" in log
    assert "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log
    assert_same_training_state(checkpoint_path(uninterrupted / "models", 2), checkpoint_path(folder / "models", 2))
