"""Translate one patient's scan with a trained bundle: scan in, synthetic volume (and series) out.

The steps (:meth:`ScanTranslator.translate`), each from the bundle's training record
(:mod:`modality_translation.bundle.record`) rather than from a cohort:

1. read the scan (NIfTI file, DICOM series or study folder; CT to HU) and check it is of the
   bundle's source modality (:func:`~modality_translation.inference.scan_input.read_scan`); a CT
   is cleaned of its head holder and other objects with the cohort's artefact mask
   (``preprocessing.artefact_mask``), as the training CTs were;
2. when the bundle was trained in a registered common space, align it rigidly to the bundle's
   reference of that modality (:mod:`~modality_translation.inference.alignment`);
3. head mask and normalisation (MR) or windowing (CT) with the training's settings;
4. translation slice by slice (2D or 2.5D) at the training's slice size
   (:class:`~modality_translation.inference.translate.VolumeTranslator`);
5. back to the target's units (HU for CT) and onto the input's exact grid;
6. outputs in ``output_dir``: ``<input>_synthetic_<target>.nii.gz`` on the input's grid, for a
   DICOM input also ``<input>_synthetic_<target>_dicom/``, a series in the input's study marked
   DERIVED\\SECONDARY and SYNTHETIC with the model's name and version
   (:func:`~modality_translation.inference.dicom_output.write_dicom_series`), and
   ``<input>_synthetic_<target>.json`` saying what was done.

Every check (the input, its modality, the bundle's files) runs before anything is written, and
every file is written under a temporary name and renamed, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

# The module, not its names: the record imports this package's intensity mappings.
from medgan_common.atomic import atomic_write_json
from modality_translation.bundle import record as training_record
from modality_translation.bundle.cli_errors import UsageError
from modality_translation.inference.alignment import align_to_reference
from modality_translation.inference.dicom_output import default_series_description, write_dicom_series
from modality_translation.inference.intensity import IntensityMapping
from modality_translation.inference.scan_input import Scan, read_scan, write_nifti_like
from modality_translation.inference.translate import VolumeTranslator
from preprocessing.artefact_mask import apply_artefact_mask, build_artefact_mask

__all__ = ["ScanTranslator", "select_direction", "translate_scan"]

class ScanTranslator:
    """A bundle's generator with what it needs to translate single scans of its source modality.

    Args:
        translator: the :class:`VolumeTranslator` of the direction to run (network, weights, slice settings).
        record: the bundle's training record; its intensity mappings, slice geometry and references
            are used. Without a record (a bundle trained before records existed) the translator's own
            mappings are used, without alignment.
        model: name and version of the bundle, written into the outputs (``"pix2pix_t1_t2 0.2.0"``).
        dicom_rules: overrides of the DICOM series selection rules.

    Raises:
        TrainingRecordError: the record has no mapping of the translator's modalities, or a recorded
            reference file is missing from the bundle.
    """

    def __init__(self, translator: VolumeTranslator, record: training_record.TrainingRecord | None = None, model: str | None = None,
                 dicom_rules: Mapping[str, Any] | None = None) -> None:
        record = record or training_record.TrainingRecord()
        source_modality, target_modality = translator.source.modality, translator.target.modality
        if record.intensity:
            self.source = record.intensity_mapping(source_modality)
            self.target = record.intensity_mapping(target_modality)
        else:
            self.source = dataclasses.replace(translator.source, on_network_scale=False)
            self.target = dataclasses.replace(translator.target, on_network_scale=False)
        self.reference_path = record.reference(source_modality)
        self.registration = record.registration(source_modality)
        # The translator keeps its network and slice settings; only the intensity mappings change,
        # from the cohort's already-normalised volumes to a scan in raw units.
        self.translator = translator.with_intensities(self.source, self.target)
        self.model = model
        self.dicom_rules = dicom_rules
        self.ct_artefact = dict(record.ct_artefact) if self.source.is_ct else {}

    def remove_ct_artefacts(self, image: sitk.Image) -> sitk.Image:
        """The CT with everything outside the head (holder, couch, pads) set to air, as in training.

        Uses the cohort's artefact mask options (``preprocessing.artefact_mask.build_artefact_mask``);
        unchanged when the bundle's cohort did not mask its CTs or the source is not CT.
        """
        if not self.ct_artefact.get("enabled"):
            return image
        # The mask's slice-wise rules assume axial slices along the array's first axis.
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        canonical = sitk.DICOMOrient(image, "LPS")
        hu = sitk.GetArrayFromImage(canonical)
        keep, _ = build_artefact_mask(hu, **dict(self.ct_artefact.get("options") or {}))
        cleaned = sitk.GetImageFromArray(apply_artefact_mask(hu, keep, float(self.ct_artefact.get("outside_hu", -1000.0))))
        cleaned.CopyInformation(canonical)
        cleaned = sitk.DICOMOrient(cleaned, orientation)
        cleaned.CopyInformation(image)
        return sitk.Cast(cleaned, sitk.sitkFloat32)

    def _background(self, mapping: IntensityMapping) -> float:
        return mapping.air_value

    def output_name(self, scan: Scan) -> str:
        """File-name stem of a scan's outputs: ``<input>_synthetic_<target>``."""
        return f"{scan.stem}_synthetic_{self.target.modality}"

    def translate_image(self, scan: Scan) -> tuple[sitk.Image, dict[str, Any]]:
        """The translation of a scan on its own grid (target units), and what was done.

        Returns:
            ``(image, details)``: the image and a JSON-able dict (alignment metrics, reference).
        """
        details: dict[str, Any] = {}
        source = self.remove_ct_artefacts(scan.image)
        if self.reference_path is None:
            return self.translator.translate_image(source), details
        reference = sitk.ReadImage(str(self.reference_path), sitk.sitkFloat32)
        with align_to_reference(source, reference, self.registration, self._background(self.source)) as alignment:
            translated = self.translator.translate_image(alignment.aligned)
            image = alignment.to_input_grid(translated, self._background(self.target))
            image.CopyInformation(scan.image)  # the input's own header values, free of resampling round-off
            details["alignment"] = {"reference": self.reference_path.name, "transform": "rigid", **alignment.metrics}
        return image, details

    def translate(self, input_path: str | os.PathLike, output_dir: str | os.PathLike, deidentify: bool = False,
                  write_dicom: bool | None = None) -> dict[str, Any]:
        """Translate one scan and write the outputs (see the module docstring).

        Args:
            input_path: a NIfTI file, a DICOM series folder or a study folder.
            output_dir: folder of the outputs (created).
            deidentify: the DICOM output's patient module is left blank instead of copied.
            write_dicom: write the DICOM series (default: for DICOM inputs only; a NIfTI input has no
                study to join).

        Returns:
            The description written to ``<output>.json``: input, model, outputs, alignment.

        Raises:
            InputReadError, SeriesSelectionError, GeometryError, IntensityMismatchError: a bad input
                (see :func:`~modality_translation.inference.scan_input.read_scan`), before anything is written.
            UsageError: ``write_dicom`` for a NIfTI input.
        """
        scan = read_scan(input_path, self.source, self.dicom_rules)
        write_dicom = scan.is_dicom if write_dicom is None else bool(write_dicom)
        if write_dicom and not scan.is_dicom:
            raise UsageError(f"{input_path}: a NIfTI input has no DICOM study to put a synthetic series in")
        image, details = self.translate_image(scan)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        stem = self.output_name(scan)
        outputs = {"nifti": str(write_nifti_like(scan, image, output_dir / f"{stem}.nii.gz"))}
        if write_dicom:
            folder = output_dir / f"{stem}_dicom"
            description = default_series_description(self.target.modality, self.source.modality)
            window = (self.target.window.center, self.target.window.width) if self.target.is_ct else None
            write_dicom_series(image, folder, self.target.modality, description, window=window,
                               source=scan.dicom_header, deidentify=deidentify, model=self.model)
            outputs["dicom"] = str(folder)
        summary = {
            "input": str(scan.path), "input_kind": "dicom" if scan.is_dicom else "nifti",
            "source": self.source.modality, "target": self.target.modality, "model": self.model,
            "series": dict(scan.series) if scan.series else None, "deidentified": bool(deidentify and write_dicom),
            "size": list(scan.image.GetSize()), "spacing_mm": [round(s, 6) for s in scan.image.GetSpacing()],
            "outputs": {key: Path(value).name for key, value in outputs.items()}, **details,
        }
        atomic_write_json(output_dir / f"{stem}.json", summary)
        return {**summary, "outputs": outputs}


def select_direction(translators: VolumeTranslator | Mapping[str, VolumeTranslator], direction: str = "forward") -> VolumeTranslator:
    """The translator of ``--direction``: ``"forward"`` (source -> target) or ``"reverse"`` (two-way bundles).

    Args:
        translators: a bundle's ``translators`` (``{"forward": ..., "reverse": ...}``) or its one translator.
        direction: ``"forward"`` or ``"reverse"``.

    Raises:
        UsageError: an unknown direction, or ``"reverse"`` for a one-way bundle.
    """
    direction = str(direction).strip().lower()
    if isinstance(translators, VolumeTranslator):
        translators = {"forward": translators}
    if direction not in translators:
        forward = translators["forward"]
        ways = f"{forward.source.modality} -> {forward.target.modality}"
        raise UsageError(f"--direction {direction!r} is not available: this bundle translates "
                         f"{' and '.join(sorted(translators))} ({ways} forward)")
    return translators[direction]


def translate_scan(scan_translator: ScanTranslator, input: str | os.PathLike | None, output_dir: str | os.PathLike | None,
                   deidentify: bool | str = False) -> dict[str, Any]:
    """The bundles' ``translate`` run: one scan, with the command line's values checked first.

    Args:
        scan_translator: the bundle's :class:`ScanTranslator`.
        input: ``--input`` (required).
        output_dir: ``--output_dir`` (required).
        deidentify: ``--deidentify`` (``True``/``"true"``).

    Raises:
        UsageError: a missing ``--input`` or ``--output_dir``.
    """
    if input in (None, "") or output_dir in (None, ""):
        missing = [name for name, value in (("--input", input), ("--output_dir", output_dir)) if value in (None, "")]
        raise UsageError(f"translate needs {' and '.join(missing)}: --input PATH (NIfTI file, DICOM series or study "
                         "folder) --output_dir DIR")
    return scan_translator.translate(input, output_dir, deidentify=str(deidentify).strip().lower() in ("true", "1", "yes"))
