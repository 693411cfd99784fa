"""Write a synthetic CT study the way a PACS export delivers it: one folder per series, one file
per slice, int16 stored values with a rescale to HU, padding outside the reconstruction circle,
window presets and identifying patient tags (which preprocessing must strip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medgan_common.atomic import atomic_write_with
from preprocessing.demo.grid import Grid

RESCALE_INTERCEPT = -1024.0
RESCALE_SLOPE = 1.0
#: Stored value outside the reconstruction circle (HU -3024, as many scanners write).
PIXEL_PADDING_VALUE = -2000
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"

_SURNAMES = ["SMITH", "JOHNSON", "GARCIA", "NGUYEN", "MUELLER", "ROSSI", "KOWALSKI", "OKAFOR", "TANAKA",
             "SILVA", "DUBOIS", "ANDERSSON", "PATEL", "MURPHY", "NOVAK", "HANSEN"]
_GIVEN = ["JOHN", "MARIA", "WEI", "FATIMA", "PETER", "ANNA", "LUCA", "AMARA", "HIROSHI", "SOFIA", "JAMES",
          "INGRID", "RAVI", "NORA", "TOMAS", "ELENA"]


@dataclass
class StudyIdentity:
    """Identifying and descriptive tags of one synthetic CT study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    accession: str
    study_date: str
    study_time: str
    study_uid: str
    frame_of_reference_uid: str
    institution: str = "ST ELSEWHERE GENERAL HOSPITAL"
    referring_physician: str = "HOUSE^GREGORY"

    @classmethod
    def random(cls, rng: np.random.Generator, uid_seed: str) -> "StudyIdentity":
        """Realistic (fictitious) patient tags; UIDs derived from ``uid_seed`` so reruns are identical."""
        year = int(rng.integers(1940, 2000))
        study_year = int(rng.integers(2019, 2025))
        return cls(
            patient_name=f"{_SURNAMES[rng.integers(len(_SURNAMES))]}^{_GIVEN[rng.integers(len(_GIVEN))]}",
            patient_id=f"MRN{int(rng.integers(10**6, 10**7))}",
            birth_date=f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            sex=str(rng.choice(["F", "M"])),
            age=f"{study_year - year:03d}Y",
            accession=f"ACC{int(rng.integers(10**7, 10**8))}",
            study_date=f"{study_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            study_time=f"{int(rng.integers(7, 20)):02d}{int(rng.integers(0, 60)):02d}00",
            study_uid=generate_uid(entropy_srcs=[uid_seed, "study"]),
            frame_of_reference_uid=generate_uid(entropy_srcs=[uid_seed, "frame"]),
        )


def _base_dataset(identity: StudyIdentity, sop_uid: str, series_uid: str, series_number: int,
                  description: str, image_type: list[str]) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = image_type
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = identity.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = identity.study_time
    ds.AccessionNumber = identity.accession
    ds.Modality = "CT"
    ds.Manufacturer = "DEMO MEDICAL SYSTEMS"
    ds.ManufacturerModelName = "SYNTH CT 64"
    ds.InstitutionName = identity.institution
    ds.ReferringPhysicianName = identity.referring_physician
    ds.StudyDescription = "CT HEAD PLAIN"
    ds.SeriesDescription = description
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.birth_date
    ds.PatientSex = identity.sex
    ds.PatientAge = identity.age
    ds.BodyPartExamined = "HEAD"
    ds.KVP = "120"
    ds.ConvolutionKernel = "H30s"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = f"{RESCALE_SLOPE:g}"
    ds.RescaleType = "HU"
    return ds


def hu_to_stored(hu: np.ndarray, padding: np.ndarray | None = None) -> np.ndarray:
    """HU to int16 stored values (``(HU - intercept) / slope``), padding where ``padding`` is True."""
    stored = np.clip(np.rint((hu - RESCALE_INTERCEPT) / RESCALE_SLOPE), -32768, 32767).astype(np.int16)
    if padding is not None:
        stored[padding] = PIXEL_PADDING_VALUE
    return stored


def write_axial_series(folder: Path, hu: np.ndarray, grid: Grid, identity: StudyIdentity, *, description: str,
                       series_number: int, uid_seed: str, window: tuple[float, float] = (40.0, 80.0)) -> int:
    """Write an axial CT series, one file per slice (``CT000000.dcm`` …).

    Args:
        folder: series folder.
        hu: volume in HU, indexed ``[column, row, slice]`` on ``grid`` (identity direction).
        grid: geometry of the series.
        identity: study tags.
        description: SeriesDescription.
        series_number: SeriesNumber.
        uid_seed: makes the series and instance UIDs reproducible.
        window: WindowCenter, WindowWidth.

    Returns:
        Number of files written.
    """
    series_uid = generate_uid(entropy_srcs=[uid_seed, description, "series"])
    circle = _outside_reconstruction_circle(grid)
    for k in range(grid.shape[2]):
        sop_uid = generate_uid(entropy_srcs=[uid_seed, description, str(k)])
        ds = _base_dataset(identity, sop_uid, series_uid, series_number, description, ["ORIGINAL", "PRIMARY", "AXIAL"])
        position = grid.index_to_world(np.array([0.0, 0.0, k]))
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.SliceThickness = f"{grid.spacing[2]:g}"
        ds.SpacingBetweenSlices = f"{grid.spacing[2]:g}"
        ds.PixelSpacing = [f"{grid.spacing[1]:g}", f"{grid.spacing[0]:g}"]
        ds.Rows, ds.Columns = grid.shape[1], grid.shape[0]
        ds.PixelPaddingValue = PIXEL_PADDING_VALUE
        ds.WindowCenter = f"{window[0]:g}"
        ds.WindowWidth = f"{window[1]:g}"
        # DICOM pixel rows run along +y (posterior), columns along +x (left).
        ds.PixelData = hu_to_stored(hu[:, :, k].T, circle.T).tobytes()
        _save(ds, folder / f"CT{k:06d}.dcm")
    return grid.shape[2]


def write_localizer(folder: Path, hu: np.ndarray, grid: Grid, identity: StudyIdentity, *, series_number: int,
                    uid_seed: str) -> int:
    """Write a scout series: a frontal and a lateral projection radiograph (ImageType …\\LOCALIZER).

    Returns:
        Number of files written (2).
    """
    series_uid = generate_uid(entropy_srcs=[uid_seed, "localizer", "series"])
    attenuation = np.clip(hu + 1000.0, 0.0, None)
    views = {
        # (projection axis, in-plane axis, row direction, column direction)
        "AP": (1, 0, ["1", "0", "0"], ["0", "0", "-1"]),
        "LAT": (0, 1, ["0", "1", "0"], ["0", "0", "-1"]),
    }
    for n, (view, (project_axis, column_axis, row_dir, col_dir)) in enumerate(views.items()):
        projection = attenuation.mean(axis=project_axis)  # [column_axis, z]
        image_hu = projection / projection.max() * 2000.0 - 1000.0
        image = image_hu[:, ::-1].T  # rows from head (top) to feet
        sop_uid = generate_uid(entropy_srcs=[uid_seed, "localizer", view])
        ds = _base_dataset(identity, sop_uid, series_uid, series_number, f"TOPOGRAM {view}",
                           ["ORIGINAL", "PRIMARY", "LOCALIZER"])
        top = grid.index_to_world(np.array([0.0, 0.0, grid.shape[2] - 1.0]))
        top[project_axis] = grid.index_to_world(np.array(grid.shape, dtype=float) / 2)[project_axis]
        ds.InstanceNumber = n + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in top]
        ds.ImageOrientationPatient = row_dir + col_dir
        ds.PixelSpacing = [f"{grid.spacing[2]:g}", f"{grid.spacing[column_axis]:g}"]
        ds.SliceThickness = f"{grid.spacing[column_axis]:g}"
        ds.Rows, ds.Columns = image.shape
        ds.WindowCenter, ds.WindowWidth = "0", "2000"
        ds.PixelData = hu_to_stored(image).tobytes()
        _save(ds, folder / f"CT{n:06d}.dcm")
    return len(views)


def _outside_reconstruction_circle(grid: Grid) -> np.ndarray:
    """In-plane mask of the pixels outside the scanner's circular reconstruction field of view."""
    i = np.arange(grid.shape[0]) - (grid.shape[0] - 1) / 2
    j = np.arange(grid.shape[1]) - (grid.shape[1] - 1) / 2
    radius = min(grid.shape[0] * grid.spacing[0], grid.shape[1] * grid.spacing[1]) / 2
    return (i[:, None] * grid.spacing[0]) ** 2 + (j[None, :] * grid.spacing[1]) ** 2 > radius**2


def _save(ds: Dataset, path: Path) -> None:
    atomic_write_with(path, lambda tmp: pydicom.dcmwrite(tmp, ds, enforce_file_format=True))
