"""Helpers to run the bundles as a user would (``python -m monai.bundle``) and to check what they write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLES = REPO_ROOT / "bundles"
SCHEMA = Path(__file__).resolve().parent / "meta_schema_20240725.json"

#: The demo preprocessing made fast for tests: rigid registration with few iterations, no QC
#: images, 32 x 32 slices.
FAST_PREPROCESSING = {
    "extends": "demo",
    "registration": {
        "common": {
            "transforms": ["Rigid"],
            "linear_iterations": [20, 5],
            "linear_shrink_factors": [4, 2],
            "linear_smoothing_sigmas": [2, 1],
            "reference_spacing_mm": 16.0,
        }
    },
    "pairing": {"registration": {"transforms": ["Rigid"]}},
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
