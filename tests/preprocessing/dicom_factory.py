"""Write small synthetic CT DICOM series for tests.

Every slice carries patient identifiers (:data:`PATIENT_TAGS`) so that tests can check they never
reach outputs.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, generate_uid

PATIENT_TAGS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PID-4711-SECRET",
    "PatientBirthDate": "19610415",
    "AccessionNumber": "ACC-99821",
    "InstitutionName": "Saint Example Hospital",
}

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# How each compressed transfer syntax is produced: pydicom's own RLE encoder, SimpleITK's GDCM
# writer, or Pillow's codecs (then encapsulated by pydicom).
_GDCM_COMPRESSORS = {pydicom.uid.JPEGLosslessSV1: "JPEG", pydicom.uid.JPEG2000Lossless: "JPEG2000"}
_PILLOW_FORMATS = {
    pydicom.uid.JPEGBaseline8Bit: ("JPEG", {"quality": 95}),
    pydicom.uid.JPEG2000: ("JPEG2000", {"irreversible": True, "quality_mode": "rates", "quality_layers": [4]}),
}


def axial_positions(n: int, origin: Sequence[float] = (-12.0, -20.0, 30.0), step: float = 2.5,
                    orientation: Sequence[float] = AXIAL) -> list[np.ndarray]:
    """Positions of ``n`` slices ``step`` mm apart along the normal of ``orientation``."""
    normal = np.cross(orientation[:3], orientation[3:])
    return [np.asarray(origin, dtype=float) + k * step * normal for k in range(n)]


def ct_dataset(
    stored: np.ndarray,
    position: Sequence[float],
    *,
    series_uid: str,
    study_uid: str,
    instance_number: int,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = (0.8, 0.6),
    description: str = "CT PLAIN THIN",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    slope: float = 1.0,
    intercept: float = -1024.0,
    padding_value: int | None = None,
    slice_thickness: float = 2.5,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """One CT image (Explicit VR Little Endian) holding the 2D array ``stored``."""
    signed = np.issubdtype(stored.dtype, np.signedinteger)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = generate_uid()
    for keyword, value in PATIENT_TAGS.items():
        setattr(ds, keyword, value)
    ds.Modality = "CT"
    ds.Manufacturer = "Synthetic Scanner Co"
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    ds.KVP = 120
    ds.ConvolutionKernel = "H30s"
    ds.SliceThickness = slice_thickness
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if padding_value is not None:
        ds.add_new(0x00280120, "SS" if signed else "US", int(padding_value))  # PixelPaddingValue
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<")).tobytes()
    return ds


def compress(ds: Dataset, transfer_syntax: str) -> None:
    """Re-encode ``ds``'s pixel data in ``transfer_syntax`` (in place)."""
    syntax = UID(transfer_syntax)
    stored = ds.pixel_array
    if syntax == ExplicitVRLittleEndian:
        return
    if syntax == ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()
    elif not syntax.is_compressed:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == pydicom.uid.RLELossless:
        ds.compress(syntax)
    elif syntax in _GDCM_COMPRESSORS:
        ds.PixelData = encapsulate([_gdcm_frame(stored, _GDCM_COMPRESSORS[syntax], syntax)])
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax in _PILLOW_FORMATS:
        fmt, options = _PILLOW_FORMATS[syntax]
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, format=fmt, **options)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == pydicom.uid.JPEGBaseline8Bit:
            ds.PhotometricInterpretation = "MONOCHROME2"
    else:
        raise ValueError(f"no encoder for {syntax.name} in the test factory")


def _gdcm_frame(stored: np.ndarray, compressor: str, syntax: UID) -> bytes:
    """Encode one frame with SimpleITK's GDCM writer and return the codestream."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "frame.dcm")
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(path)
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
        writer.Execute(sitk.GetImageFromArray(stored[None]))
        encoded = pydicom.dcmread(path)
        assert encoded.file_meta.TransferSyntaxUID == syntax, encoded.file_meta.TransferSyntaxUID
        return next(pydicom.encaps.generate_frames(encoded.PixelData, number_of_frames=1))


def write_ct_series(
    folder: str | os.PathLike,
    stored: np.ndarray,
    *,
    positions: Sequence[Sequence[float]] | None = None,
    filenames: Sequence[str] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_uid: str | None = None,
    study_uid: str | None = None,
    slice_step: float = 2.5,
    **dataset_options: Any,
) -> list[Path]:
    """Write the volume ``stored`` [z, y, x] as one series, one file per slice, in ``folder``.

    Args:
        folder: destination (created).
        stored: stored pixel values; its dtype sets BitsAllocated and PixelRepresentation.
        positions: ImagePositionPatient per slice; defaults to :func:`axial_positions`.
        filenames: file name per slice; defaults to ``CT000000.dcm``...
        transfer_syntax: encoding of the pixel data.
        series_uid, study_uid: generated when omitted.
        slice_step: slice spacing for the default positions.
        **dataset_options: passed to :func:`ct_dataset`.

    Returns:
        The written paths, in slice order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    if positions is None:
        positions = axial_positions(
            len(stored), step=slice_step, orientation=dataset_options.get("orientation", AXIAL)
        )
    filenames = filenames or [f"CT{k:06d}.dcm" for k in range(len(stored))]
    paths = []
    for k, (image, position, name) in enumerate(zip(stored, positions, filenames)):
        ds = ct_dataset(image, position, series_uid=series_uid, study_uid=study_uid,
                        instance_number=k + 1, **dataset_options)
        compress(ds, transfer_syntax)
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths
