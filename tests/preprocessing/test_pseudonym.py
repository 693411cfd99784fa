"""Pseudonyms and redaction (preprocessing/pseudonym.py)."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest

from preprocessing.pseudonym import REDACTED, Redactor, dicom_identifiers, pseudonymise, pseudonymise_all
from tests.preprocessing.dicom_factory import PATIENT_TAGS, write_ct_series


def test_pseudonym_is_a_keyed_hash_of_the_source_name():
    expected = hmac.new(b"salt", b"SMITH^JOHN", hashlib.sha256).hexdigest()[:12]
    assert pseudonymise("SMITH^JOHN", "salt") == f"sub-{expected}"
    assert pseudonymise("SMITH^JOHN", "salt") == pseudonymise("SMITH^JOHN", "salt")  # deterministic
    assert pseudonymise("SMITH^JOHN", "other salt") != pseudonymise("SMITH^JOHN", "salt")
    assert pseudonymise("a", "s", prefix="p", length=20).startswith("p") and len(pseudonymise("a", "s", "p", 20)) == 21
    assert "SMITH" not in pseudonymise("SMITH^JOHN", "salt")


def test_collisions_are_reported():
    names = [f"subject{i}" for i in range(300)]
    # Two hex digits give 256 pseudonyms: 300 subjects must collide.
    with pytest.raises(ValueError, match="share the pseudonym"):
        pseudonymise_all(names, "salt", length=2)
    mapping = pseudonymise_all(names, "salt")
    assert len(set(mapping.values())) == len(names)


def test_redactor_replaces_names_and_identifiers_case_insensitively():
    redact = Redactor({"SMITH^JOHN": "sub-1"}, identifiers=["MRN1234567", "SMITH"], anywhere={"/data/export": "<input>"})
    text = "/data/export/SMITH^JOHN/series/CT1.dcm of smith (MRN1234567): truncated, see /data/export"
    assert redact(text) == f"<input>/sub-1/series/CT1.dcm of {REDACTED} ({REDACTED}): truncated, see <input>"
    assert Redactor()("unchanged") == "unchanged"
    extended = redact.extended(identifiers=["truncated"])
    assert "truncated" not in extended(text) and "sub-1" in extended(text) and "<input>" in extended(text)


def test_source_names_are_replaced_as_path_components_only():
    redact = Redactor({"empty": "sub-1", "nan": "sub-2"})
    assert redact("raw/ct/empty: folder is empty") == "raw/ct/sub-1: folder is empty"
    assert redact("raw/mri/nan-T2.nii.gz: 3 voxels are NaN") == "raw/mri/sub-2-T2.nii.gz: 3 voxels are NaN"
    assert redact("NAN-t1.nii.gz 'empty'") == "sub-2-t1.nii.gz 'sub-1'"
    assert redact("emptyish/nanny") == "emptyish/nanny"


def test_dicom_identifiers_are_read_from_headers(tmp_path):
    write_ct_series(tmp_path / "study", np.zeros((3, 8, 8), dtype=np.int16))
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    (tmp_path / "study" / "broken.dcm").write_bytes(b"DICM" * 3)
    values = dicom_identifiers(tmp_path)
    birth = PATIENT_TAGS["PatientBirthDate"]
    assert {PATIENT_TAGS["PatientName"], "Doe", "Jane", PATIENT_TAGS["PatientID"], PATIENT_TAGS["AccessionNumber"],
            birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"} <= values
    redact = Redactor(identifiers=values)
    assert "Jane" not in redact("patient Doe^Jane, jane doe") and "Doe" not in redact("patient Doe^Jane")
    assert dicom_identifiers(tmp_path / "missing") == set()
