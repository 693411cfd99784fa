"""The cohort runner end to end on a small demo cohort (preprocessing/runner/, ``python -m preprocessing run``).

One demo cohort (3 subjects, small) is built per test package (conftest.py) and preprocessed once,
through the command line, with the shipped ``demo`` configuration and fewer registration iterations
(``FAST``); most tests read that run's outputs. The resume test reruns the same configuration in a subprocess that
is killed mid-run and compares every byte with the first run.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.data import load_decathlon_datalist

from preprocessing.artefact_mask import measure_artefact_removal
from preprocessing.cli import main as cli_main
from preprocessing.config import load_config
from preprocessing.demo.head_holder import CONTACT_PAD, COUCH, HOLDER_PLATE
from preprocessing.provenance import TRACKED_PACKAGES, file_sha256, read_sidecar
from preprocessing.pseudonym import pseudonymise
from preprocessing.runner import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, discover_subjects, run_cohort, split_subjects
from preprocessing.runner.demo_truth import pair_landmark_errors
from preprocessing.runner.imaging import coarsened
from tests.preprocessing.runner.cohort_run import FAST, N_SUBJECTS, REPOSITORY, run_cli, tree_bytes

ARTEFACT_LABELS = (HOLDER_PLATE, COUCH, CONTACT_PAD)


def _report(output: Path) -> dict:
    return json.loads((output / "report.json").read_text())


def _datalist(output: Path) -> dict:
    return json.loads((output / "dataset.json").read_text())


def _entries(output: Path) -> list[dict]:
    datalist = _datalist(output)
    return [entry for split in ("training", "validation", "test") for entry in datalist[split]]


def _source_of(entry: dict, config: dict) -> str:
    for index in range(N_SUBJECTS):
        name = f"demo{index + 1:03d}"
        if pseudonymise(name, config["pseudonym"]["salt"], config["pseudonym"]["prefix"],
                        config["pseudonym"]["length"]) == entry["subject"]:
            return name
    raise AssertionError(f"{entry['subject']} is no demo subject")


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ------------------------------------------------------------------------------------------------


def test_datalist_is_a_monai_datalist_split_by_subject(run):
    splits = {}
    for key in ("training", "validation", "test"):
        items = load_decathlon_datalist(run / "dataset.json", data_list_key=key)
        assert items, f"empty {key} split"
        splits[key] = {item["subject"] for item in items}
        for item in items:
            for modality in ("ct", "t1", "t2", "t2_in_t1", "ct_in_t2", "ct_in_t1"):
                assert Path(item[modality]).is_file() and Path(item[f"{modality}_mask"]).is_file()
                assert item[f"{modality}_slices"] and all(Path(p).is_file() for p in item[f"{modality}_slices"])
                assert Path(item[f"{modality}_slice_index"]).is_file()
            assert Path(item["ct_hu"]).is_file() and Path(item["ct_in_t2_hu"]).is_file()
            for name in ("truth_t1_in_ct", "truth_t2_in_ct", "truth_ct_in_t1", "truth_t2_in_t1", "truth_ct_in_t2",
                         "truth_t1_in_t2", "truth_labels_in_ct"):
                assert Path(item[name]).is_file(), name
    assert sum(len(s) for s in splits.values()) == N_SUBJECTS
    assert not (splits["training"] & splits["validation"]) and not (splits["training"] & splits["test"])
    datalist = _datalist(run)
    # Paths are stored relative to the datalist's folder.
    assert all(not Path(p).is_absolute() for e in _entries(run) for p in (e["ct"], e["t1"]))
    assert datalist["modalities"] == ["ct", "t1", "t2"]
    assert datalist["config"] == "demo"
    assert datalist["ct_window"]["center"] == 500 and datalist["ct_window"]["width"] == 3000
    assert datalist["normalisation"]["method"] == "percentile"
    assert datalist["slice_size"]["ct"] == [64, 64] and datalist["slice_size"]["t2_in_t1"] == [64, 64]
    assert datalist["slice_size"]["ct_in_t2"] == datalist["slice_size"]["ct_in_t1"] == [64, 64]
    assert datalist["pairs"] == {"t2_in_t1": ["t2", "t1"], "ct_in_t2": ["ct", "t2"], "ct_in_t1": ["ct", "t1"]}


def test_report_lists_every_subject_ok_with_step_times(run):
    report = _report(run)
    assert report["counts"] == {"ok": N_SUBJECTS, "skipped-finished": 0, "failed": 0, "excluded": 0}
    for row in report["subjects"]:
        assert row["status"] == STATUS_OK and row["reason"] == ""
        assert row["seconds"]["register"] > 0 and row["seconds"]["total"] >= row["seconds"]["register"]
        assert set(row["seconds"]) >= {"read", "register", "mask", "window", "normalise", "pair", "slice", "truth", "qc"}
    header = (run / "report.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["subject", "status", "reason", "split"] and "seconds_register" in header
    assert len((run / "report.csv").read_text().splitlines()) == N_SUBJECTS + 1


def test_registration_raises_similarity_to_the_reference(run):
    rows = _report(run)["subjects"]
    for modality in ("ct", "t1", "t2"):
        references = [r for r in rows if r["registration"][modality]["reference"]]
        assert len(references) == 1  # exactly one subject is the modality's reference
        for row in rows:
            metrics = row["registration"][modality]
            if not metrics["reference"]:
                # The CT's NCC spans the whole grid, head holder and couch included, which stay where
                # the scanner put them: aligning the head moves it less than an MR's.
                gain = 0.02 if modality == "ct" else 0.05
                assert metrics["ncc_after"] > metrics["ncc_before"] + gain, (modality, metrics)
    for entry in _entries(run):
        reference = run / "references" / f"reference_t1.nii.gz"
        assert _array(run / entry["t1_mask"]).shape == _array(reference).shape  # on the reference grid


def png_shape(path):
    """(rows, columns) of a PNG file, read with Matplotlib's reader (PIL may be absent)."""
    from matplotlib.image import imread

    return imread(str(path)).shape[:2]


def test_common_space_puts_every_modality_of_a_subject_on_one_grid_and_anatomy(run):
    """``registration.common_space: ct`` (demo): the T1 and T2 references are registered onto the CT reference."""
    references = json.loads((run / "references" / "references.json").read_text())
    assert "aligned_to" not in references["ct"]
    ct_reference = sitk.ReadImage(str(run / "references" / references["ct"]["image"]))
    for modality in ("t1", "t2"):
        record = references[modality]
        assert record["aligned_to"] == "ct"
        assert (run / "references" / record["own_space_image"]).is_file()
        assert all((run / "references" / name).is_file() for name in record["to_space_transforms"])
        reference = sitk.ReadImage(str(run / "references" / record["image"]))
        assert reference.GetSize() == ct_reference.GetSize() and reference.GetSpacing() == ct_reference.GetSpacing()
    # The QC picture of the references before and after their registration onto the CT reference:
    # two modalities, an axial and a sagittal row each.
    montage = png_shape(run / "references" / "qc_common_space.png")
    assert montage[0] > montage[1]  # four rows of four panels, and the title
    for entry in _entries(run):
        labels = {m: _array(run / entry[f"truth_labels_in_{m}"]) for m in ("ct", "t1", "t2")}
        grids = {m: sitk.ReadImage(str(run / entry[m])) for m in ("ct", "t1", "t2")}
        assert len({(g.GetSize(), g.GetSpacing(), g.GetOrigin()) for g in grids.values()}) == 1
        # One anatomy: the white matter of the three volumes has the same centre within a voxel
        # (each volume went through its own subject and reference registrations).
        centres = {m: np.argwhere(labels[m] == 6).mean(axis=0) for m in labels}
        for modality in ("t1", "t2"):
            assert np.abs(centres[modality] - centres["ct"]).max() < 1.0, (entry["subject"], centres)


@pytest.mark.parametrize("key", ["t2_in_t1", "ct_in_t2", "ct_in_t1"])
def test_within_subject_pairs_land_within_two_voxels(run, cohort, key):
    """T2 onto its own T1 (``pairing``) and the CT onto its own T2 and T1 (``ct_pairing``), measured with the truth's landmarks."""
    config = load_config("demo")
    fixed = key.partition("_in_")[2]
    for entry in _entries(run):
        source = _source_of(entry, config)
        error, unregistered = pair_landmark_errors(run, entry, cohort / "truth" / source, key)
        voxel = min(nib.load(str(cohort / "raw" / "mri" / f"{source}-{fixed.upper()}.nii.gz")).header.get_zooms())
        assert error.mean() < 2 * voxel and error.mean() < 0.5 * unregistered.mean(), (error, unregistered)


def test_ct_paired_onto_its_own_mr_lines_up_with_the_mr_slice_by_slice(run):
    """``ct_pairing`` (demo: T2 and T1): the CT on each MR's grid, masked, windowed, cut where the MR is cut."""
    from preprocessing.windowing import get_window, hu_to_window

    config = load_config("demo")
    window = get_window(config["ct"]["window"])
    rows = {row["subject"]: row for row in _report(run)["subjects"]}
    for entry in _entries(run):
        for mr in ("t2", "t1"):
            key = f"ct_in_{mr}"
            grid, hu_image = sitk.ReadImage(str(run / entry[mr])), sitk.ReadImage(str(run / entry[f"{key}_hu"]))
            assert hu_image.GetSize() == grid.GetSize() and np.allclose(hu_image.GetOrigin(), grid.GetOrigin())
            assert entry[f"{key}_mask"] == entry[f"{mr}_mask"]
            hu, windowed = sitk.GetArrayFromImage(hu_image), _array(run / entry[key])
            np.testing.assert_allclose(windowed, hu_to_window(hu, window, config["ct"]["out_range"]), atol=1e-6)
            # The artefact mask applied (outside: air), the skull kept.
            assert (hu == -1000.0).mean() > 0.3 and hu.min() >= -1024 and hu.max() > 1000
            assert read_sidecar(run / entry[f"{key}_hu"])["step"] == "pair_ct"
            manifest = json.loads((run / entry[f"{key}_transforms"]).read_text())
            assert manifest["forward_transforms"] and manifest["metrics"]["nmi_after"] > manifest["metrics"]["nmi_before"]
            assert rows[entry["subject"]]["registration"][key]["nmi_after"] == manifest["metrics"]["nmi_after"]
            # Slice i of the pair is cut where slice i of the MR is: same indices, same geometry.
            assert len(entry[f"{key}_slices"]) == len(entry[f"{mr}_slices"]) > 0
            pair_index = json.loads((run / entry[f"{key}_slice_index"]).read_text())["slices"]
            own_index = json.loads((run / entry[f"{mr}_slice_index"]).read_text())["slices"]
            assert [s["geometry"] for s in pair_index] == [s["geometry"] for s in own_index]
            # The CT shows the MR's anatomy: where the demo truth (carried into the MR's space
            # through the MR's own transforms) has bone, the paired CT has bone, and its HU follow
            # the true CT of that space (mean error 85-140 HU in the head at these 4 mm voxels,
            # where the CT placed by position alone is 230-440 HU off, except on the reference).
            labels = _array(run / entry[f"truth_labels_in_{mr}"])
            assert np.median(hu[labels == 3]) > 500 and abs(np.median(hu[np.isin(labels, (5, 6))]) - 35) < 25
            truth = _array(run / entry[f"truth_ct_in_{mr}"])
            head = _array(run / entry[f"{mr}_mask"]) > 0
            assert np.corrcoef(hu[head], truth[head])[0, 1] > 0.6 and np.abs(hu - truth)[head].mean() < 160


def test_paired_truth_matches_the_registered_volumes(run):
    """The truth carried through a modality's transforms overlays that modality's registered volume."""
    for entry in _entries(run):
        ct_hu = _array(run / entry["ct_hu"])
        truth_labels = _array(run / entry["truth_labels_in_ct"])
        brain = np.isin(truth_labels, (5, 6))  # grey and white matter
        assert abs(np.median(ct_hu[brain]) - 35) < 20  # brain HU where the truth says brain
        assert np.median(ct_hu[truth_labels == 3]) > 600  # cortical bone
        # The T1 truth in CT space has T1 contrast on the same anatomy: white matter bright,
        # ventricles dark, and dark (partial volume aside) where the registered CT shows bone.
        t1_truth_in_ct = _array(run / entry["truth_t1_in_ct"])
        assert t1_truth_in_ct.shape == ct_hu.shape
        white = np.median(t1_truth_in_ct[truth_labels == 6])
        assert white > np.median(t1_truth_in_ct[truth_labels == 7]) + 300
        assert np.median(t1_truth_in_ct[ct_hu > 800]) < 0.6 * white
        t2_in_t1 = _array(run / entry["t2_in_t1"])
        truth_t2 = _array(run / entry["truth_t2_in_t1"])
        mask = _array(run / entry["t1_mask"]) > 0
        assert np.corrcoef(t2_in_t1[mask], truth_t2[mask])[0, 1] > 0.6


def test_artefact_mask_removes_the_holder_and_keeps_the_head(run):
    """Each CT's own mask (demo: ``per_subject``), built as read and carried with the CT's transforms.

    Measured against the raw CT's labels carried through the same registration.
    """
    measures = []
    for entry in _entries(run):
        labels = _array(run / entry["truth_labels_in_ct"])
        keep = _array(run / entry["ct_mask"]) > 0
        artefact = np.isin(labels, ARTEFACT_LABELS)
        assert artefact.sum() > 1000  # the raw CT's holder, carried into the reference space
        measures.append(measure_artefact_removal(keep, (labels > 0) & ~artefact, artefact))
        hu = _array(run / entry["ct_hu"])
        assert hu[artefact & ~keep].max() <= -1000  # removed voxels are air
    assert max(m["artefact_remaining_fraction"] for m in measures) < 0.01, measures
    assert max(m["head_lost_fraction"] for m in measures) < 0.005, measures


def test_outputs_have_provenance_sidecars(run):
    outputs = [p for p in run.rglob("*") if p.is_file() and not p.name.endswith(".provenance.json")
               and "cache" not in p.relative_to(run).parts and p.name != ".lock"
               and not p.name.endswith("_subject.json") and p.name != "references.json"]
    assert len(outputs) > 50
    for path in outputs:
        sidecar = read_sidecar(path)
        assert sidecar["sha256"] == file_sha256(path), path
        assert set(sidecar["software"]) == set(TRACKED_PACKAGES) and sidecar["code"]["source_sha256"]
    entry = _entries(run)[0]
    ct = read_sidecar(run / entry["ct"])
    assert ct["step"] == "window" and ct["parameters"]["window"]["center"] == 500
    assert ct["inputs"][0]["sha256"] == file_sha256(run / entry["ct_hu"])


def test_no_patient_identifier_or_source_name_in_any_output(run, cohort):
    identifiers = set()
    for path in cohort.glob("raw/ct/*/*/CT PLAIN THIN/CT000000.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate)}
        identifiers |= {part for part in str(header.PatientName).split("^") if len(part) > 2}
    assert len(identifiers) >= 3 * N_SUBJECTS
    forbidden = [value.encode() for value in identifiers] + [b"demo00"]
    for path in run.rglob("*"):
        assert not any(value.decode() in path.name for value in forbidden), path
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                data += gzip.decompress(data)
            for value in forbidden:
                assert value not in data, (path, value)


def test_killed_run_resumes_to_the_same_bytes(run, cohort, fast_config, tmp_path):
    """kill -9 mid-run, rerun: byte-identical to the uninterrupted run (which also proves determinism)."""
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "preprocessing", "run", "--config", str(fast_config), "--input", str(cohort),
               "--output", str(output), "--workers", "2", "--quiet"]
    process = subprocess.Popen(command, cwd=REPOSITORY, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(output.glob("subjects/*/*_subject.json")):
        assert process.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (output / "dataset.json").exists()
    report = run_cohort(fast_config, cohort, output, workers=2, progress=False)
    assert report["counts"][STATUS_SKIPPED] >= 1 and report["counts"]["failed"] == 0
    assert tree_bytes(output) == tree_bytes(run)


def _bad_cohort(cohort: Path, folder: Path) -> dict[str, str]:
    """demo001 plus one subject per kind of bad input; returns {source name: expected reason}."""
    (folder / "raw" / "mri").mkdir(parents=True)
    shutil.copytree(cohort / "raw" / "ct" / "demo001", folder / "raw" / "ct" / "demo001")
    for modality in ("T1", "T2"):
        shutil.copy(cohort / "raw" / "mri" / f"demo001-{modality}.nii.gz", folder / "raw" / "mri")
    shutil.copytree(cohort / "truth" / "demo001", folder / "truth" / "demo001")
    # A truncated DICOM file in an otherwise good series.
    shutil.copytree(cohort / "raw" / "ct" / "demo002", folder / "raw" / "ct" / "cut")
    victim = folder / "raw" / "ct" / "cut" / "Unknown Study" / "CT PLAIN THIN" / "CT000007.dcm"
    victim.write_bytes(victim.read_bytes()[:-3000])
    (folder / "raw" / "ct" / "empty").mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 16, 3)).astype(np.float32), affine),
             folder / "raw" / "mri" / "series-T1.nii.gz")
    with_nan = np.random.default_rng(1).random((16, 16, 16)).astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(with_nan, affine), folder / "raw" / "mri" / "nan-T2.nii.gz")
    (folder / "raw" / "mri" / "text-T1.nii.gz").write_text("not an image\n")
    # Reasons name the file, with the subject's source name replaced by its pseudonym ({}).
    return {
        "cut": "{}/Unknown Study/CT PLAIN THIN/CT000007.dcm: truncated DICOM file",
        "empty": "{}: folder is empty",
        "series": "{}-T1.nii.gz: expected a 3D volume",
        "nan": "{}-T2.nii.gz: 1 voxels are NaN or infinite",
        "text": "{}-T1.nii.gz: not a readable NIfTI file",
    }


def test_bad_inputs_fail_their_subject_only(cohort, tmp_path):
    """Each bad input fails its subject with the file and the problem named; the good subject finishes.

    The run also exercises the options the main run leaves at their demo values: a T1 reference
    given as an image file, an MR common space (the CT reference registered onto the T1 one, its
    mask carried along), the CT study's reference artefact mask and the pseudonym map.
    """
    expected = _bad_cohort(cohort, tmp_path / "input")
    template = tmp_path / "template-T1.nii.gz"
    shutil.copy(cohort / "raw" / "mri" / "demo002-T1.nii.gz", template)
    config = tmp_path / "fast.yaml"
    config.write_text(FAST + f"  t1:\n    reference: {template}\n  common_space: t1\nartefact:\n  mode: reference\n"
                             "write_pseudonym_map: true\nct_pairing:\n  enabled: false\n")
    output = tmp_path / "output"
    result = run_cli("run", "--config", str(config), "--input", str(tmp_path / "input"), "--output", str(output),
                      "--workers", "2", "--quiet")
    assert result.returncode == 1  # some subjects failed
    names = json.loads((output / "pseudonym_map.json").read_text())
    rows = {row["subject"]: row for row in _report(output)["subjects"]}
    assert rows[names["demo001"]]["status"] == STATUS_OK
    for source, reason in expected.items():
        row = rows[names[source]]
        assert row["status"] == STATUS_FAILED and reason.format(names[source]) in row["reason"], row
        assert f"/{source}" not in row["reason"] and row["reason"].startswith("<input>/raw/")
        assert not (output / "subjects" / names[source]).exists()
    assert [e["subject"] for s in ("training", "validation", "test") for e in _datalist(output)[s]] == [names["demo001"]]
    assert "1 ok, 0 already finished, 5 failed" in result.stdout
    assert f"{names['cut']}: <input>/raw/ct/{names['cut']}/" in result.stderr
    good = rows[names["demo001"]]
    assert _datalist(output)["references"]["t1"] == {"kind": "file", "file": "template-T1.nii.gz"}
    assert not good["registration"]["t1"]["reference"]  # registered onto the file, not the identity
    assert good["registration"]["t1"]["ncc_after"] > good["registration"]["t1"]["ncc_before"]
    marker = json.loads((output / "subjects" / names["demo001"] / f"{names['demo001']}_subject.json").read_text())
    assert "artefact_mask" not in marker["metrics"]  # no mask of its own: the reference's is applied
    entry = next(e for s in ("training", "validation", "test") for e in _datalist(output)[s])
    np.testing.assert_array_equal(_array(output / entry["ct_mask"]), _array(output / "references" / "reference_ct_mask.nii.gz"))
    # The CT lies on the T1 reference's grid, and the reference's mask carried there still
    # removes the holder and keeps the head.
    t1_grid = sitk.ReadImage(str(output / "references" / "reference_t1.nii.gz"))
    ct_grid = sitk.ReadImage(str(output / entry["ct"]))
    assert ct_grid.GetSize() == t1_grid.GetSize() and np.allclose(ct_grid.GetOrigin(), t1_grid.GetOrigin())
    assert json.loads((output / "references" / "references.json").read_text())["ct"]["aligned_to"] == "t1"
    labels = _array(output / entry["truth_labels_in_ct"])
    artefact = np.isin(labels, ARTEFACT_LABELS)
    measure = measure_artefact_removal(_array(output / entry["ct_mask"]) > 0, (labels > 0) & ~artefact, artefact)
    assert measure["artefact_remaining_fraction"] < 0.01 and measure["head_lost_fraction"] < 0.005, measure


def test_discovery_of_layouts(cohort, tmp_path):
    config = load_config("demo")
    via_root = discover_subjects(cohort, config)
    via_raw = discover_subjects(cohort / "raw", config)
    assert via_root.layout == via_raw.layout == "demo"
    assert [s.subject for s in via_root.subjects] == [s.subject for s in via_raw.subjects]
    assert all(s.truth is not None and set(s.volumes) == {"ct", "t1", "t2"} for s in via_root.subjects)
    ixi = tmp_path / "ixi"
    for folder, modality in (("IXI-T1", "T1"), ("IXI-T2", "T2")):
        (ixi / folder).mkdir(parents=True)
        shutil.copy(cohort / "raw" / "mri" / f"demo001-{modality}.nii.gz", ixi / folder / f"IXI002-Guys-0828-{modality}.nii.gz")
    shutil.copy(cohort / "raw" / "mri" / "demo002-T1.nii.gz", ixi / "IXI-T1" / "IXI012-HH-1211-T1.nii.gz")
    (ixi / "IXI-T1" / "IXI012-HH-1211-PD.nii.gz").write_bytes(b"")  # not a wanted modality
    (ixi / "IXI-T1" / "scan.nii.gz").write_bytes(b"")  # no subject in the name
    found = discover_subjects(ixi, load_config("ixi"))
    assert found.layout == "ixi"
    assert sorted(sorted(s.volumes) for s in found.subjects) == [["t1"], ["t1", "t2"]]
    assert len(found.unassigned) == 1 and "scan.nii.gz" in found.unassigned[0]
    cq500 = discover_subjects(cohort / "raw" / "ct", load_config("cq500"))
    assert cq500.layout == "cq500" and all(set(s.volumes) == {"ct"} for s in cq500.subjects)
    assert len(cq500.subjects) == N_SUBJECTS


@pytest.mark.parametrize("n", [3, 4, 7, 20])
def test_split_is_seeded_by_subject_and_never_empty(n):
    subjects = [f"sub-{i:02d}" for i in range(n)]
    fractions = {"training": 0.7, "validation": 0.15, "test": 0.15}
    splits = split_subjects(subjects, fractions, seed=0)
    assert all(splits.values())
    assert sorted(sum(splits.values(), [])) == subjects
    assert splits == split_subjects(list(reversed(subjects)), fractions, seed=0)
    if n == 20:
        assert [len(splits[k]) for k in ("training", "validation", "test")] == [14, 3, 3]
        assert splits != split_subjects(subjects, fractions, seed=1)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--config", "nope"], "unknown config 'nope'"),
        (["--input", "/no/such/folder"], "input folder '/no/such/folder' does not exist"),
        (["--output", "/proc/version/out"], "cannot write to output folder"),
    ],
)
def test_cli_usage_errors_are_one_line_with_status_2(arguments, message, cohort, tmp_path, capsys):
    values = {"--config": "demo", "--input": str(cohort), "--output": str(tmp_path / "out")}
    values.update(dict(zip(arguments[::2], arguments[1::2])))
    with pytest.raises(SystemExit) as stop:
        cli_main(["run", *[item for pair in values.items() for item in pair]])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("preprocessing run: error: ") and message in error


def test_reference_grid_coarsening_keeps_the_field_of_view_and_the_signal():
    """``registration.output_min_spacing_mm``: a 0.5 mm reference becomes 1 mm, a 4 mm one is kept."""
    array = np.zeros((12, 40, 40), np.float32)
    array[:, 20, :] = 1.0  # a thin sheet: smoothing must spread it, not lose it
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.5, 0.5, 1.25))
    image.SetOrigin((10.0, -5.0, 3.0))
    coarse = coarsened(image, 1.0, 0.0)
    assert coarse.GetSize() == (20, 20, 12) and coarse.GetSpacing() == (1.0, 1.0, 1.25)

    def centre(im):
        return np.asarray(im.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in im.GetSize()]))

    np.testing.assert_allclose(centre(coarse), centre(image))
    # The signal is conserved: 4 fine voxels per coarse voxel in-plane.
    assert sitk.GetArrayFromImage(coarse).sum() * 4 == pytest.approx(array.sum(), rel=1e-3)
    assert coarsened(coarse, 1.0, 0.0) is coarse


def test_subjects_are_scheduled_longest_first():
    """A subject whose volumes are registered weighs more than a reference subject of the same size."""
    from preprocessing.runner.run import estimated_work

    references = {"ct": {"subject": "sub-a"}, "t1": {"subject": "sub-b"}}
    metadata = {"ct": {"size": [64, 64, 40]}, "t1": {"size": [40, 64, 64]}}
    work = {name: estimated_work({"subject": name, "modalities": ["ct", "t1"], "references": references}, metadata)
            for name in ("sub-a", "sub-b", "sub-c")}
    assert work["sub-c"] > work["sub-a"] == work["sub-b"] > 0
    bigger = {"ct": {"size": [128, 128, 80]}, "t1": {"size": [40, 64, 64]}}
    assert estimated_work({"subject": "sub-a", "modalities": ["ct", "t1"], "references": references}, bigger) > work["sub-a"]
