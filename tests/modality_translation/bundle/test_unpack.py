"""unpack_bundle: a package round trip, MONAI's own download of a local package, and each refusal."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import pytest
import torch

from modality_translation.bundle.__main__ import main
from modality_translation.bundle.errors import BundleIntegrityError
from modality_translation.bundle.large_files import verify_large_files
from modality_translation.bundle.unpack import unpack_bundle
from tests.modality_translation.bundle.conftest import REPO_ROOT


def rewrite(source, destination, drop=(), replace=None, add=None):
    """A copy of the zip ``source`` without the entries ``drop``, with ``replace`` / ``add`` entries' bytes."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(destination, "w") as copy:
        for info in original.infolist():
            if info.filename not in drop:
                copy.writestr(info, (replace or {}).get(info.filename, original.read(info)))
        for name, data in (add or {}).items():
            copy.writestr(name, data)
    return destination


def test_round_trip(pix2pix_zip, tmp_path):
    bundle = unpack_bundle(pix2pix_zip, tmp_path / "site")
    assert bundle == tmp_path / "site" / "pix2pix_t1_t2"
    archive = zipfile.ZipFile(pix2pix_zip)
    files = sorted(p.relative_to(tmp_path / "site").as_posix() for p in bundle.rglob("*") if p.is_file())
    assert files == archive.namelist()
    for name in files:
        assert (tmp_path / "site" / name).read_bytes() == archive.read(name)
    assert verify_large_files(bundle) == ["models/model.pt", "models/model.ts", "models/references/reference_t1.nii.gz",
                                          "models/training_record.json"]
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == ["pix2pix_t1_t2"]  # no temporary folder left
    assert main(["verify", str(bundle)]) == 0
    network = torch.jit.load(str(bundle / "models" / "model.ts"))
    assert network(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_monai_download_of_a_local_package(pix2pix_zip, tmp_path):
    """``python -m monai.bundle download --name <name> --url file://...`` extracts the package as MONAI's own."""
    folder = tmp_path / "downloaded"
    for command in (["download", "--name", "pix2pix_t1_t2", "--url", pix2pix_zip.as_uri(), "--bundle_dir", str(folder)],
                    ["download_large_files", "--bundle_path", str(folder / "pix2pix_t1_t2")]):
        result = subprocess.run([sys.executable, "-m", "monai.bundle", *command], capture_output=True, text=True, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-2000:]
    assert verify_large_files(folder / "pix2pix_t1_t2")[0] == "models/model.pt"


def test_not_a_zip(tmp_path):
    fake = tmp_path / "pix2pix_t1_t2_v0.1.0.zip"
    fake.write_text("not a zip")
    with pytest.raises(BundleIntegrityError, match="is not a MONAI bundle: not a zip file") as raised:
        unpack_bundle(fake, tmp_path / "site")
    assert raised.value.path == str(fake)
    assert not (tmp_path / "site").exists()


def test_zip_without_configs(pix2pix_zip, tmp_path):
    broken = rewrite(pix2pix_zip, tmp_path / "broken.zip",
                     drop={"pix2pix_t1_t2/configs/metadata.json", "pix2pix_t1_t2/configs/inference.json"})
    with pytest.raises(BundleIntegrityError, match="is not a MONAI bundle: pix2pix_t1_t2/ has no "
                       "configs/metadata.json, configs/inference.json"):
        unpack_bundle(broken, tmp_path / "site")
    two_tops = rewrite(pix2pix_zip, tmp_path / "two.zip", add={"other/configs/metadata.json": "{}"})
    with pytest.raises(BundleIntegrityError, match="expected one top folder <name>/, found other, pix2pix_t1_t2"):
        unpack_bundle(two_tops, tmp_path / "site")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("name, message", [
    ("pix2pix_t1_t2/../../escape.txt", "leading outside its folder"),
    ("/etc/escape.txt", "absolute path"),
])
def test_unsafe_entries(pix2pix_zip, tmp_path, name, message):
    unsafe = rewrite(pix2pix_zip, tmp_path / "unsafe.zip", add={name: "x"})
    with pytest.raises(BundleIntegrityError, match=message):
        unpack_bundle(unsafe, tmp_path / "site" / "inner")
    assert not (tmp_path / "site").exists() and not (tmp_path / "escape.txt").exists()


def test_tampered_model_is_a_hash_mismatch(pix2pix_zip, tmp_path):
    archive = zipfile.ZipFile(pix2pix_zip)
    state = torch.load(io.BytesIO(archive.read("pix2pix_t1_t2/models/model.pt")), weights_only=True)
    state["down.0.0.weight"] = state["down.0.0.weight"] + 0.01
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tampered = rewrite(pix2pix_zip, tmp_path / "tampered.zip", replace={"pix2pix_t1_t2/models/model.pt": buffer.getvalue()})
    with pytest.raises(BundleIntegrityError, match=r"sha256 mismatch: large_files.yml expects [0-9a-f]{12}\.\.\., "
                       r"the file has [0-9a-f]{12}\.\.\.") as raised:
        unpack_bundle(tampered, tmp_path / "site")
    assert raised.value.path == f"{tampered}:pix2pix_t1_t2/models/model.pt"
    assert list((tmp_path / "site").iterdir()) == []


def test_missing_listed_file(pix2pix_zip, tmp_path):
    incomplete = rewrite(pix2pix_zip, tmp_path / "incomplete.zip", drop={"pix2pix_t1_t2/models/model.ts"})
    with pytest.raises(BundleIntegrityError, match="listed in large_files.yml but missing") as raised:
        unpack_bundle(incomplete, tmp_path / "site")
    assert raised.value.path.endswith("pix2pix_t1_t2/models/model.ts")
    assert list((tmp_path / "site").iterdir()) == []


def test_existing_destination_is_left_alone(pix2pix_zip, tmp_path):
    (tmp_path / "site" / "pix2pix_t1_t2").mkdir(parents=True)
    (tmp_path / "site" / "pix2pix_t1_t2" / "mine.txt").write_text("kept")
    with pytest.raises(BundleIntegrityError, match="exists already"):
        unpack_bundle(pix2pix_zip, tmp_path / "site")
    assert (tmp_path / "site" / "pix2pix_t1_t2" / "mine.txt").read_text() == "kept"


def test_command_line(pix2pix_zip, tmp_path, capsys):
    assert main(["unpack", str(pix2pix_zip), "--output", str(tmp_path / "site")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "site" / "pix2pix_t1_t2")
    record = tmp_path / "site" / "pix2pix_t1_t2" / "models" / "training_record.json"
    record.write_text(json.dumps({"settings": {}}))
    assert main(["verify", str(tmp_path / "site" / "pix2pix_t1_t2")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and "training_record.json" in error and "sha256 mismatch" in error
