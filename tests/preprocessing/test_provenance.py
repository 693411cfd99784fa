"""Provenance sidecars (preprocessing/provenance.py)."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

from preprocessing.provenance import (
    TRACKED_PACKAGES,
    code_version,
    file_sha256,
    files_sha256,
    input_record,
    is_sidecar,
    package_versions,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)


def test_file_hashes(tmp_path):
    data = b"x" * (3 << 20) + b"tail"  # several read chunks
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_set_hash_changes_with_names_and_contents_not_order(tmp_path):
    for name, text in (("b/1.dcm", "one"), ("b/2.dcm", "two")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    files = [tmp_path / "b/1.dcm", tmp_path / "b/2.dcm"]
    reference = files_sha256(files, tmp_path)
    assert files_sha256(files[::-1], tmp_path) == reference
    (tmp_path / "b/2.dcm").write_text("changed")
    assert files_sha256(files, tmp_path) != reference
    (tmp_path / "b/2.dcm").write_text("two")
    (tmp_path / "b/2.dcm").rename(tmp_path / "b/3.dcm")
    assert files_sha256([tmp_path / "b/1.dcm", tmp_path / "b/3.dcm"], tmp_path) != reference


def test_sidecar_content_and_stability(tmp_path):
    source = tmp_path / "input.nii"
    source.write_bytes(b"input bytes")
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"output bytes")
    record = input_record(source, "sub-1/t1", "moving", series="T1")
    path = write_sidecar(output, "register", [record], {"iterations": (3, 2)})
    assert path == sidecar_path(output) == tmp_path / "out.nii.gz.provenance.json"
    assert is_sidecar(path) and not is_sidecar(output)
    sidecar = read_sidecar(output)
    assert sidecar["output"] == "out.nii.gz"
    assert sidecar["sha256"] == hashlib.sha256(b"output bytes").hexdigest()
    assert sidecar["inputs"] == [{"name": "sub-1/t1", "role": "moving", "series": "T1",
                                  "sha256": hashlib.sha256(b"input bytes").hexdigest()}]
    assert sidecar["parameters"] == {"iterations": [3, 2]}
    assert set(sidecar["software"]) == set(TRACKED_PACKAGES)
    assert sidecar["software"]["numpy"] == metadata.version("numpy")
    assert sidecar["code"]["version"] and len(sidecar["code"]["source_sha256"]) == 64
    # No time stamp or host: a second write gives the same bytes.
    first = path.read_bytes()
    write_sidecar(output, "register", [record], {"iterations": (3, 2)})
    assert path.read_bytes() == first
    assert "time" not in json.dumps(sidecar).lower()


def test_versions_of_missing_packages_are_none(monkeypatch):
    package_versions.cache_clear()
    real = metadata.version

    def fake(name):
        if name == "antspyx":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", fake)
    try:
        assert package_versions()["antspyx"] is None
        assert package_versions()["SimpleITK"] == real("SimpleITK")
    finally:
        package_versions.cache_clear()


def test_code_version_covers_the_sources():
    version = code_version()
    assert version["package"] == "medgan-translate"
    assert version == code_version()
