"""A trained bundle that travels: trained here, packaged, unpacked at another 'site' that has only the
library's wheel and the zip (no checkout, no cohort), and applied there to single scans."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.bundles.helpers import BUNDLES, REPO_ROOT, TINY_TRAINING, cli, run_checked
from tests.modality_translation.inference.scan_data import las_copy

#: What a wheel is built from (the repository's packaging files and packages; tests and data left out).
WHEEL_SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "medgan_common", "preprocessing", "modality_translation")


def _train_tiny_bundle(name: str, dataset: Path, sites: Path, *extra: str) -> Path:
    """A copy of ``bundles/<name>`` trained for one tiny epoch into its own ``models/``."""
    bundle = sites / "home" / name
    shutil.copytree(BUNDLES / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    run_checked([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(bundle / "configs" / "train.json"),
                 "--dataset_dir", str(dataset), "--train#trainer#max_epochs", "1", *cli(TINY_TRAINING), *extra])
    assert (bundle / "models" / "training_record.json").is_file()
    return bundle


def _site_environment(root: Path) -> Path:
    """A fresh virtual environment holding the library's wheel; its dependencies come from this interpreter's
    site-packages (a path, so that no editable install of the repository is activated there)."""
    source = root / "source"
    source.mkdir(parents=True)
    for name in WHEEL_SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy(path, source / name)
    wheels = root / "wheels"
    run_checked([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
                cwd=root, timeout=600)
    wheel = next(wheels.glob("medgan_translate-*.whl"))
    venv = root / "venv"
    run_checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                                 text=True).strip())
    (site_packages / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run_checked([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                cwd=root, timeout=600)
    return python


def _site_run(python: Path, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _translate(python: Path, site: Path, bundle: str, source: Path, output: Path, *extra: str, check: bool = True):
    config = site / "bundles" / bundle / "configs" / "inference.json"
    return _site_run(python, site, "-m", "monai.bundle", "run", "translate", "--config_file", str(config),
                     "--input", str(source), "--output_dir", str(output), *extra, check=check)


@pytest.fixture(scope="module")
def site(demo_dataset, tmp_path_factory):
    """Two trained bundles packaged at home and unpacked at a site with only the wheel and the zips."""
    sites = tmp_path_factory.mktemp("sites")
    zips = sites / "zips"
    for name, extra in (("pix2pix_t1_t2", ()), ("cyclegan_ct_t2", ("--perceptual_weight", "0"))):
        bundle = _train_tiny_bundle(name, demo_dataset, sites, *extra)
        run_checked([sys.executable, "-m", "modality_translation.bundle", "package", str(bundle), "--output", str(zips)])
    python = _site_environment(sites / "env")
    where = _site_run(python, sites, "-c", "import modality_translation; print(modality_translation.__file__)").stdout
    assert str(REPO_ROOT) not in where and "site-packages" in where
    remote = sites / "site"
    (remote / "bundles").mkdir(parents=True)
    for package in sorted(zips.glob("*.zip")):
        _site_run(python, remote, "-m", "modality_translation.bundle", "unpack", str(package), "--output", str(remote / "bundles"))
    return python, remote, demo_dataset.parent / "cohort" / "raw"


def _assert_nifti_on_grid(output: Path, source: Path) -> np.ndarray:
    written, original = nib.load(output), nib.load(source)
    assert written.shape == original.shape
    np.testing.assert_array_equal(written.affine, original.affine)
    values = np.asarray(written.dataobj)
    assert np.isfinite(values).all() and values.std() > 0
    return values


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_a_nifti_t1_in_any_orientation(site, tmp_path):
    python, remote, raw = site
    t1 = raw / "mri" / "demo001-T1.nii.gz"
    _translate(python, remote, "pix2pix_t1_t2", t1, tmp_path / "ras")
    values = _assert_nifti_on_grid(tmp_path / "ras" / "demo001-T1_synthetic_t2.nii.gz", t1)
    las = las_copy(t1, tmp_path / "demo001-T1-las.nii.gz")
    _translate(python, remote, "pix2pix_t1_t2", las, tmp_path / "las")
    flipped = _assert_nifti_on_grid(tmp_path / "las" / "demo001-T1-las_synthetic_t2.nii.gz", las)
    # The same translation up to the interpolation of a registration started from another voxel order.
    same = flipped[::-1]
    assert np.corrcoef(values.ravel(), same.ravel())[0, 1] > 0.97
    assert np.mean(np.abs(values - same)) < 0.05


def test_a_dicom_ct_series_and_a_study_with_a_scout(site, tmp_path):
    python, remote, raw = site
    series = next((raw / "ct" / "demo001").rglob("*.dcm")).parent
    _translate(python, remote, "cyclegan_ct_t2", series, tmp_path / "series")
    name = f"{series.name}_synthetic_t2"
    source = pydicom.dcmread(next(series.glob("*.dcm")))
    read_source = _read_series(series)
    output = _read_series(tmp_path / "series" / f"{name}_dicom")
    assert output.GetSize() == read_source.GetSize()
    np.testing.assert_allclose(output.GetOrigin(), read_source.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(output.GetSpacing(), read_source.GetSpacing(), atol=1e-4)
    files = sorted((tmp_path / "series" / f"{name}_dicom").glob("*.dcm"))
    first = pydicom.dcmread(files[0])
    assert (first.StudyInstanceUID, first.FrameOfReferenceUID) == (source.StudyInstanceUID, source.FrameOfReferenceUID)
    assert first.SeriesInstanceUID != source.SeriesInstanceUID
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"] and "SYNTHETIC" in first.SeriesDescription
    assert "cyclegan_ct_t2" in first.DerivationDescription and first.PatientID == source.PatientID
    assert nib.load(tmp_path / "series" / f"{name}.nii.gz").shape == read_source.GetSize()

    # Again: byte-identical outputs.
    _translate(python, remote, "cyclegan_ct_t2", series, tmp_path / "again")
    for path in sorted((tmp_path / "series").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "again" / path.relative_to(tmp_path / "series")).read_bytes(), path

    # A study folder with a scout beside the series: the series is chosen, the scout is not translated.
    study = tmp_path / "study"
    shutil.copytree(series, study / "ct")
    scout = pydicom.dcmread(next(series.glob("*.dcm")))
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesDescription, scout.SeriesInstanceUID = "SCOUT", pydicom.uid.generate_uid()
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    (study / "scout").mkdir()
    scout.save_as(study / "scout" / "IM0001.dcm")
    _translate(python, remote, "cyclegan_ct_t2", study, tmp_path / "from_study", "--deidentify", "True")
    from_study = _read_series(tmp_path / "from_study" / "study_synthetic_t2_dicom")
    assert from_study.GetSize() == read_source.GetSize()
    anonymous = pydicom.dcmread(next((tmp_path / "from_study" / "study_synthetic_t2_dicom").glob("*.dcm")))
    assert anonymous.PatientID == "" and anonymous.StudyInstanceUID == source.StudyInstanceUID


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_input_is_one_line_error_and_nothing_is_written(site, tmp_path):
    python, remote, raw = site
    t1 = raw / "mri" / "demo001-T1.nii.gz"
    image = nib.load(t1)
    four_d = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([np.asarray(image.dataobj)] * 3, axis=-1), image.affine), four_d)
    unreadable = tmp_path / "broken.nii.gz"
    unreadable.write_bytes(t1.read_bytes()[:2000])
    cases = [
        ("pix2pix_t1_t2", four_d, ("dwi.nii.gz", "3D")),
        ("cyclegan_ct_t2", t1, ("demo001-T1.nii.gz", "Hounsfield")),
        ("pix2pix_t1_t2", unreadable, ("broken.nii.gz",)),
    ]
    for bundle, source, fragments in cases:
        output = tmp_path / f"out_{bundle}_{source.name}"
        _one_line_error(_translate(python, remote, bundle, source, output, check=False), *fragments)
        assert not output.exists()

    # The weights: missing, or not the ones the package's large_files.yml lists.
    for damage in ("missing", "altered"):
        copy = tmp_path / damage / "bundles"
        shutil.copytree(remote / "bundles" / "pix2pix_t1_t2", copy / "pix2pix_t1_t2")
        weights = copy / "pix2pix_t1_t2" / "models" / "model.pt"
        if damage == "missing":
            weights.unlink()
        else:
            data = bytearray(weights.read_bytes())
            data[-100] ^= 0xFF
            weights.write_bytes(bytes(data))
        output = tmp_path / f"out_{damage}"
        result = _translate(python, copy.parent, "pix2pix_t1_t2", t1, output, check=False)
        _one_line_error(result, "model.pt", "sha256" if damage == "altered" else "")
        assert not output.exists()

    # A zip that is not a bundle.
    fake = tmp_path / "fake.zip"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    result = _site_run(python, tmp_path, "-m", "modality_translation.bundle", "unpack", str(fake), "--output",
                       str(tmp_path / "unpacked"), check=False)
    assert result.returncode != 0 and "not a MONAI bundle" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "unpacked").exists()
