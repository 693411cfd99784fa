"""Tests of preprocessing.dicom on small synthetic CT series written with pydicom."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medgan_common.errors import GeometryError, InputReadError, SeriesSelectionError
from preprocessing.dicom import (
    DEFAULT_READ_CONFIG,
    SUPPORTED_TRANSFER_SYNTAXES,
    SeriesInfo,
    find_series,
    read_dicom_series,
    scan_dicom_folder,
    select_series,
    to_canonical,
)
from tests.preprocessing.dicom_factory import (
    AXIAL,
    PATIENT_TAGS,
    axial_positions,
    write_ct_series,
)

SHAPE = (32, 32)
PIXEL_SPACING = (0.8, 0.6)  # (row spacing = y, column spacing = x)


def stored_volume(n_slices: int = 6, dtype=np.int16) -> np.ndarray:
    """Stored values that differ between slices and pixels, so that any misplacement shows."""
    z, y, x = np.meshgrid(np.arange(n_slices), np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    return (1000 + 100 * z + 3 * y + x).astype(dtype)


def fov_mask() -> np.ndarray:
    """True outside a circular reconstruction field of view."""
    y, x = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return (y - 15.5) ** 2 + (x - 15.5) ** 2 > 15.0**2


def physical_points(image: sitk.Image) -> np.ndarray:
    """LPS coordinates of every voxel, as an array [z, y, x, 3]."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*(np.arange(s) for s in size[::-1]), indexing="ij")[::-1], axis=-1)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T


# ----------------------------------------------------------------------------------------------
# HU conversion and geometry


def test_hu_from_slope_intercept_and_padding(tmp_path):
    stored = stored_volume()
    stored[:, fov_mask()] = -2000
    write_ct_series(tmp_path, stored, slope=2.0, intercept=-1024.0, padding_value=-2000,
                    pixel_spacing=PIXEL_SPACING)

    image, metadata = read_dicom_series(find_series(tmp_path)[0])

    expected = stored.astype(np.float32) * 2.0 - 1024.0
    expected[:, fov_mask()] = -1024.0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(image.GetSpacing(), (0.6, 0.8, 2.5))
    np.testing.assert_allclose(image.GetOrigin(), axial_positions(1)[0])
    assert metadata["pixel_padding_voxels"] == 6 * fov_mask().sum()
    assert metadata["number_of_slices"] == 6
    assert metadata["missing_slices"] == 0 and metadata["gantry_tilt_deg"] == 0.0
    assert metadata["resampled"] is False and metadata["findings"] == []


def test_hu_with_fractional_rescale_is_computed_in_double_precision(tmp_path):
    # Integer rescales are computed in float32 (exact); a fractional slope or intercept is not
    # exact in float32 and goes through float64 before the final cast.
    stored = stored_volume()
    write_ct_series(tmp_path, stored, slope=0.37, intercept=-1024.3, pixel_spacing=PIXEL_SPACING)

    image, _ = read_dicom_series(find_series(tmp_path)[0])

    expected = (stored.astype(np.float64) * 0.37 - 1024.3).astype(np.float32)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)


def test_air_value_and_int16_output(tmp_path):
    stored = stored_volume()
    stored[:, fov_mask()] = -2000
    write_ct_series(tmp_path, stored, slope=1.0, intercept=-1024.0, padding_value=-2000)

    image, metadata = read_dicom_series(find_series(tmp_path)[0], {"air_value": -1000, "dtype": "int16"})

    expected = stored.astype(np.int16) - 1024
    expected[:, fov_mask()] = -1000
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
    assert metadata["dtype"] == "int16"


def test_padding_range_limit(tmp_path):
    stored = stored_volume()
    stored[:, 0, :] = -3000  # inside [PixelPaddingValue, PixelPaddingRangeLimit]
    stored[:, 1, :] = -2000
    write_ct_series(tmp_path, stored, padding_value=-3000, extra={"PixelPaddingRangeLimit": -1500})

    image, _ = read_dicom_series(tmp_path)

    volume = sitk.GetArrayFromImage(image)
    assert np.all(volume[:, :2, :] == -1024.0)
    np.testing.assert_array_equal(volume[:, 2:, :], stored[:, 2:, :] - 1024.0)


def test_flipped_orientation_is_made_canonical_without_moving_anatomy(tmp_path):
    orientation = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows run to patient right, columns anterior
    stored = stored_volume()
    positions = axial_positions(6, orientation=orientation)
    write_ct_series(tmp_path, stored, orientation=orientation, positions=positions, pixel_spacing=PIXEL_SPACING)

    image, metadata = read_dicom_series(tmp_path)

    assert image.GetDirection() == tuple(np.eye(3).ravel())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored[:, ::-1, ::-1] - 1024.0)
    # The stored voxel (i=0, j=0) of the first slice lies at ImagePositionPatient.
    corner = image.TransformIndexToPhysicalPoint((31, 31, 0))
    np.testing.assert_allclose(corner, positions[0], atol=1e-6)
    assert metadata["resampled"] is False


def test_shuffled_and_misnamed_files_are_sorted_by_position(tmp_path):
    stored = stored_volume(8)
    positions = axial_positions(8, step=1.25)
    order = list(range(8))
    random.Random(3).shuffle(order)
    # File names and InstanceNumbers follow the shuffled order, not the anatomy.
    write_ct_series(tmp_path, stored[order], positions=[positions[k] for k in order],
                    filenames=[f"IMG{k:03d}" for k in range(8)])

    image, metadata = read_dicom_series(tmp_path)

    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored - 1024.0)
    np.testing.assert_allclose(image.GetOrigin(), positions[0])
    assert image.GetSpacing()[2] == pytest.approx(1.25)


# ----------------------------------------------------------------------------------------------
# Series discovery and selection


@pytest.fixture()
def study(tmp_path) -> Path:
    """A study holding a localizer, thick, thin, derived and sagittal series and a stray file."""
    root = tmp_path / "Unknown Study"
    study_uid = pydicom.uid.generate_uid()
    write_ct_series(root / "CT LOCALIZER", stored_volume(1), study_uid=study_uid, description="CT LOCALIZER",
                    image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), orientation=(1, 0, 0, 0, 0, -1))
    write_ct_series(root / "CT PLAIN THICK", stored_volume(3), study_uid=study_uid, description="CT PLAIN THICK",
                    slice_step=5.0, slice_thickness=5.0)
    write_ct_series(root / "CT PLAIN THIN", stored_volume(6), study_uid=study_uid, description="CT PLAIN THIN",
                    slice_step=2.5, slice_thickness=2.5)
    write_ct_series(root / "CT MPR", stored_volume(9), study_uid=study_uid, description="CT MPR",
                    image_type=("DERIVED", "SECONDARY", "AXIAL"), slice_step=1.0, slice_thickness=1.0)
    write_ct_series(root / "CT SAG", stored_volume(10), study_uid=study_uid, description="CT SAG",
                    orientation=(0, 1, 0, 0, 0, -1), slice_step=1.0, slice_thickness=1.0)
    (root / "CT PLAIN THIN" / "README.txt").write_text("exported by a PACS\n")
    return tmp_path


def test_find_series_groups_and_classifies(study):
    scan = scan_dicom_folder(study)

    by_description = {s.description: s for s in scan.series}
    assert sorted(by_description) == ["CT LOCALIZER", "CT MPR", "CT PLAIN THICK", "CT PLAIN THIN", "CT SAG"]
    assert by_description["CT LOCALIZER"].is_localizer and not by_description["CT LOCALIZER"].is_axial
    assert by_description["CT MPR"].is_derived and by_description["CT MPR"].n_slices == 9
    assert not by_description["CT SAG"].is_axial
    thin = by_description["CT PLAIN THIN"]
    assert (thin.is_axial, thin.is_localizer, thin.is_derived) == (True, False, False)
    assert thin.n_slices == 6 and thin.slice_thickness == 2.5 and thin.modality == "CT"
    assert thin.orientation == AXIAL
    assert [p.name for p in scan.skipped_files] == ["README.txt"]
    assert scan.skipped_files[next(iter(scan.skipped_files))] == "not a DICOM file"


def test_default_rules_choose_the_thin_axial_original_series(study):
    chosen = select_series(find_series(study))
    assert chosen.description == "CT PLAIN THIN"

    image, metadata = read_dicom_series(study)
    assert metadata["series_description"] == "CT PLAIN THIN"
    assert metadata["series_found"] == 5 and metadata["skipped_files"] == 1
    assert image.GetSize() == (32, 32, 6)


def test_description_pattern_and_rule_overrides(study):
    series = find_series(study)
    assert select_series(series, {"description_pattern": "plain thick"}).description == "CT PLAIN THICK"
    assert select_series(series, {"reject_derived": False}).description == "CT MPR"
    assert select_series(series, {"axial_only": False, "reject_derived": False}).description == "CT SAG"


def test_prefer_thinnest(tmp_path):
    write_ct_series(tmp_path / "a", stored_volume(6), description="A", slice_step=2.5, slice_thickness=2.5)
    write_ct_series(tmp_path / "b", stored_volume(4), description="B", slice_step=1.0, slice_thickness=1.0)
    series = find_series(tmp_path)
    assert select_series(series).description == "A"
    assert select_series(series, {"prefer": ["thinnest", "most_slices"]}).description == "B"


def test_no_matching_series_lists_every_candidate_and_reason(study):
    with pytest.raises(SeriesSelectionError) as excinfo:
        select_series(find_series(study), {"description_pattern": "SOFT TISSUE"})
    message = str(excinfo.value)
    assert "'CT LOCALIZER' (1 images" in message and "localizer" in message
    assert "'CT MPR'" in message and "derived image" in message
    assert "'CT SAG'" in message and "not axial" in message
    assert "'CT PLAIN THIN'" in message and "does not match 'SOFT TISSUE'" in message
    assert excinfo.value.path == str(study / "Unknown Study")


def test_invalid_config_keys_are_refused(study):
    with pytest.raises(ValueError, match="unknown series rules key"):
        select_series(find_series(study), {"description": "THIN"})
    with pytest.raises(ValueError, match="unknown read config key"):
        read_dicom_series(study, {"padding": -1000})
    with pytest.raises(ValueError, match="missing_slices"):
        read_dicom_series(study, {"missing_slices": "ignore"})


# ----------------------------------------------------------------------------------------------
# Missing slices and gantry tilt


def test_missing_slice_is_rejected_by_default(tmp_path):
    stored = stored_volume(7)
    paths = write_ct_series(tmp_path, stored)
    paths[3].unlink()

    with pytest.raises(GeometryError, match=r"1 missing slice.*gap\(s\) of 5 mm after CT000002.dcm") as excinfo:
        read_dicom_series(tmp_path)
    assert excinfo.value.path == str(tmp_path)


def test_missing_slices_resampled_onto_regular_grid(tmp_path):
    stored = stored_volume(8)
    paths = write_ct_series(tmp_path, stored)
    paths[3].unlink()
    paths[4].unlink()

    image, metadata = read_dicom_series(tmp_path, {"missing_slices": "resample"})

    # Slices 3 and 4 are interpolated linearly between slices 2 and 5; the stored values are
    # linear in z, so the interpolation restores them exactly.
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), stored - 1024.0, atol=1e-3)
    assert image.GetSpacing()[2] == pytest.approx(2.5)
    assert metadata["missing_slices"] == 2 and metadata["resampled"] is True
    assert "2 missing slice(s)" in metadata["findings"][0]


def test_irregular_spacing_below_missing_threshold_is_interpolated(tmp_path):
    stored = stored_volume(5)
    positions = axial_positions(5, step=2.0)
    positions[2] = positions[2] + np.array([0.0, 0.0, 0.6])  # gaps 2.0, 2.6, 1.4, 2.0
    write_ct_series(tmp_path, stored, positions=positions)

    image, metadata = read_dicom_series(tmp_path)

    assert metadata["missing_slices"] == 0 and metadata["irregular_spacing"] is True
    assert image.GetSize()[2] == 5 and image.GetSpacing()[2] == pytest.approx(2.0)
    # Regular slice 2 (z = 4 mm) lies 0.4/2.6 of the way from slice 1 (2 mm) to slice 2 (4.6 mm).
    expected = stored[1] + (stored[2] - stored[1]) * (2.0 / 2.6) - 1024.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(image)[2], expected, atol=1e-3)


def hu_field(point: np.ndarray) -> np.ndarray:
    """HU as a linear function of the LPS position; linear resampling reproduces it exactly."""
    return 200.0 + 3.0 * point[..., 0] + 2.0 * point[..., 1] + 4.0 * point[..., 2]


def write_linear_series(folder: Path, row, col, positions) -> np.ndarray:
    """A series whose stored values sample :func:`hu_field` at each voxel's physical position.

    Returns:
        The 4x4 matrix mapping a source voxel index (i, j, k, 1) to its LPS position.
    """
    row, col = np.asarray(row, dtype=float), np.asarray(col, dtype=float)
    j, i = np.mgrid[: SHAPE[0], : SHAPE[1]]
    stored = np.stack([
        np.rint(hu_field(p + i[..., None] * PIXEL_SPACING[1] * row + j[..., None] * PIXEL_SPACING[0] * col) + 1024)
        for p in positions
    ]).astype(np.int16)
    write_ct_series(folder, stored, positions=positions, orientation=(*row, *col), pixel_spacing=PIXEL_SPACING)
    index_to_lps = np.eye(4)
    index_to_lps[:3, :3] = np.column_stack([row * PIXEL_SPACING[1], col * PIXEL_SPACING[0],
                                            (positions[-1] - positions[0]) / (len(positions) - 1)])
    index_to_lps[:3, 3] = positions[0]
    return index_to_lps


def assert_samples_hu_field(image: sitk.Image, index_to_lps: np.ndarray, n_slices: int) -> None:
    """Voxels inside the source stack equal hu_field at their position (stored values were rounded).

    Only points between the source voxel centres count: ITK extrapolates the half voxel beyond
    the outermost centres with the nearest value.
    """
    points = physical_points(image)
    source_index = (np.linalg.inv(index_to_lps)[:3] @ np.concatenate(
        [points, np.ones(points.shape[:-1] + (1,))], axis=-1)[..., None])[..., 0]
    upper = np.array([SHAPE[1] - 1, SHAPE[0] - 1, n_slices - 1])
    inside = np.all((source_index >= -1e-6) & (source_index <= upper + 1e-6), axis=-1)
    assert inside.mean() > 0.5
    volume = sitk.GetArrayFromImage(image)
    np.testing.assert_allclose(volume[inside], hu_field(points)[inside], atol=0.51)
    # Beyond half a voxel outside the stack, the air value fills the grid.
    far_outside = np.any((source_index < -0.5 - 1e-3) | (source_index > upper + 0.5 + 1e-3), axis=-1)
    assert np.all(volume[far_outside] == -1024.0)


def tilted_series(folder: Path, tilt_deg: float, n: int = 8, step: float = 3.0) -> np.ndarray:
    """A gantry-tilted stack: image planes tilted about x, positions moving along the table (z)."""
    t = math.radians(tilt_deg)
    origin = np.array([-10.0, -12.0, 40.0])
    positions = [origin + np.array([0.0, 0.0, k * step]) for k in range(n)]
    return write_linear_series(folder, (1.0, 0.0, 0.0), (0.0, math.cos(t), math.sin(t)), positions)


def test_gantry_tilt_is_detected_and_resampled_onto_orthogonal_grid(tmp_path):
    index_to_lps = tilted_series(tmp_path, 20.0)

    image, metadata = read_dicom_series(tmp_path)

    assert metadata["gantry_tilt_deg"] == pytest.approx(20.0, abs=0.01)
    assert metadata["resampled"] is True and "gantry tilt of 20.00 degrees" in metadata["findings"][0]
    assert image.GetDirection() == tuple(np.eye(3).ravel())
    np.testing.assert_allclose(image.GetSpacing(), (0.6, 0.8, 3.0))
    assert_samples_hu_field(image, index_to_lps, 8)


def test_gantry_tilt_rejected_when_configured(tmp_path):
    tilted_series(tmp_path, 12.0)
    with pytest.raises(GeometryError, match="gantry tilt of 12.00 degrees") as excinfo:
        read_dicom_series(tmp_path, {"gantry_tilt": "reject"})
    assert excinfo.value.path == str(tmp_path)


def test_gantry_tilt_tag_alone_is_reported(tmp_path):
    write_ct_series(tmp_path, stored_volume(), extra={"GantryDetectorTilt": -7.5})

    with pytest.raises(GeometryError, match="7.50 degrees .from GantryDetectorTilt"):
        read_dicom_series(tmp_path, {"gantry_tilt": "reject"})
    image, metadata = read_dicom_series(tmp_path)
    assert metadata["gantry_tilt_deg"] == 7.5 and metadata["resampled"] is False
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), stored_volume() - 1024.0)


def test_duplicate_positions_and_mixed_stacks_are_geometry_errors(tmp_path):
    positions = axial_positions(4)
    positions[2] = positions[1]
    write_ct_series(tmp_path / "dup", stored_volume(4), positions=positions)
    with pytest.raises(GeometryError, match="same slice position"):
        read_dicom_series(tmp_path / "dup")

    positions = axial_positions(5)
    positions[2] = positions[2] + np.array([5.0, 0.0, 0.0])
    write_ct_series(tmp_path / "jump", stored_volume(5), positions=positions)
    with pytest.raises(GeometryError, match="off the line") as excinfo:
        read_dicom_series(tmp_path / "jump")
    assert excinfo.value.path.endswith("CT000002.dcm")


# ----------------------------------------------------------------------------------------------
# Transfer syntaxes

LOSSY = {pydicom.uid.JPEGBaseline8Bit: 2.0, pydicom.uid.JPEG2000: 2.0}


@pytest.mark.parametrize("syntax", list(SUPPORTED_TRANSFER_SYNTAXES), ids=lambda s: pydicom.uid.UID(s).name)
def test_supported_transfer_syntaxes_decode_to_the_same_hu(tmp_path, syntax):
    if syntax == pydicom.uid.JPEGBaseline8Bit:
        stored, options = ((stored_volume(3) - 1000) // 2).astype(np.uint8), {"intercept": 0.0}
    elif syntax == pydicom.uid.JPEG2000:
        stored, options = stored_volume(3).astype(np.uint16), {}
    else:
        stored = stored_volume(3)
        stored[:, fov_mask()] = -2000
        options = {"slope": 2.0, "intercept": -1024.0, "padding_value": -2000}
    write_ct_series(tmp_path / "plain", stored, **options)
    write_ct_series(tmp_path / "encoded", stored, transfer_syntax=syntax, **options)
    assert pydicom.dcmread(tmp_path / "encoded" / "CT000000.dcm").file_meta.TransferSyntaxUID == syntax

    reference, _ = read_dicom_series(tmp_path / "plain")
    image, metadata = read_dicom_series(tmp_path / "encoded")

    assert metadata["transfer_syntax"] == pydicom.uid.UID(syntax).name
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference),
                               atol=LOSSY.get(syntax, 0.0))
    assert image.GetOrigin() == reference.GetOrigin() and image.GetSpacing() == reference.GetSpacing()


def test_rle_series_decodes_to_exact_hu(tmp_path):
    stored = stored_volume()
    stored[:, fov_mask()] = -2000
    write_ct_series(tmp_path, stored, transfer_syntax=pydicom.uid.RLELossless, slope=1.0,
                    intercept=-1024.0, padding_value=-2000)

    image, metadata = read_dicom_series(tmp_path)

    expected = stored - 1024.0
    expected[:, fov_mask()] = -1024.0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
    assert metadata["transfer_syntax"] == "RLE Lossless"


# ----------------------------------------------------------------------------------------------
# Bad input


def test_truncated_pixel_data_names_the_file(tmp_path):
    paths = write_ct_series(tmp_path, stored_volume())
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 700])

    with pytest.raises(InputReadError, match="truncated") as excinfo:
        find_series(tmp_path)
    assert excinfo.value.path == str(paths[2])


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # pydicom, on the truncated RLE file
def test_truncated_header_and_compressed_files_name_the_file(tmp_path):
    paths = write_ct_series(tmp_path / "header", stored_volume())
    paths[1].write_bytes(paths[1].read_bytes()[:400])
    with pytest.raises(InputReadError, match="truncated or corrupt") as excinfo:
        read_dicom_series(tmp_path / "header")
    assert excinfo.value.path == str(paths[1])

    paths = write_ct_series(tmp_path / "rle", stored_volume(), transfer_syntax=pydicom.uid.RLELossless)
    paths[4].write_bytes(paths[4].read_bytes()[:-200])
    with pytest.raises(InputReadError) as excinfo:
        read_dicom_series(tmp_path / "rle")
    assert excinfo.value.path == str(paths[4])


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputReadError, match="folder is empty") as excinfo:
        find_series(tmp_path / "empty")
    assert excinfo.value.path == str(tmp_path / "empty")
    with pytest.raises(InputReadError, match="does not exist"):
        read_dicom_series(tmp_path / "nowhere")


def test_folder_with_only_non_image_files_names_them(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4\n" + bytes(300))
    report = pydicom.Dataset()
    report.file_meta = pydicom.dataset.FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = pydicom.uid.BasicTextSRStorage
    report.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    report.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    report.SOPClassUID = pydicom.uid.BasicTextSRStorage
    report.Modality = "SR"
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)

    with pytest.raises(InputReadError) as excinfo:
        read_dicom_series(tmp_path)
    message = str(excinfo.value)
    assert "no DICOM image among 3 files" in message
    assert "notes.txt (not a DICOM file)" in message and "scan.pdf (not a DICOM file)" in message
    assert "report.dcm (DICOM without pixel data (Basic Text SR Storage))" in message


def test_inconsistent_slice_size_names_the_file(tmp_path):
    series_uid, study_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    positions = axial_positions(5)
    write_ct_series(tmp_path, stored_volume(4), positions=positions[:4], series_uid=series_uid, study_uid=study_uid)
    odd = write_ct_series(tmp_path, stored_volume(1)[:, :30, :], positions=positions[4:], series_uid=series_uid,
                          study_uid=study_uid, filenames=["CT000004.dcm"])[0]

    with pytest.raises(InputReadError, match="slice size 32x30 differs from the series' 32x32") as excinfo:
        read_dicom_series(tmp_path)
    assert excinfo.value.path == str(odd)


# ----------------------------------------------------------------------------------------------
# Metadata safety


def test_metadata_holds_safe_tags_and_no_identifiers(tmp_path):
    paths = write_ct_series(tmp_path, stored_volume())

    _, metadata = read_dicom_series(tmp_path)

    assert metadata["modality"] == "CT" and metadata["series_description"] == "CT PLAIN THIN"
    assert metadata["kvp"] == 120.0 and metadata["slice_thickness_mm"] == 2.5
    assert metadata["manufacturer"] == "Synthetic Scanner Co" and metadata["convolution_kernel"] == "H30s"
    assert (metadata["window_center"], metadata["window_width"]) == (40.0, 400.0)
    assert metadata["transfer_syntax"] == "Explicit VR Little Endian"
    text = json.dumps(metadata)  # also proves the dict is JSON-serialisable
    ds = pydicom.dcmread(paths[0])
    secrets = [*PATIENT_TAGS.values(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
               ds.FrameOfReferenceUID, pydicom.uid.ExplicitVRLittleEndian, "Doe"]
    for secret in secrets:
        assert str(secret) not in text
    assert not any("patient" in key.lower() or "uid" in key.lower() for key in metadata)


def test_series_info_label_and_to_canonical_identity(tmp_path):
    write_ct_series(tmp_path, stored_volume(3))
    info = find_series(tmp_path)[0]
    assert isinstance(info, SeriesInfo)
    assert info.label() == f"'CT PLAIN THIN' (3 images in {tmp_path})"

    image = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    canonical, resampled = to_canonical(image)
    assert resampled is False and canonical.GetSize() == (4, 5, 6)
    assert DEFAULT_READ_CONFIG["missing_slices"] == "reject"


def test_oblique_orientation_is_resampled_to_canonical(tmp_path):
    t = math.radians(10.0)
    row, col = (math.cos(t), math.sin(t), 0.0), (-math.sin(t), math.cos(t), 0.0)  # rotated about z
    index_to_lps = write_linear_series(tmp_path, row, col, axial_positions(6, orientation=(*row, *col)))

    image, metadata = read_dicom_series(tmp_path)

    assert image.GetDirection() == tuple(np.eye(3).ravel())
    assert metadata["resampled"] is True and metadata["gantry_tilt_deg"] == 0.0
    assert "oblique" in metadata["findings"][0]
    assert_samples_hu_field(image, index_to_lps, 6)
