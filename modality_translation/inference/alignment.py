"""Rigid alignment of a new scan to the reference space a bundle was trained in, and back.

Bundles trained on a registered cohort saw every subject in one common space (each modality
registered onto the cohort's reference of that modality). A new scan is therefore aligned to the
bundle's copy of that reference before translation (rigid, with ANTs, by the cohort's own
registration parameters: ``preprocessing.registration.register``), translated on the reference
grid, and mapped back onto its own grid with the inverse transform, so the output lies exactly on
the input's grid. Only a rigid transform is used: it moves the head without changing its shape,
so the translated anatomy is the patient's, not the reference's.

The registration runs single-threaded with ANTs' fixed seed
(``preprocessing.registration.configure_determinism``), so a scan aligns the same way every time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

from preprocessing.registration import RegistrationConfig, RegistrationResult, apply_transforms, configure_determinism, register

__all__ = ["ReferenceAlignment", "align_to_reference"]


@dataclass
class ReferenceAlignment:
    """A scan rigidly aligned onto a reference grid, with the way back.

    Attributes:
        input_image: the scan on its own grid.
        aligned: the scan resampled onto the reference grid.
        metrics: ``ncc_before`` / ``ncc_after`` against the reference (same modality) and ``seconds``.
    """

    input_image: sitk.Image
    aligned: sitk.Image
    metrics: Mapping[str, float]
    _result: RegistrationResult = field(repr=False)

    def to_input_grid(self, image: sitk.Image, default_value: float = 0.0) -> sitk.Image:
        """Resample an image on the reference grid back onto the input's grid (inverse transform).

        Args:
            image: e.g. the translation, on the reference grid.
            default_value: value where the input grid reaches beyond the reference's field of view.
        """
        return apply_transforms(image, self.input_image, self._result.inverse_transforms,
                                invert_flags=self._result.inverse_invert_flags, default_value=default_value)

    def close(self) -> None:
        """Delete the temporary transform files."""
        self._result.cleanup()

    def __enter__(self) -> ReferenceAlignment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def align_to_reference(image: sitk.Image, reference: sitk.Image, registration: Mapping[str, Any] | None = None,
                       default_value: float = 0.0) -> ReferenceAlignment:
    """Rigidly register ``image`` onto ``reference`` (same modality) and resample it onto the reference grid.

    Args:
        image: the scan (raw units: HU, MR intensities).
        reference: the bundle's reference volume of that modality.
        registration: ``RegistrationConfig`` fields (the cohort's recorded parameters); the transform
            is forced to ``Rigid``.
        default_value: value of reference-grid voxels outside the scan (-1024 for CT, 0 for MR).

    Returns:
        The :class:`ReferenceAlignment` (close it, or use it as a context manager).

    Raises:
        ValueError: invalid registration parameters.
        RuntimeError: ANTs failed.
    """
    if "ants" not in sys.modules and "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS" not in os.environ:
        configure_determinism(threads=1)
    values = {**dict(registration or {}), "transforms": ["Rigid"], "default_value": float(default_value), "reference": None}
    config = RegistrationConfig.from_dict(values)
    result = register(sitk.Cast(image, sitk.sitkFloat32), sitk.Cast(reference, sitk.sitkFloat32), config)
    metrics = {key: round(float(value), 6) for key, value in result.metrics.items() if key != "seconds"}
    return ReferenceAlignment(image, result.warped, metrics, result)
