"""Translating one scan with a bundle's record (modality_translation/inference/scan_translation.py)."""

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from modality_translation.bundle.record import TrainingRecord
from modality_translation.inference import IntensityMapping, ScanTranslator, VolumeTranslator, select_direction
from modality_translation.inference.scan_input import nifti_to_sitk
from medgan_common.errors import InputReadError
from tests.modality_translation.inference.scan_data import (
    head,
    las_copy,
    ras_affine,
    sagittal_copy,
    write_ct_study,
    write_nifti,
)


class Scale(torch.nn.Module):
    """A 'generator' whose output is known: the input slice times a factor (on the network scale)."""

    def __init__(self, factor=1.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return (x * self.factor).clamp(-1, 1)


def _mr_record(folder=None, alignment=None):
    mapping = {"head_mask": {"method": "otsu", "closing_radius": 1}, "out_range": [-1.0, 1.0],
               "normalization": {"method": "percentile", "lower": 0.5, "upper": 99.5}}
    return TrainingRecord(folder=folder, intensity={"t1": {"modality": "t1", **mapping}, "t2": {"modality": "t2", **mapping}},
                          alignment=alignment or {}, settings={"image_size": 32})


def _translator(source="t1", target="t2", factor=1.0):
    return VolumeTranslator(Scale(factor), source, target, slice_size=32, device="cpu")


def _on_grid_of(image, reference):
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1.0))


@pytest.mark.parametrize("store", [las_copy, sagittal_copy])
def test_the_same_scan_stored_otherwise_gives_the_same_translation(tmp_path, store):
    ras = write_nifti(tmp_path / "t1.nii.gz", head(), ras_affine())
    other = store(ras, tmp_path / "other.nii.gz")
    translator = ScanTranslator(_translator(), _mr_record(), model="test 1.0")
    first = translator.translate(ras, tmp_path / "out")
    second = translator.translate(other, tmp_path / "out")
    a, b = nib.load(first["outputs"]["nifti"]), nib.load(second["outputs"]["nifti"])
    assert a.shape == nib.load(ras).shape and b.shape == nib.load(other).shape
    np.testing.assert_array_equal(a.affine, nib.load(ras).affine)
    np.testing.assert_array_equal(b.affine, nib.load(other).affine)
    # Same physical image: the axial slices are the same slices whichever order the file stores them in.
    np.testing.assert_allclose(_on_grid_of(nifti_to_sitk(b), nifti_to_sitk(a)), np.asarray(a.dataobj).transpose(2, 1, 0),
                               atol=1e-5)
    # The identity network returns the normalised input: -1 outside the head, the percentile scale inside.
    values = np.asarray(a.dataobj)
    assert values.min() == pytest.approx(-1.0) and values.max() == pytest.approx(1.0, abs=0.02)
    summary = json.loads((tmp_path / "out" / "t1_synthetic_t2.json").read_text())
    assert summary["model"] == "test 1.0" and summary["input_kind"] == "nifti" and "alignment" not in summary


def test_a_scan_is_aligned_to_the_reference_and_its_translation_returned_to_its_own_grid(tmp_path):
    write_nifti(tmp_path / "reference_t1.nii.gz", head(), ras_affine())
    # The same head, turned by 8 degrees and shifted by 6 mm: a new patient's pose.
    angle = np.deg2rad(8.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rotation[:3, 3] = [6.0, -4.0, 2.0]
    moved = write_nifti(tmp_path / "patient.nii.gz", head(seed=3), rotation @ ras_affine())
    record = _mr_record(tmp_path, {"t1": {"reference": "reference_t1.nii.gz", "registration": {
        "linear_iterations": [50, 20], "linear_shrink_factors": [2, 1], "linear_smoothing_sigmas": [1, 0]}}})
    result = ScanTranslator(_translator(), record).translate(moved, tmp_path / "out")
    assert result["alignment"]["ncc_after"] > result["alignment"]["ncc_before"]
    output = nib.load(result["outputs"]["nifti"])
    np.testing.assert_array_equal(output.affine, nib.load(moved).affine)
    # Mapped back, the translation shows the patient where the patient is: it matches the normalised input.
    translated = np.asarray(output.dataobj)
    inside = head(seed=3) > 300
    normalised = IntensityMapping("t1").to_network(head(seed=3).transpose(2, 1, 0)).transpose(2, 1, 0)
    assert np.corrcoef(translated[inside], normalised[inside])[0, 1] > 0.9
    assert np.mean(translated[~inside] < -0.8) > 0.8


def test_a_ct_study_gives_a_synthetic_series_in_the_same_study_without_the_holder(tmp_path):
    study = write_ct_study(tmp_path / "study", with_scout=True)
    ct = {"modality": "ct", "window": {"center": 40, "width": 400}, "out_range": [-1.0, 1.0],
          "normalization": {"method": "percentile"}, "head_mask": {}}
    record = TrainingRecord(folder=tmp_path, intensity={"ct": ct, "t2": {**ct, "modality": "t2"}},
                            ct_artefact={"enabled": True, "options": {}, "outside_hu": -1000.0})
    translator = ScanTranslator(_translator("ct", "t2"), record, model="cyclegan_ct_t2 0.1.0")
    result = translator.translate(study, tmp_path / "out", deidentify=False)
    assert set(result["outputs"]) == {"nifti", "dicom"} and result["series"]["description"] == "CT HEAD 3mm"
    source = pydicom.dcmread(next((study / "ct_head").iterdir()))
    files = sorted((tmp_path / "out" / "study_synthetic_t2_dicom").iterdir())
    assert len(files) == 20
    ds = pydicom.dcmread(files[0])
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.PatientName) == (
        source.StudyInstanceUID, source.FrameOfReferenceUID, source.PatientName)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.SeriesDescription == "SYNTHETIC T2 FROM CT"
    assert "cyclegan_ct_t2 0.1.0" in ds.DerivationDescription and ds.Modality == "MR"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path / "out" / "study_synthetic_t2_dicom")))
    read = reader.Execute()
    assert read.GetSize() == (40, 40, 20)
    np.testing.assert_allclose(read.GetOrigin(), (-40.0, -40.0, -30.0), atol=1e-4)
    # The identity network shows the windowed input: the head is there, the holder plate is not.
    values = sitk.GetArrayFromImage(read)
    assert values[10, 20, 20] > -0.5  # the head's centre, 40 HU in a 40/400 window
    assert values[:, 34:37, 5:35].max() < -0.99  # the plate was set to air before translation
    # Rerunning gives the same bytes; de-identified output blanks the patient.
    again = translator.translate(study, tmp_path / "again")
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted(
        (tmp_path / "again" / "study_synthetic_t2_dicom").iterdir())]
    assert (tmp_path / "out" / "study_synthetic_t2.nii.gz").read_bytes() == (
        tmp_path / "again" / "study_synthetic_t2.nii.gz").read_bytes()
    assert again["outputs"]["nifti"].endswith("study_synthetic_t2.nii.gz")
    anonymous = translator.translate(study, tmp_path / "anonymous", deidentify=True)
    ds = pydicom.dcmread(sorted((tmp_path / "anonymous" / "study_synthetic_t2_dicom").iterdir())[0])
    assert ds.PatientName == "" and ds.PatientIdentityRemoved == "YES" and anonymous["deidentified"]


def test_bad_input_writes_nothing(tmp_path):
    four_d = write_nifti(tmp_path / "dwi.nii.gz", np.stack([head()] * 2, axis=-1), ras_affine())
    translator = ScanTranslator(_translator(), _mr_record())
    with pytest.raises(InputReadError, match="dwi.nii.gz"):
        translator.translate(four_d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="no DICOM study"):
        translator.translate(write_nifti(tmp_path / "t1.nii.gz", head(), ras_affine()), tmp_path / "out", write_dicom=True)
    assert not (tmp_path / "out").exists()


def test_directions():
    forward, reverse = _translator("t1", "t2"), _translator("t2", "t1")
    assert select_direction({"forward": forward, "reverse": reverse}, "reverse") is reverse
    assert select_direction(forward) is forward
    with pytest.raises(ValueError, match="'reverse' is not available: this bundle translates forward \\(t1 -> t2"):
        select_direction(forward, "reverse")
    with pytest.raises(ValueError, match="'sideways'"):
        select_direction({"forward": forward, "reverse": reverse}, "sideways")
