"""large_files.yml: written in MONAI's format, checked file by file, read by MONAI's own command."""

from __future__ import annotations

import hashlib

import pytest
import yaml
from monai.bundle import download_large_files

from medgan_common.errors import PreprocessingError
from modality_translation.bundle.errors import BundleIntegrityError
from modality_translation.bundle.large_files import LARGE_FILES_NAME, verify_large_files, write_large_files


@pytest.fixture
def bundle(tmp_path):
    (tmp_path / "models" / "references").mkdir(parents=True)
    (tmp_path / "models" / "model.pt").write_bytes(b"weights" * 100)
    (tmp_path / "models" / "references" / "reference_t1.nii.gz").write_bytes(b"reference")
    return tmp_path


def test_written_in_monai_format_and_verified(bundle):
    written = write_large_files(bundle, [bundle / "models" / "references" / "reference_t1.nii.gz", "models/model.pt"])
    assert written == bundle / LARGE_FILES_NAME
    content = yaml.safe_load(written.read_text())
    assert content == {"large_files": [
        {"path": "models/model.pt", "url": "", "hash_type": "sha256",
         "hash_val": hashlib.sha256(b"weights" * 100).hexdigest()},
        {"path": "models/references/reference_t1.nii.gz", "url": "", "hash_type": "sha256",
         "hash_val": hashlib.sha256(b"reference").hexdigest()},
    ]}
    assert verify_large_files(bundle) == ["models/model.pt", "models/references/reference_t1.nii.gz"]


def test_url_base_gives_each_file_its_address(bundle):
    write_large_files(bundle, ["models/model.pt"], url_base="https://example.org/pix2pix/")
    assert yaml.safe_load((bundle / LARGE_FILES_NAME).read_text())["large_files"][0]["url"] == \
        "https://example.org/pix2pix/models/model.pt"


def test_monai_download_large_files_accepts_the_list(bundle):
    """MONAI's command reads the list and checks the existing files (nothing to download)."""
    write_large_files(bundle, ["models/model.pt"])
    download_large_files(bundle_path=str(bundle))
    (bundle / "models" / "model.pt").write_bytes(b"other weights")
    with pytest.raises(Exception, match="hash check"):
        download_large_files(bundle_path=str(bundle))


def test_hash_mismatch_names_the_file_and_both_hashes(bundle):
    write_large_files(bundle, ["models/model.pt"])
    expected = hashlib.sha256(b"weights" * 100).hexdigest()
    (bundle / "models" / "model.pt").write_bytes(b"tampered")
    with pytest.raises(BundleIntegrityError) as raised:
        verify_large_files(bundle)
    assert isinstance(raised.value, PreprocessingError)
    assert raised.value.path == str(bundle / "models" / "model.pt")
    assert f"expects {expected[:12]}..." in str(raised.value)
    assert f"has {hashlib.sha256(b'tampered').hexdigest()[:12]}..." in str(raised.value)
    assert expected[:13] not in str(raised.value)


def test_missing_listed_file(bundle):
    write_large_files(bundle, ["models/model.pt", "models/references/reference_t1.nii.gz"])
    (bundle / "models" / "references" / "reference_t1.nii.gz").unlink()
    with pytest.raises(BundleIntegrityError, match="listed in large_files.yml but missing") as raised:
        verify_large_files(bundle)
    assert raised.value.path.endswith("reference_t1.nii.gz")


@pytest.mark.parametrize("text, message", [
    ("large_files: [unclosed", "cannot be read as YAML"),
    ("- just a list\n", "is not a MONAI large-files list"),
    ("large_files:\n  - {path: ../outside.pt, url: '', hash_val: abc, hash_type: sha256}\n", "inside the bundle"),
    ("large_files:\n  - {path: models/model.pt, url: '', hash_val: abc, hash_type: md5}\n", "expected a sha256"),
])
def test_unusable_list(bundle, text, message):
    (bundle / LARGE_FILES_NAME).write_text(text)
    with pytest.raises(BundleIntegrityError, match=message) as raised:
        verify_large_files(bundle)
    assert raised.value.path == str(bundle / LARGE_FILES_NAME)


def test_missing_list(bundle):
    with pytest.raises(BundleIntegrityError, match="is missing"):
        verify_large_files(bundle)


def test_refuses_files_outside_the_bundle_and_folders(bundle, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere") / "model.pt"
    outside.write_bytes(b"x")
    with pytest.raises(BundleIntegrityError, match="not inside the bundle folder"):
        write_large_files(bundle, [outside])
    with pytest.raises(BundleIntegrityError, match="is not a file"):
        write_large_files(bundle, ["models/references"])
    assert not (bundle / LARGE_FILES_NAME).exists()
