"""Synthetic DICOM series output (modality_translation/inference/dicom_output.py)."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from modality_translation.inference import write_dicom_series


def _image(values, spacing=(0.8, 1.1, 2.5), origin=(-30.0, 12.5, 40.25), angle_deg=15.0):
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    image.SetDirection(rotation.ravel().tolist())
    return image


def _read_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_same_geometry(read, image):
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-6)


def test_ct_series_round_trip_and_tags(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1024, 3000, (12, 20, 24))
    image = _image(hu)
    files = write_dicom_series(image, tmp_path / "sct", "ct", source_modality="t1")
    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, 13)]
    read = _read_series(tmp_path / "sct")
    _assert_same_geometry(read, image)
    expected = np.rint(sitk.GetArrayFromImage(image))  # the float32 volume, rounded to integer HU
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), expected)

    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription == "SYNTHETIC CT FROM T1"
    assert first.Modality == "CT" and first.SOPClassUID == pydicom.uid.CTImageStorage
    assert first.PixelRepresentation == 1 and first.BitsAllocated == 16 and first.pixel_array.dtype == np.int16
    assert (float(first.RescaleSlope), float(first.RescaleIntercept), first.RescaleType) == (1.0, -1024.0, "HU")
    assert "Synthetic" in first.DerivationDescription
    assert first.PatientID == "" and first.PatientName == "" and first.PatientBirthDate == ""
    assert [float(v) for v in first.PixelSpacing] == [1.1, 0.8] and float(first.SliceThickness) == 2.5
    np.testing.assert_allclose([float(v) for v in datasets[3].ImagePositionPatient],
                               image.TransformIndexToPhysicalPoint((0, 0, 3)), atol=1e-4)
    assert len({ds.SOPInstanceUID for ds in datasets}) == 12
    assert len({(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID) for ds in datasets}) == 1
    assert len({first.StudyInstanceUID, first.SeriesInstanceUID, first.FrameOfReferenceUID, first.SOPInstanceUID}) == 4
    assert [ds.InstanceNumber for ds in datasets] == list(range(1, 13))

    # A second run makes new UIDs and replaces the series as a whole.
    write_dicom_series(_image(hu[:5]), tmp_path / "sct", "ct", patient_id="sub-0a1b2c")
    again = [pydicom.dcmread(f) for f in sorted((tmp_path / "sct").iterdir())]
    assert len(again) == 5 and again[0].SeriesDescription == "SYNTHETIC CT"
    assert again[0].StudyInstanceUID != first.StudyInstanceUID and again[0].SeriesInstanceUID != first.SeriesInstanceUID
    assert again[0].PatientID == "sub-0a1b2c" and again[0].PatientName == "sub-0a1b2c"
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))


def test_mr_series_round_trip_within_the_rescale_rounding(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.uniform(-1, 1, (6, 16, 18))
    image = _image(values, spacing=(1.0, 1.0, 3.0), angle_deg=-30.0)
    files = write_dicom_series(image, tmp_path / "t2", "t2", "SYNTHETIC T2 FROM CT", window=(0.0, 2.0))
    read = _read_series(tmp_path / "t2")
    _assert_same_geometry(read, image)
    first = pydicom.dcmread(files[0])
    slope = float(first.RescaleSlope)
    assert first.Modality == "MR" and first.SOPClassUID == pydicom.uid.MRImageStorage
    assert first.PixelRepresentation == 0 and first.pixel_array.dtype == np.uint16
    assert first.SeriesDescription == "SYNTHETIC T2 FROM CT" and list(first.ImageType) == ["DERIVED", "SECONDARY"]
    assert (float(first.WindowCenter), float(first.WindowWidth)) == (0.0, 2.0)
    assert slope == pytest.approx(2.0 / 65535, rel=1e-3)
    error = np.abs(sitk.GetArrayFromImage(read) - sitk.GetArrayFromImage(image))
    assert error.max() <= slope / 2 + 1e-6


def test_left_handed_volumes_are_stored_flipped_along_the_slice_axis(tmp_path):
    values = np.arange(5 * 8 * 9, dtype=np.float64).reshape(5, 8, 9)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))  # slices stacked towards the feet
    write_dicom_series(image, tmp_path / "s", "ct")
    read = _read_series(tmp_path / "s")
    np.testing.assert_allclose(read.GetDirection(), (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), image.TransformIndexToPhysicalPoint((0, 0, 4)), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), values[::-1])


def test_refusals(tmp_path):
    image = _image(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="must contain 'SYNTHETIC', got 'T2 FROM CT'"):
        write_dicom_series(image, tmp_path / "s", "t2", "T2 FROM CT")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"holds files that are not DICOM \(readme.txt\)"):
        write_dicom_series(image, tmp_path / "notes", "ct")
    assert (tmp_path / "notes" / "readme.txt").read_text() == "keep me"
    write_dicom_series(image, tmp_path / "s", "ct")
    with pytest.raises(FileExistsError, match="overwrite=False"):
        write_dicom_series(image, tmp_path / "s", "ct", overwrite=False)
    sheared = sitk.Image(image)
    sheared.SetDirection((1, 0.3, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="sheared"):
        write_dicom_series(sheared, tmp_path / "t", "ct")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "s"]


def _source_header():
    ds = pydicom.Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "H123456", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260301", "101500", "ACC42", "7"
    ds.SeriesNumber = 3
    return ds


def test_a_series_translated_from_a_source_joins_its_study_and_is_reproducible(tmp_path):
    image = _image(np.random.default_rng(1).uniform(-1000, 1500, (5, 8, 9)))
    source = _source_header()
    first = write_dicom_series(image, tmp_path / "a", "ct", source_modality="t1", source=source, model="pix2pix_mr_ct 0.1.0")
    again = write_dicom_series(image, tmp_path / "b", "ct", source_modality="t1", source=source, model="pix2pix_mr_ct 0.1.0")
    assert [f.read_bytes() for f in first] == [f.read_bytes() for f in again]
    ds = pydicom.dcmread(first[0])
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (source.StudyInstanceUID, source.FrameOfReferenceUID)
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID and ds.SeriesNumber == 1004
    assert (ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == ("Doe^Jane", "H123456", "19700101", "F")
    assert (ds.StudyDate, ds.AccessionNumber, ds.StudyID) == ("20260301", "ACC42", "7")
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and "SYNTHETIC" in ds.SeriesDescription
    assert "pix2pix_mr_ct 0.1.0" in ds.DerivationDescription
    # Another model or a de-identified output is another series.
    other = write_dicom_series(image, tmp_path / "c", "ct", source_modality="t1", source=source, deidentify=True)
    anonymous = pydicom.dcmread(other[0])
    assert anonymous.SeriesInstanceUID != ds.SeriesInstanceUID and anonymous.StudyInstanceUID == source.StudyInstanceUID
    assert (anonymous.PatientName, anonymous.PatientID, anonymous.PatientBirthDate) == ("", "", "")
    assert anonymous.PatientIdentityRemoved == "YES"
    without_uid = _source_header()
    del without_uid.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        write_dicom_series(image, tmp_path / "d", "ct", source=without_uid)
    assert not (tmp_path / "d").exists()
