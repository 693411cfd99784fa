"""PACS round trip over DICOMweb with a real Orthanc server (preprocessing/pacs.py, ``pull`` / ``push``).

The module starts its own Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) on
127.0.0.1 with a throw-away storage folder, free ports and HTTP basic authentication, uploads a
2-subject small demo cohort's CT plus a study without CT, then pulls, preprocesses, writes a
synthetic series and pushes it back.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
import SimpleITK as sitk
from pydicom.uid import MRImageStorage, generate_uid

from modality_translation.inference.dicom_output import write_dicom_series
from preprocessing.demo import build_demo_cohort
from preprocessing.pacs import PacsError, PacsSettings, connect, parse_query, read_credentials

REPOSITORY = Path(__file__).resolve().parents[2]
ORTHANC = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)),
                                          None)
DICOMWEB_PLUGIN = next((p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                                    "/usr/lib/orthanc/libOrthancDicomWeb.so") if os.path.exists(p)), None)
USER, PASSWORD = "radiology", "not-the-real-one-7f3a"
FAST_CT_ONLY = """extends: demo
input:
  modalities: [ct]
  truth: false
registration:
  common:
    linear_iterations: [60, 30]
    syn_iterations: [40, 20, 0]
write_pseudonym_map: true
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cli(*args: str, password: str = PASSWORD, timeout: float = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MEDGAN_PACS_USER": USER, "MEDGAN_PACS_PASSWORD": password}
    return subprocess.run([sys.executable, "-m", "preprocessing", *args], cwd=REPOSITORY, capture_output=True,
                          text=True, timeout=timeout, env=environment)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> str:
    """A throw-away Orthanc with DICOMweb and basic authentication; yields its DICOMweb URL."""
    if ORTHANC is None:
        pytest.skip("the Orthanc server binary is absent (Debian: apt-get install orthanc orthanc-dicomweb)")
    if DICOMWEB_PLUGIN is None:
        pytest.skip("Orthanc's DICOMweb plugin is absent (Debian: apt-get install orthanc-dicomweb)")
    folder = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {"Name": "medgan-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
              "HttpPort": port, "DicomPort": _free_port(), "RemoteAccessAllowed": False,
              "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
              "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    server = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, (folder / "orthanc.log").read_text()
            assert time.monotonic() < deadline, "Orthanc did not start within 60 s"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def uploaded(orthanc, tmp_path_factory) -> dict[str, str]:
    """The 2 demo subjects' CT studies and one MR-only study on the server; ``{patient ID: study UID}``."""
    cohort = tmp_path_factory.mktemp("demo")
    build_demo_cohort(cohort, 2, "small", seed=0, workers=2, progress=False)
    client = connect(PacsSettings(orthanc, USER, PASSWORD))
    studies = {}
    for subject in sorted((cohort / "raw" / "ct").iterdir()):
        datasets = [pydicom.dcmread(p) for p in sorted(subject.rglob("*.dcm"))]
        client.store_instances(datasets)
        studies[str(datasets[0].PatientID)] = str(datasets[0].StudyInstanceUID)
    # A study with MR only: the CT of the first subject relabelled, in a study of its own.
    mr = pydicom.dcmread(next(iter(sorted((cohort / "raw" / "ct").rglob("*.dcm")))))
    mr.Modality, mr.SOPClassUID, mr.file_meta.MediaStorageSOPClassUID = "MR", MRImageStorage, MRImageStorage
    mr.PatientID, mr.StudyInstanceUID, mr.SeriesInstanceUID = "NOCT0001", generate_uid(), generate_uid()
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    client.store_instances([mr])
    studies["NOCT0001"] = str(mr.StudyInstanceUID)
    return studies


def test_round_trip_pull_preprocess_push(orthanc, uploaded, tmp_path):
    pulled = tmp_path / "pulled"
    result = _cli("pull", "--pacs", orthanc, "--query", "StudyDate=19000101-", "--output", str(pulled))
    assert result.returncode == 0, result.stderr
    record = json.loads((pulled / "pacs_pull.json").read_text())
    rows = {row["patient_folder"]: row for row in record["studies"]}
    assert set(rows) == set(uploaded), record
    assert rows["NOCT0001"]["status"] == "no-ct" and "no CT series" in rows["NOCT0001"]["reason"]
    assert f"{uploaded['NOCT0001']}: no CT series in the study (modalities: MR)" in result.stderr
    patients = sorted(p for p in uploaded if p != "NOCT0001")
    for patient in patients:
        assert rows[patient]["status"] == "ok"
        series = list((pulled / "raw" / "ct" / patient / uploaded[patient]).iterdir())
        assert series and all(list(s.glob("*.dcm")) for s in series)
    assert not list(pulled.rglob(".tmp-*")) and not (pulled / "raw" / "ct" / "NOCT0001").exists()
    assert PASSWORD not in result.stdout + result.stderr

    config = tmp_path / "ct_only.yaml"
    config.write_text(FAST_CT_ONLY)
    output = tmp_path / "preprocessed"
    result = _cli("run", "--config", str(config), "--input", str(pulled), "--output", str(output), "--workers", "2",
                  "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((output / "report.json").read_text())
    assert report["counts"]["ok"] == 2

    # "Translate one": a synthetic series made from a preprocessed volume of the first patient,
    # written by the bundles' DICOM writer into that patient's source study.
    patient = patients[0]
    subject = json.loads((output / "pseudonym_map.json").read_text())[patient]
    volume = sitk.ReadImage(str(output / "subjects" / subject / f"{subject}_ct_hu.nii.gz"))
    synthetic = tmp_path / "synthetic" / "series"
    write_dicom_series(volume, synthetic, "ct", series_description="SYNTHETIC CT FROM CT",
                       patient_id=subject, study_instance_uid=uploaded[patient])
    result = _cli("push", "--pacs", orthanc, str(synthetic.parent))
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr

    client = connect(PacsSettings(orthanc, USER, PASSWORD))
    series = client.search_for_series(uploaded[patient])
    descriptions = [s.get("0008103E", {}).get("Value", [""])[0] for s in series]
    assert "SYNTHETIC CT FROM CT" in descriptions, descriptions
    uid = series[descriptions.index("SYNTHETIC CT FROM CT")]["0020000E"]["Value"][0]
    instance = client.retrieve_series_metadata(uploaded[patient], uid)[0]
    assert instance["00080008"]["Value"][0] == "DERIVED"  # ImageType
    assert instance["00100020"]["Value"][0] == patient  # filed under the source patient, by the PACS's own ID


def test_push_refuses_an_acquired_series(orthanc, uploaded, tmp_path):
    pulled = tmp_path / "pulled"
    study = uploaded[sorted(p for p in uploaded if p != "NOCT0001")[0]]
    assert _cli("pull", "--pacs", orthanc, "--study", study, "--output", str(pulled)).returncode == 0
    before = len(connect(PacsSettings(orthanc, USER, PASSWORD)).search_for_series(study))
    result = _cli("push", "--pacs", orthanc, str(pulled / "raw"))
    assert result.returncode == 1 and "ImageType is not DERIVED" in result.stderr
    assert len(connect(PacsSettings(orthanc, USER, PASSWORD)).search_for_series(study)) == before


def test_wrong_credentials_are_a_clear_error_without_the_secret(orthanc, uploaded, tmp_path):
    wrong = "wrong-secret-5c1d"
    result = _cli("pull", "--pacs", orthanc, "--query", "Modality=CT", "--output", str(tmp_path / "out"),
                  password=wrong)
    assert result.returncode == 1
    assert "refused the credentials (HTTP 401)" in result.stderr
    assert wrong not in result.stdout + result.stderr and PASSWORD not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_pacs_is_a_clear_error_within_the_timeout(tmp_path):
    port = _free_port()
    start = time.monotonic()
    result = _cli("pull", "--pacs", f"http://127.0.0.1:{port}/dicom-web", "--study", "1.2.3", "--output",
                  str(tmp_path / "out"), "--timeout", "2", "--retries", "1", timeout=60)
    assert result.returncode == 1
    assert f"cannot reach the PACS at 127.0.0.1:{port}" in result.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()


def test_credentials_come_from_a_file_or_the_environment_never_the_url(tmp_path):
    path = tmp_path / "pacs.json"
    path.write_text(json.dumps({"user": "u", "password": "p"}))
    assert read_credentials(path, {}) == ("u", "p")
    assert read_credentials(None, {"MEDGAN_PACS_CREDENTIALS": str(path)}) == ("u", "p")
    assert read_credentials(None, {"MEDGAN_PACS_USER": "a", "MEDGAN_PACS_PASSWORD": "b"}) == ("a", "b")
    path.write_text("user=u\n")
    with pytest.raises(PacsError, match=r"pacs.json.*expected JSON") as error:
        read_credentials(path, {})
    assert "user=u" not in str(error.value)
    with pytest.raises(PacsError, match="must not hold credentials") as error:
        connect(PacsSettings("http://me:secret@pacs:8042/dicom-web"))
    assert "secret" not in str(error.value)


def test_query_strings_become_study_filters():
    assert parse_query("Modality=CT&StudyDate=20240101-20241231") == {"ModalitiesInStudy": "CT",
                                                                      "StudyDate": "20240101-20241231"}
    with pytest.raises(PacsError, match="expected KEY=VALUE"):
        parse_query("Modality")
