"""Volume inference: 2D generators over whole 3D volumes, NIfTI and synthetic DICOM output.

Every class and function takes plain JSON values (and ``@network`` references), so a bundle's
``inference.json`` builds them with ``_target_``.
"""

from modality_translation.inference.dicom_output import default_series_description, write_dicom_series
from modality_translation.inference.intensity import MR_NORMALIZATION_METHODS, IntensityMapping, IntensityMismatchError
from modality_translation.inference.datalist_translation import (
    TranslateVolumed,
    load_datalist_items,
    resolve_item_path,
    subject_name,
    translate_datalist,
)
from modality_translation.inference.io import CanonicalVolume, check_files_on_grid, check_same_grid, read_nifti_header, read_volume, write_volume_like
from modality_translation.inference.scan_input import Scan, read_scan
from modality_translation.inference.scan_translation import ScanTranslator, select_direction, translate_scan
from modality_translation.inference.translate import VolumeSliceInferer, VolumeTranslator, translate_slices
from modality_translation.inference.weights import load_network_weights, resolve_device

__all__ = [
    "MR_NORMALIZATION_METHODS",
    "CanonicalVolume",
    "IntensityMapping",
    "IntensityMismatchError",
    "Scan",
    "ScanTranslator",
    "TranslateVolumed",
    "VolumeSliceInferer",
    "VolumeTranslator",
    "check_files_on_grid",
    "check_same_grid",
    "default_series_description",
    "load_datalist_items",
    "load_network_weights",
    "read_nifti_header",
    "read_scan",
    "read_volume",
    "resolve_device",
    "resolve_item_path",
    "select_direction",
    "subject_name",
    "translate_datalist",
    "translate_scan",
    "translate_slices",
    "write_dicom_series",
    "write_volume_like",
]
