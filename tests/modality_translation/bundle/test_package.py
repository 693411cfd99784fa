"""package_bundle: MONAI's bundle layout, hashes, completed metadata, TorchScript equal to the eager network,
the same bytes twice, and clear refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from monai.bundle import verify_metadata
from monai.data import load_net_with_metadata

from modality_translation.bundle.errors import BundleIntegrityError
from modality_translation.bundle.package import package_bundle
from tests.modality_translation.bundle.conftest import (
    MODEL_DATE,
    MODEL_TIME,
    REPO_ROOT,
    SCHEMA,
    TINY_SETTINGS,
    make_tiny_trained_bundle,
    tiny_network,
)


def test_entries_follow_the_bundle_layout(pix2pix_zip):
    assert pix2pix_zip.name == "pix2pix_t1_t2_v0.1.0.zip"
    names = zipfile.ZipFile(pix2pix_zip).namelist()
    assert names == sorted(names)
    docs = sorted(f"pix2pix_t1_t2/{p.relative_to(REPO_ROOT / 'bundles' / 'pix2pix_t1_t2').as_posix()}"
                  for p in (REPO_ROOT / "bundles" / "pix2pix_t1_t2" / "docs").rglob("*") if p.is_file())
    configs = [f"pix2pix_t1_t2/configs/{name}" for name in
               ("evaluate.json", "inference.json", "logging.conf", "metadata.json", "multi_gpu_train.json", "train.json")]
    models = [f"pix2pix_t1_t2/models/{name}" for name in
              ("model.pt", "model.ts", "references/reference_t1.nii.gz", "training_record.json")]
    assert names == sorted(["pix2pix_t1_t2/LICENSE", "pix2pix_t1_t2/large_files.yml", *configs, *docs, *models])
    for info in zipfile.ZipFile(pix2pix_zip).infolist():
        assert info.date_time == (1980, 1, 1, 0, 0, 0)


def test_large_files_lists_every_model_file_with_its_sha256(pix2pix_zip):
    archive = zipfile.ZipFile(pix2pix_zip)
    listed = yaml.safe_load(archive.read("pix2pix_t1_t2/large_files.yml"))["large_files"]
    model_files = [name for name in archive.namelist() if name.startswith("pix2pix_t1_t2/models/")]
    assert [f"pix2pix_t1_t2/{entry['path']}" for entry in listed] == model_files
    for entry in listed:
        assert entry["hash_type"] == "sha256" and entry["url"] == ""
        assert entry["hash_val"] == hashlib.sha256(archive.read(f"pix2pix_t1_t2/{entry['path']}")).hexdigest()


def test_metadata_has_eval_metrics_changelog_and_settings_and_validates(pix2pix_zip, tmp_path):
    archive = zipfile.ZipFile(pix2pix_zip)
    metadata = json.loads(archive.read("pix2pix_t1_t2/configs/metadata.json"))
    assert metadata["eval_metrics"] == {"t1_to_t2": {
        "file": "eval/t1_to_t2/metrics_summary.json", "split": "test", "n_subjects": 2, "units": "normalised",
        "metrics": {"mae": {"mean": 0.25, "std": 0.01}, "psnr_db": {"mean": 21.5, "std": 0.5}, "ssim": {"mean": 0.75, "std": 0.02}},
    }}
    assert metadata["trained_with"]["settings"] == {**TINY_SETTINGS, "neighbours": 0}
    assert metadata["trained_with"]["overrides"]["train#trainer#max_epochs"] == 2
    entry = metadata["changelog"]["0.1.0"]
    assert entry.startswith("pix2pix T1 -> T2 on registered pairs")  # the version's own description is kept
    model_sha = hashlib.sha256(archive.read("pix2pix_t1_t2/models/model.pt")).hexdigest()
    assert f"packaged {MODEL_DATE}: models/model.pt (sha256 {model_sha[:12]}...)" in entry
    assert "generator_channels=8, image_size=32, neighbours=0" in entry and "eval/t1_to_t2/metrics_summary.json" in entry
    assert metadata["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32]
    assert metadata["network_data_format"]["outputs"]["pred"]["spatial_shape"] == [32, 32]
    (tmp_path / "metadata.json").write_bytes(archive.read("pix2pix_t1_t2/configs/metadata.json"))
    verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))
    inference = json.loads(archive.read("pix2pix_t1_t2/configs/inference.json"))
    assert (inference["image_size"], inference["generator_channels"], inference["neighbours"]) == (32, 8, 0)
    assert inference["slice_channels"] == "$2 * @neighbours + 1"  # expressions are left alone
    readme = archive.read("pix2pix_t1_t2/docs/README.md").decode()
    assert readme.startswith((REPO_ROOT / "bundles" / "pix2pix_t1_t2" / "docs" / "README.md").read_text().rstrip("\n"))
    assert "- `image_size`: `32`" in readme and "ssim 0.75 ± 0.02" in readme


def test_torchscript_runs_and_matches_the_eager_generator(pix2pix_zip, tmp_path):
    archive = zipfile.ZipFile(pix2pix_zip)
    scripted, meta, _ = load_net_with_metadata(io.BytesIO(archive.read("pix2pix_t1_t2/models/model.ts")))
    assert meta["version"] == "0.1.0" and "eval_metrics" in meta
    eager = tiny_network(REPO_ROOT / "bundles" / "pix2pix_t1_t2", seed=0)
    eager.load_state_dict(torch.load(io.BytesIO(archive.read("pix2pix_t1_t2/models/model.pt")), weights_only=True))
    eager.eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        expected, found = eager(x), scripted(x)
    assert found.shape == (2, 1, 32, 32)
    assert torch.allclose(found, expected, atol=1e-5)
    assert not torch.allclose(found, scripted(-x), atol=1e-3)  # it depends on its input


def test_two_directions_and_the_same_bytes_twice(tmp_path):
    bundle = make_tiny_trained_bundle("cyclegan_t1_t2", tmp_path / "bundles")
    first = package_bundle(bundle, tmp_path / "first")
    second = package_bundle(bundle, tmp_path / "second")
    assert first.read_bytes() == second.read_bytes()
    archive = zipfile.ZipFile(first)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    for file, key in (("model.ts", "g_ab"), ("model_reverse.ts", "g_ba")):
        eager = tiny_network(bundle, seed=0)
        eager.load_state_dict(state[key])
        with torch.no_grad():
            found = torch.jit.load(io.BytesIO(archive.read(f"cyclegan_t1_t2/models/{file}")))(x)
            assert torch.allclose(found, eager.eval()(x), atol=1e-5)
    metadata = json.loads(archive.read("cyclegan_t1_t2/configs/metadata.json"))
    assert sorted(metadata["eval_metrics"]) == ["t1_to_t2", "t2_to_t1"]
    assert metadata["eval_metrics"]["t2_to_t1"]["metrics"]["ssim"]["mean"] == pytest.approx(0.65)
    assert first.parent == tmp_path / "first" and sorted(os.listdir(first.parent)) == [first.name]


def test_unit_forward_and_reverse_translations(tmp_path):
    bundle = make_tiny_trained_bundle("unit_t1_t2", tmp_path / "bundles", record=True, evaluated=False)
    archive = zipfile.ZipFile(package_bundle(bundle, tmp_path / "out", date="2025-01-02"))
    network = tiny_network(bundle, seed=0)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        for file, direction in (("model.ts", "a_to_b"), ("model_reverse.ts", "b_to_a")):
            found = torch.jit.load(io.BytesIO(archive.read(f"unit_t1_t2/models/{file}")))(x)
            assert torch.allclose(found, network(x, direction=direction), atol=1e-5)
    metadata = json.loads(archive.read("unit_t1_t2/configs/metadata.json"))
    assert metadata["eval_metrics"] == {} and "packaged 2025-01-02" in metadata["changelog"]["0.1.0"]
    assert "not evaluated" in metadata["changelog"]["0.1.0"]


def test_refusals_name_the_file_and_write_nothing(tmp_path):
    bundle = make_tiny_trained_bundle("pix2pix_t1_t2", tmp_path / "bundles", record=False)
    output = tmp_path / "out"
    summary = bundle / "eval" / "t1_to_t2" / "metrics_summary.json"
    os.utime(summary, (MODEL_TIME - 60, MODEL_TIME - 60))
    with pytest.raises(BundleIntegrityError, match="older than models/model.pt") as raised:
        package_bundle(bundle, output)
    assert raised.value.path == str(summary)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(BundleIntegrityError, match="train the bundle first") as raised:
        package_bundle(bundle, output)
    assert raised.value.path == str(bundle / "models" / "model.pt")
    for config in ("inference.json", "metadata.json"):
        (bundle / "configs" / config).unlink()
        with pytest.raises(BundleIntegrityError, match="is missing") as raised:
            package_bundle(bundle, output)
        assert raised.value.path == str(bundle / "configs" / config)
    assert not output.exists()


def test_weights_of_another_network_are_refused(tmp_path):
    bundle = make_tiny_trained_bundle("pix2pix_t1_t2", tmp_path / "bundles")
    record = json.loads((bundle / "models" / "training_record.json").read_text())
    record["settings"]["generator_channels"] = 16  # the weights were trained with 8
    (bundle / "models" / "training_record.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="model.pt"):
        package_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_error_is_one_line(tmp_path):
    bundle = make_tiny_trained_bundle("pix2pix_t1_t2", tmp_path / "bundles", record=False, evaluated=False)
    (bundle / "models" / "model.pt").unlink()
    result = subprocess.run([sys.executable, "-m", "modality_translation.bundle", "package", str(bundle), "--output",
                             str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "model.pt" in result.stderr and "train the bundle first" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_evaluation_of_one_subject_has_no_spread(tmp_path):
    # The small demo's test split can hold one subject: its summary has a mean and no standard deviation.
    bundle = make_tiny_trained_bundle("pix2pix_t1_t2", tmp_path / "bundles")
    summary_path = bundle / "eval" / "t1_to_t2" / "metrics_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["ssim"] = {"mean": 0.61, "median": 0.61, "n": 1, "n_non_finite": 0, "std": None}
    summary_path.write_text(json.dumps(summary))
    os.utime(summary_path, (MODEL_TIME + 60, MODEL_TIME + 60))
    archive = zipfile.ZipFile(package_bundle(bundle, tmp_path / "packages"))
    metadata = json.loads(archive.read("pix2pix_t1_t2/configs/metadata.json"))
    assert metadata["eval_metrics"]["t1_to_t2"]["metrics"]["ssim"] == {"mean": 0.61, "std": None}
    (tmp_path / "metadata.json").write_bytes(archive.read("pix2pix_t1_t2/configs/metadata.json"))
    verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))
    assert "ssim 0.61 (one subject)" in archive.read("pix2pix_t1_t2/docs/README.md").decode()
