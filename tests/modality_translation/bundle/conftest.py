"""Tiny trained bundles for the packaging tests: a bundle's folder copied, with random weights of the right structure.

Training is not run: ``models/model.pt`` holds randomly initialised networks built from the bundle's
``inference.json`` at 32 x 32 slices and 8 base channels, saved as the bundle's ``CheckpointSaver``
saves them (one network: its state dict itself; CycleGAN: ``{"g_ab", "g_ba"}``), with a training
record of those settings, a reference volume and an evaluation summary per direction.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA = REPO_ROOT / "tests" / "bundles" / "meta_schema_20240725.json"
TINY_SETTINGS = {"image_size": 32, "generator_channels": 8}
#: 2025-03-04 12:00 UTC: the modification time given to the tiny model.pt (the changelog's date).
MODEL_TIME = 1741089600
MODEL_DATE = "2025-03-04"
SUMMARY = {
    "evaluation": {"split": "test", "n_subjects": 2, "units": "normalised", "modality": "t2"},
    "fid": {"note": "FID skipped", "value": None},
    "mae": {"mean": 0.25, "median": 0.25, "n": 2, "n_non_finite": 0, "std": 0.01},
    "psnr_db": {"mean": 21.5, "median": 21.5, "n": 2, "n_non_finite": 0, "std": 0.5},
    "ssim": {"mean": 0.75, "median": 0.75, "n": 2, "n_non_finite": 0, "std": 0.02},
}


def tiny_network(bundle: Path, seed: int) -> torch.nn.Module:
    """The bundle's ``network_def`` at the tiny settings, randomly initialised from ``seed``."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle), **TINY_SETTINGS})
    torch.manual_seed(seed)
    return parser.get_parsed_content("network_def", instantiate=True)


def make_tiny_trained_bundle(name: str, destination: Path, record: bool = True, evaluated: bool = True) -> Path:
    """Copy ``bundles/<name>`` to ``destination/<name>`` and give it tiny random weights, a record and evaluations."""
    bundle = destination / name
    shutil.copytree(REPO_ROOT / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    models = bundle / "models"
    models.mkdir()
    if name.startswith("cyclegan"):
        state = {"g_ab": tiny_network(bundle, 1).state_dict(), "g_ba": tiny_network(bundle, 2).state_dict()}
    else:
        state = tiny_network(bundle, 1).state_dict()
    torch.save(state, models / "model.pt")
    os.utime(models / "model.pt", (MODEL_TIME, MODEL_TIME))
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    # The modalities as trained (train.json's literals; inference.json takes them from the record).
    trained = json.loads((bundle / "configs" / "train.json").read_text())
    source, target = trained["source"], trained["target"]
    if record:
        (models / "references").mkdir()
        nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)),
                 models / "references" / f"reference_{source}.nii.gz")
        (models / "training_record.json").write_text(json.dumps({
            "format_version": 1, "bundle": {"name": name, "version": "0.1.0"},
            "settings": {**TINY_SETTINGS, "neighbours": 0} if "neighbours" in inference else dict(TINY_SETTINGS),
            "overrides": {"train#trainer#max_epochs": 2, **TINY_SETTINGS},
            "modalities": {"source": source, "target": target},
            "references": {source: f"references/reference_{source}.nii.gz"},
        }))
    if evaluated:
        directions = [f"{source}_to_{target}"] + ([f"{target}_to_{source}"] if "translators" in inference else [])
        for index, direction in enumerate(directions):
            summary = bundle / "eval" / direction / "metrics_summary.json"
            summary.parent.mkdir(parents=True)
            summary.write_text(json.dumps({**SUMMARY, "ssim": {**SUMMARY["ssim"], "mean": 0.75 - 0.1 * index}}))
            os.utime(summary, (MODEL_TIME + 60, MODEL_TIME + 60))
    return bundle


@pytest.fixture(scope="module")
def pix2pix_zip(tmp_path_factory) -> Path:
    """A tiny trained pix2pix T1 -> T2 bundle, packaged."""
    from modality_translation.bundle.package import package_bundle

    folder = tmp_path_factory.mktemp("pix2pix")
    bundle = make_tiny_trained_bundle("pix2pix_t1_t2", folder / "bundles")
    return package_bundle(bundle, folder / "packages")
