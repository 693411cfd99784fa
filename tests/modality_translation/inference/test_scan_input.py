"""Reading one scan to translate (modality_translation/inference/scan_input.py)."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from modality_translation.inference import IntensityMapping, IntensityMismatchError, read_scan
from modality_translation.inference.scan_input import nifti_to_sitk, write_nifti_like
from medgan_common.errors import InputReadError, SeriesSelectionError
from tests.modality_translation.inference.scan_data import (
    head,
    las_copy,
    ras_affine,
    sagittal_copy,
    write_ct_study,
    write_mr_study,
    write_nifti,
)

T1 = IntensityMapping("t1")
CT = IntensityMapping("ct")


def _resampled_like(image, reference):
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor))


@pytest.mark.parametrize("store", [las_copy, sagittal_copy])
def test_a_nifti_scan_keeps_its_physical_grid_in_any_storage_order(tmp_path, store):
    ras = write_nifti(tmp_path / "t1.nii.gz", head(), ras_affine())
    other = store(ras, tmp_path / "t1_other.nii.gz")
    first, second = read_scan(ras, T1), read_scan(other, T1)
    assert first.modality == "t1" and not first.is_dicom and first.stem == "t1"
    assert second.image.GetSize() == nib.load(other).shape
    # The same voxels at the same physical points.
    np.testing.assert_array_equal(_resampled_like(second.image, first.image), sitk.GetArrayFromImage(first.image))
    point = first.image.TransformIndexToPhysicalPoint((3, 5, 7))
    np.testing.assert_allclose(nib.affines.apply_affine(nib.load(ras).affine, (3, 5, 7)),
                               [-point[0], -point[1], point[2]], atol=1e-5)


def test_written_output_has_the_input_header(tmp_path):
    path = las_copy(write_nifti(tmp_path / "t1.nii.gz", head(), ras_affine()), tmp_path / "las.nii.gz")
    scan = read_scan(path, T1)
    output = write_nifti_like(scan, sitk.Cast(scan.image * 2, sitk.sitkFloat32), tmp_path / "out.nii.gz")
    written, source = nib.load(output), nib.load(path)
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_allclose(np.asarray(written.dataobj), 2 * np.asarray(source.dataobj), rtol=1e-6)
    assert nifti_to_sitk(written).GetDirection() == scan.image.GetDirection()


def test_bad_files_are_refused_naming_the_file(tmp_path):
    four_d = write_nifti(tmp_path / "dwi.nii.gz", np.stack([head()] * 3, axis=-1), ras_affine())
    with pytest.raises(InputReadError, match=r"dwi\.nii\.gz.*3D"):
        read_scan(four_d, T1)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    with pytest.raises(InputReadError, match="broken.nii.gz"):
        read_scan(broken, T1)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(write_nifti(tmp_path / "whole.nii.gz", head(), ras_affine()).read_bytes()[:3000])
    with pytest.raises(InputReadError, match="truncated.nii.gz"):
        read_scan(truncated, T1)
    with pytest.raises(InputReadError, match="does not exist"):
        read_scan(tmp_path / "missing.nii.gz", T1)
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputReadError, match="not a NIfTI"):
        read_scan(tmp_path / "scan.png", T1)


def test_a_scan_of_another_modality_is_refused(tmp_path):
    mr = write_nifti(tmp_path / "t1.nii.gz", head(), ras_affine())
    with pytest.raises(IntensityMismatchError, match=r"t1\.nii\.gz.*Hounsfield"):
        read_scan(mr, CT)
    ct_in_hu = write_nifti(tmp_path / "ct.nii.gz", np.where(head() > 100, 40.0, -1000.0), ras_affine())
    with pytest.raises(IntensityMismatchError, match=r"ct\.nii\.gz.*not an MR"):
        read_scan(ct_in_hu, T1)
    study = write_mr_study(tmp_path / "mr_study")
    with pytest.raises(IntensityMismatchError, match=r"holds no CT series \(found MR.*T1 AX"):
        read_scan(study, CT)


def test_a_study_folder_gives_its_ct_series_not_the_scout_or_the_mr(tmp_path):
    study = write_ct_study(tmp_path / "study", with_scout=True, with_mr=True)
    scan = read_scan(study, CT)
    assert scan.is_dicom and scan.series["description"] == "CT HEAD 3mm" and scan.series["series_in_folder"] == 3
    assert scan.image.GetSize() == (40, 40, 20)
    assert scan.dicom_header.PatientName == "Test^Patient" and scan.dicom_header.Modality == "CT"
    values = sitk.GetArrayFromImage(scan.image)
    assert values.min() < -900 and values.max() > 800  # Hounsfield units
    mr = read_scan(study, T1)
    assert mr.series["description"] == "T1 AX"


def test_a_study_of_only_a_scout_names_why_each_series_was_refused(tmp_path):
    study = write_ct_study(tmp_path / "study", with_scout=True)
    import shutil

    shutil.rmtree(study / "ct_head")
    with pytest.raises(SeriesSelectionError, match="SCOUT.*localizer"):
        read_scan(study, CT)
