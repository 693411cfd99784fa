"""Write a translated volume as a DICOM series clearly marked as synthetic.

A synthetic image must never pass for an acquired one when it reaches a PACS or a viewer. Every
file is therefore marked ``ImageType = DERIVED\\SECONDARY``, carries a ``SeriesDescription``
containing ``SYNTHETIC`` (e.g. ``"SYNTHETIC T2 FROM CT"``) and a ``DerivationDescription`` /
``ImageComments`` saying how it was made (with the model's name and version when given), and new
Series and SOP Instance UIDs.

Two uses:

- **A cohort's outputs** (no source series): new Study and Frame of Reference UIDs too, and no
  patient identifier: the patient tags are empty unless the caller passes a pseudonymised patient ID.
- **A patient's scan translated at a site** (``source`` = the header of the translated DICOM series):
  the series goes into the source's study, so that a PACS files it beside the source: the same
  Study Instance UID, Frame of Reference UID (the output lies on the source's grid) and study
  attributes, and the patient module copied from the source (it is the hospital's own patient)
  unless ``deidentify`` is set, which blanks it and sets ``PatientIdentityRemoved``. The new UIDs
  are derived from the source series, the model and the description
  (``generate_uid(entropy_srcs=...)``) and the dates are the source study's, so translating the
  same series twice with the same model gives byte-identical files.

Geometry comes from the SimpleITK image: one file per slice along its third index axis, with
ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness and SpacingBetweenSlices,
so that ``SimpleITK.ImageSeriesReader`` (GDCM) reads back the same grid. A left-handed direction
(slices stacked against the row x column normal) cannot be stored as is, because readers sort the
slices along the normal; such a volume is flipped along its slice axis first (same physical image).

Values: CT as signed 16-bit integers with ``RescaleSlope`` 1 and ``RescaleIntercept`` -1024
(``RescaleType`` HU), so stored values are HU + 1024 rounded to the nearest integer; MR (no physical
unit, e.g. [-1, 1] network scale) as unsigned 16-bit integers spanning the volume's range through a
slope and intercept, read back to within half a slope.

The series is written into a temporary sibling folder and renamed into place when complete, so a
killed run never leaves a partial series under the final name.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

import modality_translation


CT_RESCALE_INTERCEPT = -1024.0
DERIVATION_DESCRIPTION = "Synthetic image computed by a neural network (modality translation); not acquired"
#: Patient module attributes copied from a source series (blank with ``deidentify``).
PATIENT_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "OtherPatientIDs",
                      "IssuerOfPatientID", "PatientWeight", "PatientSize")
#: General Study module attributes copied from a source series.
STUDY_ATTRIBUTES = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "StudyDescription")
_UINT16_MAX = 65535
_DIRECTION_TOLERANCE = 1e-4


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters, as precise as fits."""
    return format_number_as_ds(float(value))


def default_series_description(modality: str, source_modality: str | None = None) -> str:
    """``"SYNTHETIC T2"`` or ``"SYNTHETIC T2 FROM CT"``."""
    description = f"SYNTHETIC {modality.upper()}"
    return f"{description} FROM {source_modality.upper()}" if source_modality else description


def _right_handed(image: sitk.Image) -> sitk.Image:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
        raise ValueError(f"DICOM needs orthonormal image axes; the direction {direction.round(4).tolist()} is sheared")
    if np.linalg.det(direction) < 0:
        # Flip about the image centre: the voxels keep their physical positions, index k runs reversed.
        image = sitk.Flip(image, [False, False, True], flipAboutOrigin=False)
    return image


def _stored_values(volume: np.ndarray, is_ct: bool) -> tuple[np.ndarray, float, float]:
    """Integer pixel data and the (slope, intercept) that map it back to ``volume``."""
    if is_ct:
        slope, intercept = 1.0, CT_RESCALE_INTERCEPT
        return np.clip(np.rint(volume - intercept), -32768, 32767).astype(np.int16), slope, intercept
    low, high = float(volume.min()), float(volume.max())
    # The rescale is stored as decimal strings: encode with the values a reader will parse back.
    intercept = float(_ds(low))
    slope = float(_ds((high - intercept) / _UINT16_MAX)) if high > low else 1.0
    stored = np.clip(np.rint((volume - intercept) / slope), 0, _UINT16_MAX).astype(np.uint16)
    return stored, slope, intercept


def _copy_source_modules(ds: Dataset, source: pydicom.Dataset, deidentify: bool) -> None:
    """The study (and, unless ``deidentify``, the patient) attributes of the source series."""
    for keyword in STUDY_ATTRIBUTES:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    if "SpecificCharacterSet" in source:
        ds.SpecificCharacterSet = source.SpecificCharacterSet  # names may use the source's character set
    if deidentify:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "patient module left blank by the translation (--deidentify)"
        return
    for keyword in PATIENT_ATTRIBUTES:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)


def _replace_folder(staging: Path, output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists():
        leftovers = [p.name for p in output_dir.iterdir() if p.suffix.lower() != ".dcm"]
        if not overwrite or leftovers:
            listed = ", ".join(sorted(leftovers)[:5])
            reason = "overwrite=False" if not overwrite else f"it holds files that are not DICOM ({listed})"
            raise FileExistsError(f"{output_dir}: the DICOM output folder exists and is not replaced ({reason})")
        previous = Path(tempfile.mkdtemp(prefix=f".old-{output_dir.name}-", dir=output_dir.parent))
        os.replace(output_dir, previous / output_dir.name)
        os.replace(staging, output_dir)
        shutil.rmtree(previous)
    else:
        os.replace(staging, output_dir)


def write_dicom_series(
    image: sitk.Image,
    output_dir: str | os.PathLike,
    modality: str,
    series_description: str | None = None,
    source_modality: str | None = None,
    patient_id: str | None = None,
    window: Sequence[float] | None = None,
    series_number: int = 1,
    study_instance_uid: str | None = None,
    overwrite: bool = True,
    source: pydicom.Dataset | None = None,
    deidentify: bool = False,
    model: str | None = None,
) -> list[Path]:
    """Write a 3D image as a synthetic DICOM series, one file per slice (``IM00001.dcm``...).

    Args:
        image: the translated volume (HU for CT), any orthonormal direction.
        output_dir: the series folder; replaced as a whole if it exists and holds only ``.dcm`` files.
        modality: ``"ct"`` (CT Image Storage, HU) or an MR modality (MR Image Storage).
        series_description: must contain ``SYNTHETIC``; default ``"SYNTHETIC <MODALITY> FROM <SOURCE>"``.
        source_modality: the modality the image was translated from, for the default description.
        patient_id: a pseudonymised patient ID written as PatientID and PatientName; ``None`` leaves
            the patient tags empty. Never pass a real identifier.
        window: display (center, width) in output units; default the volume's range.
        series_number: SeriesNumber.
        study_instance_uid: put the series into this (synthetic) study; default a new study.
        overwrite: replace an existing series folder.
        source: header of the DICOM series the image was translated from (on whose grid it lies):
            the output joins its study and frame of reference and copies its patient module (see
            the module docstring); ``series_number`` is then offset by the source's SeriesNumber.
        deidentify: with ``source``, leave the patient module blank instead of copying it.
        model: the model's name and version (``"pix2pix_t1_t2 0.2.0"``), written in the derivation
            description.

    Returns:
        The written files, in slice order.

    Raises:
        ValueError: a description without ``SYNTHETIC``, a non-3D image or a sheared direction.
        FileExistsError: ``output_dir`` exists and cannot be replaced.
    """
    is_ct = modality.strip().lower() == "ct"
    description = series_description or default_series_description(modality, source_modality)
    if "SYNTHETIC" not in description.upper():
        raise ValueError(f"the SeriesDescription of a synthetic series must contain 'SYNTHETIC', got {description!r}")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar 3D image, got dimension {image.GetDimension()} with "
                         f"{image.GetNumberOfComponentsPerPixel()} components")
    image = _right_handed(image)
    volume = sitk.GetArrayFromImage(image).astype(np.float64)
    stored, slope, intercept = _stored_values(volume, is_ct)
    if window is None:
        low, high = float(volume.min()), float(volume.max())
        window = ((low + high) / 2, max(high - low, 1e-3))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    spacing = image.GetSpacing()
    sop_class = CTImageStorage if is_ct else MRImageStorage
    derivation = DERIVATION_DESCRIPTION if model is None else f"{DERIVATION_DESCRIPTION}; model {model}"
    if source is not None:
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if not source.get(k)]
        if missing:
            raise ValueError(f"the source series header has no {', '.join(missing)}: cannot join its study")
        # Derived, not random, UIDs: the same source and model give the same series (reproducible outputs).
        entropy = [str(source.SeriesInstanceUID), description, derivation, str(deidentify)]
        study_uid = str(source.StudyInstanceUID)
        frame_uid = str(source.get("FrameOfReferenceUID") or generate_uid(entropy_srcs=entropy + ["frame"]))
        series_uid = generate_uid(entropy_srcs=entropy + ["series"])
        date = str(source.get("StudyDate") or "")
        time = str(source.get("StudyTime") or "")
        series_number = int(series_number) + 1000 + int(source.get("SeriesNumber") or 0)
    else:
        now = datetime.datetime.now()
        date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        entropy = None
        study_uid = study_instance_uid or generate_uid()
        series_uid, frame_uid = generate_uid(), generate_uid()

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{output_dir.name}-", dir=output_dir.parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(staging, 0o777 & ~mask)  # mkdtemp makes 0700 folders; outputs are shared with colleagues
    names = []
    try:
        for k in range(stored.shape[0]):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = sop_class
            instance_uid = generate_uid() if entropy is None else generate_uid(entropy_srcs=entropy + [f"instance {k}"])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = instance_uid
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.SOPClassUID = sop_class
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.Modality = "CT" if is_ct else "MR"
            ds.SeriesDescription = description
            ds.DerivationDescription = derivation[:1024]
            ds.ImageComments = f"{derivation}; not for diagnostic use"
            ds.BurnedInAnnotation = "NO"
            ds.Manufacturer = "medgan-translate"
            ds.SoftwareVersions = modality_translation.__version__
            ds.PatientName = patient_id or ""
            ds.PatientID = patient_id or ""
            ds.PatientBirthDate = ds.PatientSex = ""
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.StudyID = ds.AccessionNumber = ds.ReferringPhysicianName = ds.PositionReferenceIndicator = ""
            if source is not None:
                _copy_source_modules(ds, source, deidentify)
            ds.SeriesNumber, ds.InstanceNumber = int(series_number), k + 1
            if not is_ct:
                # Type 1 attributes of the MR Image module; "RM" (research mode) as nothing was acquired.
                ds.ScanningSequence, ds.SequenceVariant = "RM", "NONE"
                ds.ScanOptions = ds.MRAcquisitionType = ds.EchoTime = ds.EchoTrainLength = ""
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            ds.ImagePositionPatient = [_ds(v) for v in position]
            ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
            ds.SliceLocation = _ds(float(np.dot(normal, position)))
            ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
            ds.SliceThickness = ds.SpacingBetweenSlices = _ds(spacing[2])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if is_ct else 0
            ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
            ds.RescaleType = "HU" if is_ct else "US"
            ds.WindowCenter, ds.WindowWidth = _ds(window[0]), _ds(window[1])
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            name = f"IM{k + 1:05d}.dcm"
            pydicom.dcmwrite(staging / name, ds, enforce_file_format=True)
            names.append(name)
        _replace_folder(staging, output_dir, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return [output_dir / name for name in names]
