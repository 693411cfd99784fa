"""The demo cohort: determinism, real DICOM, tissue contrast, anatomy, the head holder, misalignment, scouts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from preprocessing.demo import build_demo_cohort
from preprocessing.demo.anatomy import (
    AIR, CORTICAL_BONE, CSF, FAT, GREY_MATTER, VENTRICLE, WHITE_MATTER,
)
from preprocessing.demo.grid import grid_from_affine_ras, grid_from_sitk, resample_to_grid
from preprocessing.demo.head_holder import CONTACT_PAD, COUCH, HOLDER_PLATE
from preprocessing.demo.pose import Pose, render_in_raw

N_SUBJECTS = 4


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo_cohort(out, N_SUBJECTS, "small", seed=7, workers=2, progress=False)
    return out


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path):
    image = nib.load(str(path))
    return grid_from_affine_ras(image.shape, image.affine), np.asarray(image.dataobj, dtype=np.float32)


def _read_series_sitk(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _thin_series(cohort: Path, subject: str) -> Path:
    return cohort / "raw" / "ct" / subject / "Unknown Study" / "CT PLAIN THIN"


def test_layout_and_manifest(cohort):
    manifest = json.loads((cohort / "manifest.json").read_text())
    assert [s["subject"] for s in manifest["subjects"]] == [f"demo{i:03d}" for i in range(1, N_SUBJECTS + 1)]
    for entry in manifest["subjects"]:
        subject = entry["subject"]
        for modality in ("T1", "T2"):
            assert (cohort / "raw" / "mri" / f"{subject}-{modality}.nii.gz").is_file()
        for name in ("t1", "t2", "ct", "labels"):
            assert (cohort / "truth" / subject / f"{name}.nii.gz").is_file()
        assert sorted(_thin_series(cohort, subject).glob("*.dcm"))
    assert (cohort / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(cohort.rglob(".tmp-*")), "temporary files left behind"


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    build_demo_cohort(tmp_path / "a", 2, "small", seed=3, workers=1, progress=False)
    build_demo_cohort(tmp_path / "b", 2, "small", seed=3, workers=2, progress=False)
    build_demo_cohort(tmp_path / "c", 2, "small", seed=4, workers=1, progress=False)
    a, b, c = (_digest_tree(tmp_path / n) for n in "abc")
    assert len(a) > 50
    assert a == b
    differing = [k for k in a if a[k] != c.get(k)]
    assert len(differing) > 0.9 * len(a), "another seed must give other data"
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in (tmp_path / "a").rglob("*.dcm")} & {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                                                         for p in (tmp_path / "c").rglob("*.dcm")}
    assert not uids, "UIDs must depend on the seed"


def test_ct_series_reads_with_pydicom_and_simpleitk_in_hu(cohort):
    folder = _thin_series(cohort, "demo001")
    files = sorted(folder.glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert first.Modality == "CT" and first.PixelRepresentation == 1 and first.BitsStored == 16
    assert float(first.RescaleSlope) == 1.0 and float(first.RescaleIntercept) == -1024.0
    assert first.WindowCenter is not None and first.WindowWidth is not None
    assert first.PatientName and first.PatientID and first.PatientBirthDate  # identifiers to be stripped later
    assert first.pixel_array.dtype == np.int16
    stored = np.stack([d.pixel_array for d in datasets])
    padding = stored == first.PixelPaddingValue
    assert padding.any() and not padding.all()
    hu = stored * float(first.RescaleSlope) + float(first.RescaleIntercept)
    inside = hu[~padding]
    assert -1100 < inside.min() < -950, "air at about -1000 HU"
    assert 700 < inside.max() < 3071, "bone above 700 HU, within the 12-bit CT range"
    positions = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
    assert np.allclose(np.diff(positions[:, 2]), float(first.SliceThickness))
    sop_uids = [d.SOPInstanceUID for d in datasets]
    assert len(set(sop_uids)) == len(sop_uids)
    assert len({d.SeriesInstanceUID for d in datasets}) == 1

    image = _read_series_sitk(folder)
    assert image.GetSize() == (first.Columns, first.Rows, len(files))
    assert np.allclose(image.GetSpacing(), [float(first.PixelSpacing[1]), float(first.PixelSpacing[0]),
                                            float(first.SliceThickness)])
    assert np.allclose(image.GetOrigin(), positions[0], atol=1e-3)
    array = sitk.GetArrayFromImage(image)
    assert np.allclose(array, hu)

    other = pydicom.dcmread(next(_thin_series(cohort, "demo002").glob("*.dcm")), stop_before_pixels=True)
    assert other.StudyInstanceUID != first.StudyInstanceUID and other.SeriesInstanceUID != first.SeriesInstanceUID


_BRAIN_CLASSES = (CSF, GREY_MATTER, WHITE_MATTER, VENTRICLE)


def _class_means(image: np.ndarray, labels: np.ndarray, classes, erode: bool = False) -> dict[int, float]:
    """Median value per tissue class; CSF includes the ventricles.

    Brain classes leave out voxels touching skull or scalp: at 3.5 mm a thin CSF layer shares its
    voxels with bone (partial volume), which says nothing about the tissue's own contrast.
    """
    outside_brain = ndimage.binary_dilation(~np.isin(labels, _BRAIN_CLASSES))
    means = {}
    for label in classes:
        mask = np.isin(labels, (CSF, VENTRICLE)) if label == CSF else labels == label
        if label in _BRAIN_CLASSES:
            mask &= ~outside_brain
        if erode:
            eroded = ndimage.binary_erosion(mask)
            mask = eroded if eroded.sum() > 20 else mask
        assert mask.sum() > 5, f"too few voxels of class {label}"
        means[label] = float(np.median(image[mask]))
    return means


@pytest.mark.parametrize("subject", ["demo001", "demo003"])
def test_truth_contrast_follows_real_scans(cohort, subject):
    truth = cohort / "truth" / subject
    _, labels = _load(truth / "labels.nii.gz")
    for label in (AIR, CORTICAL_BONE, CSF, FAT, GREY_MATTER, WHITE_MATTER, VENTRICLE):
        assert (labels == label).sum() > 10, f"label {label} missing"
    _, t1 = _load(truth / "t1.nii.gz")
    _, t2 = _load(truth / "t2.nii.gz")
    _, ct = _load(truth / "ct.nii.gz")
    m1 = _class_means(t1, labels, (WHITE_MATTER, GREY_MATTER, CSF, CORTICAL_BONE))
    assert m1[WHITE_MATTER] > m1[GREY_MATTER] > m1[CSF]
    m2 = _class_means(t2, labels, (WHITE_MATTER, GREY_MATTER, CSF))
    assert m2[CSF] > m2[GREY_MATTER] > m2[WHITE_MATTER]
    # CT's GM/WM/CSF differ by ~15 HU: sulcal CSF is thinner than a 3.5 mm voxel, so CSF is read
    # in the ventricles, the only CSF that is pure at this resolution.
    mc = _class_means(ct, labels, (CORTICAL_BONE, GREY_MATTER, WHITE_MATTER, VENTRICLE, FAT, AIR))
    assert mc[CORTICAL_BONE] >= 700
    assert mc[CORTICAL_BONE] > 10 * mc[GREY_MATTER] > 0
    assert mc[GREY_MATTER] > mc[WHITE_MATTER] > mc[VENTRICLE] > mc[FAT] > mc[AIR]
    assert mc[AIR] == pytest.approx(-1000, abs=5)
    # Bone is dark in MR.
    assert m1[CORTICAL_BONE] < m1[CSF]


def test_subjects_differ_in_anatomy(cohort):
    manifest = json.loads((cohort / "manifest.json").read_text())
    assert manifest["anatomy"] == "mni152"
    assert all(entry["anatomy"]["anatomy"] == "mni152" for entry in manifest["subjects"])
    brains = [np.isin(_load(cohort / "truth" / f"demo{i:03d}" / "labels.nii.gz")[1], (GREY_MATTER, WHITE_MATTER, VENTRICLE))
              for i in range(1, N_SUBJECTS + 1)]
    for i in range(N_SUBJECTS):
        for j in range(i + 1, N_SUBJECTS):
            dice = 2 * (brains[i] & brains[j]).sum() / (brains[i].sum() + brains[j].sum())
            assert 0.5 < dice < 0.95, (i, j, dice)


def test_procedural_anatomy_stays_available(tmp_path):
    manifest = build_demo_cohort(tmp_path, 1, "small", seed=2, workers=1, progress=False, anatomy_name="procedural")
    assert manifest["anatomy"] == "procedural" and "semi_axes_mm" in manifest["subjects"][0]["anatomy"]
    _, labels = _load(tmp_path / "truth" / "demo001" / "labels.nii.gz")
    _, t1 = _load(tmp_path / "truth" / "demo001" / "t1.nii.gz")
    means = _class_means(t1, labels, (WHITE_MATTER, GREY_MATTER, CSF))
    assert means[WHITE_MATTER] > means[GREY_MATTER] > means[CSF]


def test_raw_scans_keep_the_contrast_under_noise_and_bias(cohort):
    subject = "demo002"
    truth_grid, labels = _load(cohort / "truth" / subject / "labels.nii.gz")
    poses = json.loads((cohort / "truth" / subject / "pose.json").read_text())
    for modality, order in (("T1", (WHITE_MATTER, GREY_MATTER, CSF)), ("T2", (CSF, GREY_MATTER, WHITE_MATTER))):
        grid, raw = _load(cohort / "raw" / "mri" / f"{subject}-{modality}.nii.gz")
        raw_labels = render_in_raw(labels.astype(np.uint8), truth_grid, Pose.from_dict(poses[modality.lower()]), grid, order=0)
        means = _class_means(raw, raw_labels, order, erode=True)
        assert means[order[0]] > means[order[1]] > means[order[2]], (modality, means)
    ct_grid, ct = grid_from_sitk(_read_series_sitk(_thin_series(cohort, subject)))
    _, ct_labels = _load(cohort / "truth" / subject / "ct_raw_labels.nii.gz")
    means = _class_means(ct, ct_labels, (CORTICAL_BONE, GREY_MATTER, WHITE_MATTER, VENTRICLE, FAT), erode=True)
    assert means[CORTICAL_BONE] >= 700
    assert means[GREY_MATTER] > means[WHITE_MATTER] > means[VENTRICLE] > means[FAT]


def test_head_holder_in_raw_ct_only(cohort):
    for entry in json.loads((cohort / "manifest.json").read_text())["subjects"]:
        subject = entry["subject"]
        _, ct = grid_from_sitk(_read_series_sitk(_thin_series(cohort, subject)))
        _, ct_labels = _load(cohort / "truth" / subject / "ct_raw_labels.nii.gz")
        ct_labels = ct_labels.astype(np.uint8)
        inside_fov = ct > -2000
        for label in (HOLDER_PLATE, COUCH, CONTACT_PAD):
            region = (ct_labels == label) & inside_fov
            assert region.sum() > 5, f"{subject}: artefact label {label} missing"
            # Bright enough to survive a bone threshold.
            assert np.median(ct[region]) > 600
        head = (ct_labels >= 1) & (ct_labels <= 8)
        pads = ct_labels == CONTACT_PAD
        assert (ndimage.binary_dilation(pads) & head).any(), f"{subject}: pads must touch the scalp"
        _, truth_ct = _load(cohort / "truth" / subject / "ct.nii.gz")
        _, truth_labels = _load(cohort / "truth" / subject / "labels.nii.gz")
        # Voxels near the scalp share it (partial volume: thin skin on a curved surface can lie between
        # the block centres that give the labels); beyond them the truth is pure air.
        outside_head = ~ndimage.binary_dilation(truth_labels != AIR, iterations=2)
        assert outside_head.sum() > 0.3 * outside_head.size
        assert np.all(truth_ct[outside_head] == -1000), "truth CT must be artefact-free"
        assert (truth_labels <= 8).all()


def test_modalities_are_misaligned_before_registration(cohort):
    subject = "demo001"
    landmarks = json.loads((cohort / "truth" / subject / "landmarks.json").read_text())
    names = sorted(landmarks["truth"])
    points = {space: np.array([landmarks[space][n] for n in names]) for space in ("truth", "ct", "t1", "t2")}
    for a, b in (("ct", "t1"), ("t1", "t2"), ("ct", "t2"), ("truth", "t1")):
        error = np.linalg.norm(points[a] - points[b], axis=1)
        assert error.mean() > 4.0, f"{a} vs {b} should be misaligned, mean landmark distance {error.mean():.1f} mm"
    # The landmarks are where the pose puts them.
    poses = json.loads((cohort / "truth" / subject / "pose.json").read_text())
    for modality in ("ct", "t1", "t2"):
        back = Pose.from_dict(poses[modality]).raw_to_truth(points[modality])
        assert np.abs(back - points["truth"]).max() < 0.05

    # Image evidence: the raw T1 in scanner coordinates overlaps the truth head less than after undoing the pose.
    truth_grid, labels = _load(cohort / "truth" / subject / "labels.nii.gz")
    grid, raw = _load(cohort / "raw" / "mri" / f"{subject}-T1.nii.gz")
    head_truth = labels > 0
    raw_in_truth = resample_to_grid(raw, grid, truth_grid, order=1) > 0.3 * np.percentile(raw, 99)
    dice_before = 2 * (raw_in_truth & head_truth).sum() / (raw_in_truth.sum() + head_truth.sum())
    pose = Pose.from_dict(poses["t1"])
    labels_in_raw = render_in_raw(labels.astype(np.uint8), truth_grid, pose, grid, order=0) > 0
    raw_head = raw > 0.3 * np.percentile(raw, 99)
    dice_after = 2 * (raw_head & labels_in_raw).sum() / (raw_head.sum() + labels_in_raw.sum())
    assert dice_after > 0.9
    assert dice_before < dice_after - 0.03


def test_scouts_present_exactly_where_claimed(cohort):
    manifest = json.loads((cohort / "manifest.json").read_text())
    claimed = [e["subject"] for e in manifest["subjects"] if any(s["localizer"] for s in e["ct"]["series"])]
    assert claimed and len(claimed) < N_SUBJECTS
    for entry in manifest["subjects"]:
        subject = entry["subject"]
        localizers = [p for p in (cohort / "raw" / "ct" / subject).rglob("*.dcm")
                      if "LOCALIZER" in pydicom.dcmread(p, stop_before_pixels=True).ImageType]
        assert bool(localizers) == (subject in claimed)
        for series in entry["ct"]["series"]:
            folder = cohort / entry["ct"]["study"] / series["folder"]
            assert len(list(folder.glob("*.dcm"))) == series["files"]


def _run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "preprocessing", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subjects", "-3"], "--subjects: must be at least 1"),
        (["--size", "huge"], "--size: invalid choice"),
        (["--seed", "x"], "--seed: expected a whole number"),
        (["--anatomy", "atlas"], "--anatomy: invalid choice: 'atlas'"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    result = _run_cli("demo", "--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_unwritable_output(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _run_cli("demo", "--output", str(blocker / "cohort"), "--size", "small", "--subjects", "1")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "cannot write to output folder" in result.stderr and str(blocker / "cohort") in result.stderr


def test_cli_builds_a_cohort(tmp_path):
    result = _run_cli("demo", "--output", str(tmp_path / "c"), "--size", "small", "--subjects", "1", "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c" / "raw" / "mri" / "demo001-T1.nii.gz").is_file()
    assert "demo cohort written" in result.stdout


def test_cli_missing_template_exits_2_with_one_line(tmp_path):
    # nilearn hidden from the import system, as on a machine where it is not installed.
    code = ("import sys, importlib.util as u; find = u.find_spec; "
            "u.find_spec = lambda name, *a, **k: None if name == 'nilearn' else find(name, *a, **k); "
            "from preprocessing.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "demo", "--output", str(tmp_path / "out"), "--size", "small",
                             "--subjects", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "preprocessing demo: error: the MNI152 anatomy needs the nilearn package" in result.stderr
    assert not (tmp_path / "out").exists()
