"""Read one CT series from a folder of DICOM files into a canonical SimpleITK volume in HU.

A hospital export holds several series per study (localizers, thin and thick reconstructions,
derived reformats) mixed with non-DICOM files. This module

1. scans a folder tree and groups the DICOM images by series (:func:`scan_dicom_folder`,
   :func:`find_series`),
2. chooses one series by configurable rules (:func:`select_series`),
3. reads it (:func:`read_dicom_series`): sorts the slices along the slice normal, converts stored
   values to HU (RescaleSlope/Intercept, PixelPaddingValue → air), checks the slice geometry for
   missing slices and gantry tilt, and returns a SimpleITK image with identity direction plus a
   metadata dict that holds only non-identifying tags.

Headers are parsed with pydicom; pixel data is decoded by pydicom where it has a decoder for the
transfer syntax and by SimpleITK's GDCM otherwise (GDCM decodes JPEG Lossless, which pydicom
cannot without optional plug-ins).
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
import pydicom.pixels
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID
from scipy.interpolate import make_interp_spline

from medgan_common.errors import GeometryError, InputReadError, SeriesSelectionError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_READ_CONFIG",
    "DEFAULT_SERIES_RULES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "DicomFolderScan",
    "SeriesInfo",
    "find_series",
    "read_dicom_series",
    "resample_to_canonical_grid",
    "scan_dicom_folder",
    "select_series",
    "to_canonical",
]

#: Transfer syntaxes verified (by the round-trip tests in ``tests/preprocessing/test_dicom.py``)
#: to decode in this environment, mapped to the decoder that handles them. Other syntaxes are
#: still attempted (pydicom first, then GDCM) but are not guaranteed.
SUPPORTED_TRANSFER_SYNTAXES: dict[str, str] = {
    pydicom.uid.ImplicitVRLittleEndian: "pydicom",
    pydicom.uid.ExplicitVRLittleEndian: "pydicom",
    pydicom.uid.DeflatedExplicitVRLittleEndian: "pydicom",
    pydicom.uid.ExplicitVRBigEndian: "pydicom",
    pydicom.uid.RLELossless: "pydicom",
    pydicom.uid.JPEGBaseline8Bit: "pydicom (Pillow)",
    pydicom.uid.JPEG2000Lossless: "pydicom (Pillow)",
    pydicom.uid.JPEG2000: "pydicom (Pillow)",
    pydicom.uid.JPEGLosslessSV1: "SimpleITK (GDCM)",
}

#: Series selection rules; every key can be overridden by the ``rules`` dict of
#: :func:`select_series` (or ``config["series_rules"]`` of :func:`read_dicom_series`).
DEFAULT_SERIES_RULES: dict[str, Any] = {
    # Modality the series must have (None: any).
    "modality": "CT",
    # Only series whose slice normal is closest to the patient's superior axis.
    "axial_only": True,
    # Localizers/scouts are projection images, not volumes.
    "reject_localizer": True,
    # Derived images (reformats, MIPs, subtractions) are not the scanner's reconstruction.
    "reject_derived": True,
    # Case-insensitive regular expression searched in SeriesDescription (None: any), e.g. "PLAIN THIN".
    "description_pattern": None,
    # Fewer slices cannot be checked for missing slices.
    "min_slices": 3,
    # Ranking of the acceptable series, first criterion first.
    "prefer": ("most_slices", "thinnest"),
}

#: Reading options of :func:`read_dicom_series`; a partial dict overrides these keys.
DEFAULT_READ_CONFIG: dict[str, Any] = {
    "series_rules": DEFAULT_SERIES_RULES,
    # "reject": raise GeometryError; "resample": interpolate onto a regular grid. Rejecting is the
    # default because interpolating across a gap invents anatomy the scanner never measured.
    "missing_slices": "reject",
    # "reject" or "resample" onto an orthogonal grid; resampling a tilted stack is an exact
    # geometric correction, so it is the default.
    "gantry_tilt": "resample",
    # HU written for padding voxels (outside the reconstruction field of view) and outside the
    # data after resampling.
    "air_value": -1024.0,
    # "float32" or "int16" (rounded and clipped).
    "dtype": "float32",
    # A gap between neighbouring slices larger than this factor times the median spacing means
    # missing slices.
    "missing_slice_factor": 1.5,
    # Relative deviation from the median spacing tolerated before the slices are interpolated
    # onto a regular grid (positions written with few decimals deviate a few percent).
    "spacing_tolerance": 0.1,
    # Angle (degrees) between the slice stacking direction and the slice normal, or
    # GantryDetectorTilt value, above which the series counts as tilted.
    "tilt_tolerance_deg": 0.1,
}

_POLICIES = ("reject", "resample")
_PREFERENCES = ("most_slices", "thinnest")
_LOCALIZER_DESCRIPTION = re.compile(r"locali[sz]er|scout|topogram|surview|scanogram", re.IGNORECASE)
_PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
# Direction cosines closer than this to the identity are taken as canonical (1e-4 rad moves a
# point 128 mm from the origin by 0.013 mm).
_DIRECTION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found on disk (headers only; no pixel data read).

    Attributes:
        series_uid: SeriesInstanceUID (for grouping only; never copied into metadata).
        description: SeriesDescription ("" when absent).
        image_type: ImageType values, upper case.
        modality: Modality ("" when absent).
        files: the series' image files, sorted by path (not by position).
        n_slices: number of image files.
        orientation: ImageOrientationPatient (6 direction cosines) most files share, or None.
        slice_thickness: SliceThickness in mm, or None.
        is_localizer: ImageType or SeriesDescription marks a localizer/scout.
        is_derived: ImageType value 1 is DERIVED.
        is_axial: the slice normal is closest to the patient's superior axis.
        folder: the deepest folder holding all files of the series.
        transfer_syntax: name of the transfer syntax of the first file.
    """

    series_uid: str
    description: str
    image_type: tuple[str, ...]
    modality: str
    files: tuple[Path, ...]
    n_slices: int
    orientation: tuple[float, ...] | None
    slice_thickness: float | None
    is_localizer: bool
    is_derived: bool
    is_axial: bool
    folder: Path
    transfer_syntax: str = ""

    def label(self) -> str:
        """Short, non-identifying description for messages: description, slice count, folder."""
        return f"'{self.description}' ({self.n_slices} images in {self.folder})"


@dataclass
class DicomFolderScan:
    """Result of :func:`scan_dicom_folder`.

    Attributes:
        root: the scanned folder.
        series: DICOM image series found, sorted by folder and description.
        skipped_files: files that hold no DICOM image (non-DICOM files, DICOMDIR, reports...),
            mapped to the reason they were skipped.
    """

    root: Path
    series: list[SeriesInfo]
    skipped_files: dict[Path, str] = field(default_factory=dict)


def scan_dicom_folder(root: str | os.PathLike) -> DicomFolderScan:
    """Group the DICOM image files under ``root`` (recursively) by series.

    Non-DICOM files and DICOM files without pixel data are skipped and listed in
    ``skipped_files``; a DICOM image file that is truncated or corrupt stops the scan, because it
    may belong to the series that would be chosen.

    Args:
        root: folder to scan.

    Returns:
        The series found and the skipped files.

    Raises:
        InputReadError: ``root`` is not a folder, is empty, holds no DICOM image, or holds a
            truncated/corrupt DICOM file (the error names that file).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputReadError(root, "not a folder" if root.exists() else "folder does not exist")
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    if not paths:
        raise InputReadError(root, "folder is empty")

    headers: dict[Path, pydicom.Dataset] = {}
    skipped: dict[Path, str] = {}
    for path in paths:
        header = _read_header(path)
        if isinstance(header, str):
            skipped[path] = header
        else:
            headers[path] = header
    if not headers:
        listing = "; ".join(f"{p.relative_to(root)} ({why})" for p, why in list(skipped.items())[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        raise InputReadError(root, f"no DICOM image among {len(paths)} files: {listing}{more}")

    groups: dict[str, list[Path]] = {}
    for path, header in headers.items():
        # Files without a SeriesInstanceUID are grouped by folder, the usual export layout.
        key = str(header.get("SeriesInstanceUID", "") or f"folder:{path.parent}")
        groups.setdefault(key, []).append(path)
    series = [_series_info(uid, files, [headers[f] for f in files]) for uid, files in groups.items()]
    series.sort(key=lambda s: (str(s.folder), s.description, s.files[0]))
    for path, why in skipped.items():
        logger.info("skipped %s: %s", path, why)
    return DicomFolderScan(root=root, series=series, skipped_files=skipped)


def find_series(root: str | os.PathLike) -> list[SeriesInfo]:
    """List the DICOM image series under ``root``; see :func:`scan_dicom_folder`.

    Args:
        root: folder to scan recursively.

    Returns:
        The series found, sorted by folder and description.

    Raises:
        InputReadError: as :func:`scan_dicom_folder`.
    """
    return scan_dicom_folder(root).series


def select_series(series: Sequence[SeriesInfo], rules: dict[str, Any] | None = None) -> SeriesInfo:
    """Choose one series by ``rules`` (keys of :data:`DEFAULT_SERIES_RULES`).

    Series failing a rule are rejected; the rest are ranked by ``rules["prefer"]`` (most slices,
    then thinnest by default), with the file path as a final, deterministic tie-break.

    Args:
        series: candidates, e.g. from :func:`find_series`.
        rules: overrides of :data:`DEFAULT_SERIES_RULES`.

    Returns:
        The chosen series.

    Raises:
        SeriesSelectionError: no candidate passes the rules; the message lists every candidate
            and why it was rejected.
        ValueError: unknown rule keys or invalid values.
    """
    rules = _merge(DEFAULT_SERIES_RULES, rules, "series rules")
    preferences = tuple(rules["prefer"])
    unknown = [p for p in preferences if p not in _PREFERENCES]
    if unknown:
        raise ValueError(f"unknown series preference(s) {unknown}; expected some of {_PREFERENCES}")
    pattern = re.compile(rules["description_pattern"], re.IGNORECASE) if rules["description_pattern"] else None

    if not series:
        raise SeriesSelectionError(None, "no DICOM series to choose from")
    accepted, rejected = [], []
    for candidate in series:
        reasons = _rejection_reasons(candidate, rules, pattern)
        if reasons:
            rejected.append((candidate, reasons))
        else:
            accepted.append(candidate)
    if not accepted:
        folder = os.path.commonpath([str(s.folder) for s in series])
        details = "; ".join(f"{s.label()}: {', '.join(why)}" for s, why in rejected)
        raise SeriesSelectionError(folder, f"no series satisfies the selection rules. Candidates: {details}")

    def rank(candidate: SeriesInfo) -> tuple:
        keys = {
            "most_slices": -candidate.n_slices,
            "thinnest": candidate.slice_thickness if candidate.slice_thickness is not None else np.inf,
        }
        return (*(keys[p] for p in preferences), str(candidate.files[0]))

    return min(accepted, key=rank)


def read_dicom_series(
    series_or_folder: SeriesInfo | str | os.PathLike, config: dict[str, Any] | None = None
) -> tuple[sitk.Image, dict[str, Any]]:
    """Read a DICOM series as a canonical (identity direction) volume in HU.

    Args:
        series_or_folder: a :class:`SeriesInfo`, or a folder to scan and select a series from
            with ``config["series_rules"]``.
        config: overrides of :data:`DEFAULT_READ_CONFIG`.

    Returns:
        ``(image, metadata)``: the volume (float32 or int16, LPS physical space, identity
        direction, spacing/origin from the DICOM geometry) and a dict of non-identifying
        information: a few acquisition tags, geometry, and findings (missing slices, gantry tilt,
        resampling). Patient identifiers and UIDs are never included.

    Raises:
        InputReadError: unreadable, truncated or inconsistent files (the error names the file).
        SeriesSelectionError: no series in the folder satisfies the rules.
        GeometryError: missing slices or gantry tilt under the "reject" policy, duplicate slice
            positions, mixed orientations or slices not on one line.
        ValueError: invalid config.
    """
    config = _merge(DEFAULT_READ_CONFIG, config, "read config")
    for key in ("missing_slices", "gantry_tilt"):
        if config[key] not in _POLICIES:
            raise ValueError(f"config[{key!r}] must be one of {_POLICIES}, got {config[key]!r}")
    if config["dtype"] not in ("float32", "int16"):
        raise ValueError(f"config['dtype'] must be 'float32' or 'int16', got {config['dtype']!r}")

    scan = None
    if isinstance(series_or_folder, SeriesInfo):
        series = series_or_folder
    else:
        scan = scan_dicom_folder(series_or_folder)
        series = select_series(scan.series, config["series_rules"])

    slices = [_read_slice(path, float(config["air_value"])) for path in series.files]
    if len(slices) < 2:
        raise InputReadError(
            series.folder, f"series {series.label()} has {len(slices)} image; a volume needs at least 2"
        )
    _check_consistent(slices)
    findings: list[str] = []
    image, geometry = _assemble_volume(slices, series, config, findings)

    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    if config["dtype"] == "int16":
        info = np.iinfo(np.int16)
        image = sitk.Cast(sitk.Clamp(sitk.Round(image), sitk.sitkFloat32, info.min, info.max), sitk.sitkInt16)

    first = slices[0].header
    metadata = {
        "modality": _text(first, "Modality"),
        "series_description": _text(first, "SeriesDescription"),
        "manufacturer": _text(first, "Manufacturer"),
        "convolution_kernel": _text(first, "ConvolutionKernel"),
        "kvp": _number(first, "KVP"),
        "slice_thickness_mm": _number(first, "SliceThickness"),
        "window_center": _number(first, "WindowCenter"),
        "window_width": _number(first, "WindowWidth"),
        "number_of_slices": len(slices),
        "transfer_syntax": UID(first.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)).name,
        "pixel_padding_voxels": int(sum(s.padding_voxels for s in slices)),
        "size": list(image.GetSize()),
        "spacing_mm": [float(v) for v in image.GetSpacing()],
        "origin_mm": [float(v) for v in image.GetOrigin()],
        "dtype": config["dtype"],
        **geometry,
        "findings": findings,
    }
    if scan is not None:
        metadata["series_found"] = len(scan.series)
        metadata["skipped_files"] = len(scan.skipped_files)
    return image, metadata


def to_canonical(image: sitk.Image, default_value: float = 0.0) -> tuple[sitk.Image, bool]:
    """Return ``image`` with identity direction, resampling only when the axes are oblique.

    Axis permutations and flips are applied exactly with ``sitk.DICOMOrient``; a direction that
    is still not the identity afterwards (oblique or sheared axes) is resampled linearly by
    :func:`resample_to_canonical_grid`.

    Args:
        image: a 3D image in LPS physical space.
        default_value: value of output voxels outside the input.

    Returns:
        ``(canonical image, resampled)``; ``resampled`` says whether interpolation happened. An
        image whose direction is already the identity (to rounding) is returned itself, its
        direction set to the exact identity.
    """
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if np.allclose(direction, np.eye(3), atol=_DIRECTION_TOLERANCE):  # already canonical: no copy
        image.SetDirection(np.eye(3).ravel().tolist())
        return image, False
    if np.allclose(direction.T @ direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
        image = sitk.DICOMOrient(image, "LPS")
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        if np.allclose(direction, np.eye(3), atol=_DIRECTION_TOLERANCE):
            image.SetDirection(np.eye(3).ravel().tolist())
            return image, False
    return resample_to_canonical_grid(image, default_value), True


def resample_to_canonical_grid(image: sitk.Image, default_value: float = 0.0) -> sitk.Image:
    """Linearly resample ``image`` onto an identity-direction grid covering its voxel centres.

    The direction may be any invertible matrix (ITK maps points through its inverse), which is
    how a gantry-tilted stack — sheared, not rotated — is represented. Each output axis takes the
    spacing of the input axis most aligned with it.

    Args:
        image: a 3D image in LPS physical space.
        default_value: value of output voxels outside the input.

    Returns:
        The resampled image, same pixel type as ``image``.
    """
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    size = np.asarray(image.GetSize())
    corners = np.array(
        [image.TransformContinuousIndexToPhysicalPoint([float(c) for c in idx])
         for idx in np.ndindex(2, 2, 2) for idx in [np.asarray(idx) * (size - 1)]]
    )
    lower, upper = corners.min(axis=0), corners.max(axis=0)
    closest_input_axis = np.argmax(np.abs(direction), axis=1)
    spacing = np.asarray(image.GetSpacing())[closest_input_axis]
    # The 1e-3 voxel margin keeps the last voxel centre when rounding errors shrink the extent.
    out_size = np.floor((upper - lower) / spacing + 1e-3).astype(int) + 1
    return sitk.Resample(
        image,
        [int(v) for v in out_size],
        sitk.Transform(),
        sitk.sitkLinear,
        lower.tolist(),
        spacing.tolist(),
        np.eye(3).ravel().tolist(),
        float(default_value),
        image.GetPixelID(),
    )


# --------------------------------------------------------------------------------------------
# Scanning


def _read_header(path: Path) -> pydicom.Dataset | str:
    """Header of a DICOM image file, or the reason the file is skipped.

    Raises:
        InputReadError: a DICOM image file that is truncated or corrupt.
    """
    try:
        # Deferring large values reads the header without loading pixel data but still records
        # where the pixel data lies, which exposes truncated files.
        header = pydicom.dcmread(path, defer_size="4 KB")
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as exc:  # pydicom raises many types on damaged files
        raise InputReadError(path, f"corrupt DICOM file: {exc}") from exc
    sop_class = header.file_meta.get("MediaStorageSOPClassUID") or header.get("SOPClassUID")
    is_image_class = sop_class is not None and "Image Storage" in UID(sop_class).name
    pixel_data = header.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
    if pixel_data is None:
        if is_image_class or "Rows" in header:
            # pydicom stops silently at the end of a truncated file, dropping what follows.
            raise InputReadError(path, "truncated or corrupt DICOM image: no pixel data")
        return f"DICOM without pixel data ({UID(sop_class).name if sop_class else 'unknown SOP class'})"
    length = getattr(pixel_data, "length", _UNDEFINED_LENGTH)
    offset = getattr(pixel_data, "value_tell", None)
    # Offsets of a deflated dataset count inflated bytes; its truncation fails when inflating.
    deflated = header.file_meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian
    if not deflated and length != _UNDEFINED_LENGTH and offset is not None and offset + length > path.stat().st_size:
        raise InputReadError(
            path, f"truncated DICOM file: pixel data needs {length} bytes, {path.stat().st_size - offset} present"
        )
    return header


def _series_info(uid: str, files: list[Path], headers: list[pydicom.Dataset]) -> SeriesInfo:
    first = headers[0]
    image_type = tuple(str(v).upper() for v in _as_list(first.get("ImageType", [])))
    description = _text(first, "SeriesDescription") or ""
    orientations = Counter(
        tuple(round(float(v), 4) for v in h.ImageOrientationPatient)
        for h in headers if len(_as_list(h.get("ImageOrientationPatient", []))) == 6
    )
    orientation = orientations.most_common(1)[0][0] if orientations else None
    is_axial = False
    if orientation is not None:
        normal = np.cross(orientation[:3], orientation[3:])
        is_axial = bool(np.argmax(np.abs(normal)) == 2)
    thickness = _number(first, "SliceThickness")
    return SeriesInfo(
        series_uid=uid,
        description=description,
        image_type=image_type,
        modality=_text(first, "Modality") or "",
        files=tuple(files),
        n_slices=len(files),
        orientation=orientation,
        slice_thickness=thickness,
        is_localizer="LOCALIZER" in image_type or bool(_LOCALIZER_DESCRIPTION.search(description)),
        is_derived=bool(image_type) and image_type[0] == "DERIVED",
        is_axial=is_axial,
        folder=Path(os.path.commonpath([str(f.parent) for f in files])),
        transfer_syntax=UID(first.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian)).name,
    )


def _rejection_reasons(series: SeriesInfo, rules: dict[str, Any], pattern: re.Pattern | None) -> list[str]:
    reasons = []
    if rules["modality"] and series.modality.upper() != str(rules["modality"]).upper():
        reasons.append(f"modality {series.modality or 'missing'} is not {rules['modality']}")
    if rules["reject_localizer"] and series.is_localizer:
        reasons.append("localizer")
    if rules["reject_derived"] and series.is_derived:
        reasons.append("derived image")
    if rules["axial_only"] and not series.is_axial:
        reasons.append("not axial" if series.orientation is not None else "no ImageOrientationPatient")
    if pattern is not None and not pattern.search(series.description):
        reasons.append(f"description does not match {pattern.pattern!r}")
    if series.n_slices < rules["min_slices"]:
        reasons.append(f"{series.n_slices} slices < min_slices {rules['min_slices']}")
    return reasons


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Slice:
    path: Path
    header: pydicom.Dataset
    hu: np.ndarray  # float32 [rows, columns]
    position: np.ndarray  # ImagePositionPatient
    orientation: np.ndarray  # ImageOrientationPatient
    pixel_spacing: np.ndarray  # [row spacing (y), column spacing (x)]
    padding_voxels: int


def _read_slice(path: Path, air_value: float) -> _Slice:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise InputReadError(path, f"corrupt DICOM file: {exc}") from exc
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            raise InputReadError(path, f"missing {keyword}: cannot place the slice in space")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputReadError(path, "multi-frame (enhanced) DICOM images are not supported")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputReadError(path, f"not a greyscale image (SamplesPerPixel {ds.SamplesPerPixel})")

    stored = _decode_stored_values(ds, path)
    padding = _padding_mask(ds, stored)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    exact_in_float32 = (stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and slope.is_integer()
                        and intercept.is_integer() and abs(slope) * 2**16 + abs(intercept) < 2**24)
    if exact_in_float32:
        # An integer rescale of 16-bit values stays an integer below 2^24: float32 arithmetic is
        # exact, and a third of the time of float64 arithmetic and a cast (same values).
        hu = stored.astype(np.float32)
        if slope != 1.0:
            hu *= np.float32(slope)
        hu += np.float32(intercept)  # also turns a -0.0 from a negative slope into 0.0, as float64 does
    else:
        hu = (stored.astype(np.float64) * slope + intercept).astype(np.float32)
    hu[padding] = air_value
    return _Slice(
        path=path,
        header=ds,
        hu=hu,
        position=np.asarray([float(v) for v in ds.ImagePositionPatient]),
        orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient]),
        pixel_spacing=np.asarray([float(v) for v in ds.PixelSpacing]),
        padding_voxels=int(padding.sum()),
    )


def _decode_stored_values(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Stored (pre-rescale) pixel values of a single-frame image."""
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian))
    try:
        pydicom_can_decode = pydicom.pixels.get_decoder(syntax).is_available
    except NotImplementedError:
        pydicom_can_decode = False
    try:
        if pydicom_can_decode:
            stored = ds.pixel_array
        else:
            stored = _decode_with_gdcm(ds, path)
    except InputReadError:
        raise
    except Exception as exc:
        supported = ", ".join(UID(s).name for s in SUPPORTED_TRANSFER_SYNTAXES)
        raise InputReadError(
            path, f"cannot decode pixel data ({syntax.name}): {exc}. Supported transfer syntaxes: {supported}"
        ) from exc
    if stored.ndim != 2:
        raise InputReadError(path, f"expected a single 2D image, decoded pixel data of shape {stored.shape}")
    return stored


def _decode_with_gdcm(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    values = sitk.GetArrayFromImage(reader.Execute()).squeeze(axis=0).astype(np.float64)
    # GDCM always applies the rescale; undo it so that padding values (defined on stored values)
    # and the per-slice rescale are handled the same way for both decoders.
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return np.rint((values - intercept) / slope).astype(np.int64)


def _padding_mask(ds: pydicom.Dataset, stored: np.ndarray) -> np.ndarray:
    """Voxels equal to PixelPaddingValue, or within [PixelPaddingValue, PixelPaddingRangeLimit]."""
    value = ds.get("PixelPaddingValue")
    if value is None:
        return np.zeros(stored.shape, dtype=bool)
    limit = ds.get("PixelPaddingRangeLimit", value)
    low, high = sorted((int(value), int(limit)))
    return (stored >= low) & (stored <= high)


def _check_consistent(slices: list[_Slice]) -> None:
    usual_shape = Counter(s.hu.shape for s in slices).most_common(1)[0][0]
    usual_size = f"{usual_shape[1]}x{usual_shape[0]}"
    for s in slices:
        if s.hu.shape != usual_shape:
            raise InputReadError(
                s.path, f"slice size {s.hu.shape[1]}x{s.hu.shape[0]} differs from the series' {usual_size}"
            )
        if not np.allclose(s.pixel_spacing, slices[0].pixel_spacing, atol=1e-4):
            raise InputReadError(
                s.path,
                f"PixelSpacing {s.pixel_spacing.tolist()} differs from {slices[0].pixel_spacing.tolist()} "
                f"in {slices[0].path}",
            )
        if not np.allclose(s.orientation, slices[0].orientation, atol=1e-4):
            raise GeometryError(
                s.path, f"ImageOrientationPatient differs from {slices[0].path}: the series mixes orientations"
            )


def _assemble_volume(
    slices: list[_Slice], series: SeriesInfo, config: dict[str, Any], findings: list[str]
) -> tuple[sitk.Image, dict[str, Any]]:
    """Sort, check and stack the slices; returns the canonical image and geometry findings."""
    row, col = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row, col)
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    positions = np.array([s.position for s in slices])
    if np.linalg.norm(positions[-1] - positions[0]) < 1e-3:
        raise GeometryError(series.folder, "all slices share one position: not a volume")

    # Stacking direction: from the first to the last slice. It equals the normal unless the
    # gantry was tilted (positions follow the table while the image planes are tilted).
    stack_direction = (positions[-1] - positions[0]) / np.linalg.norm(positions[-1] - positions[0])
    along_stack = (positions - positions[0]) @ stack_direction
    off_line = np.linalg.norm(positions - positions[0] - np.outer(along_stack, stack_direction), axis=1)
    if off_line.max() > 0.1 * float(slices[0].pixel_spacing.min()):
        k = int(np.argmax(off_line))
        raise GeometryError(
            slices[k].path,
            f"slice position is {off_line[k]:.2f} mm off the line through the other slices: the series mixes stacks",
        )
    gaps = np.diff(along_stack)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise GeometryError(
            slices[k + 1].path,
            f"same slice position as {slices[k].path}: duplicate images or several acquisitions in one series",
        )
    spacing = float(np.median(gaps))

    missing_gaps = gaps > config["missing_slice_factor"] * spacing
    n_missing = int(np.sum(np.rint(gaps[missing_gaps] / spacing) - 1))
    irregular = bool(np.any(np.abs(gaps - spacing) > config["spacing_tolerance"] * spacing))
    tilt_from_positions = float(np.degrees(np.arccos(np.clip(abs(stack_direction @ normal), 0.0, 1.0))))
    tilt_tag = abs(_number(slices[0].header, "GantryDetectorTilt") or 0.0)
    tilt = max(tilt_from_positions, tilt_tag)
    tilted = tilt > config["tilt_tolerance_deg"]

    folder = series.folder
    if n_missing:
        where = ", ".join(
            f"{gaps[k]:.3g} mm after {slices[k].path.name}" for k in np.flatnonzero(missing_gaps)
        )
        message = f"{n_missing} missing slice(s): gap(s) of {where}; median slice spacing {spacing:.3g} mm"
        if config["missing_slices"] == "reject":
            raise GeometryError(folder, message)
        findings.append(f"{message}; interpolated onto a regular grid")
    if tilted:
        source = "slice positions" if tilt_from_positions >= tilt_tag else "GantryDetectorTilt"
        message = f"gantry tilt of {tilt:.2f} degrees (from {source})"
        if config["gantry_tilt"] == "reject":
            raise GeometryError(folder, message)
        if tilt_from_positions > config["tilt_tolerance_deg"]:
            findings.append(f"{message}; resampled onto an orthogonal grid")
        else:
            findings.append(f"{message}; the slice positions follow the slice normal: the stack is already orthogonal")

    volume = np.stack([s.hu for s in slices])
    resampled_spacing = bool(n_missing or irregular)
    if resampled_spacing:
        if not n_missing:
            findings.append(
                f"irregular slice spacing ({gaps.min():.3g}–{gaps.max():.3g} mm); interpolated onto a regular grid"
            )
        # Linear interpolation between neighbouring slices, along the stacking direction; the
        # first and last slices are kept where they are.
        regular = np.linspace(0.0, along_stack[-1], int(round(along_stack[-1] / spacing)) + 1)
        volume = make_interp_spline(along_stack, volume, k=1, axis=0)(regular).astype(np.float32)

    image = sitk.GetImageFromArray(volume)
    step = float(along_stack[-1] / (volume.shape[0] - 1))
    pixel_spacing = slices[0].pixel_spacing
    image.SetSpacing([float(pixel_spacing[1]), float(pixel_spacing[0]), step])
    image.SetOrigin(positions[0].tolist())
    image.SetDirection(np.column_stack([row, col, stack_direction]).ravel().tolist())
    image, resampled_orientation = to_canonical(image, float(config["air_value"]))
    if resampled_orientation and not tilted:
        findings.append("oblique slice orientation; resampled onto the canonical grid")

    geometry = {
        "slice_spacing_mm": spacing,
        "missing_slices": n_missing,
        "irregular_spacing": irregular,
        "gantry_tilt_deg": round(tilt, 3) if tilted else 0.0,
        "resampled": bool(resampled_spacing or resampled_orientation),
    }
    return image, geometry


# --------------------------------------------------------------------------------------------
# Helpers


def _merge(defaults: dict[str, Any], overrides: dict[str, Any] | None, what: str) -> dict[str, Any]:
    merged = copy.deepcopy(defaults)
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; expected some of {sorted(defaults)}")
    for key, value in (overrides or {}).items():
        if isinstance(defaults[key], dict):
            value = _merge(defaults[key], value, key)
        merged[key] = value
    return merged


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value] if value not in (None, "") else []


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    values = _as_list(ds.get(keyword))
    return "\\".join(str(v).strip() for v in values) if values else None


def _number(ds: pydicom.Dataset, keyword: str) -> float | None:
    """First value of a numeric tag (WindowCenter may hold several), or None."""
    values = _as_list(ds.get(keyword))
    try:
        return float(values[0]) if values else None
    except (TypeError, ValueError):
        return None
