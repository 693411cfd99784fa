"""Translate a datalist split: every item's source volume to a file, and ``predictions.json`` for evaluation.

Entry points (built from plain JSON with ``_target_``): :func:`translate_datalist` (a split ->
translated files + ``predictions.json``) and :class:`TranslateVolumed` (one datalist item). The
datalist is read by :func:`modality_translation.data.datalist.load_datalist_items`, the reader that
training and evaluation use too (its module docstring states how paths, subjects and missing files
are treated).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from medgan_common import dataset_keys
from medgan_common.atomic import atomic_write_json
from modality_translation.data.datalist import load_datalist_items, resolve_item_path, subject_name
from modality_translation.inference.dicom_output import write_dicom_series
from modality_translation.inference.io import check_files_on_grid, read_volume
from modality_translation.inference.translate import VolumeTranslator

__all__ = ["TranslateVolumed", "load_datalist_items", "resolve_item_path", "subject_name", "translate_datalist"]


class TranslateVolumed(MapTransform):
    """Dictionary transform: translate the volume file of each key, write it, store the output path.

    For an item ``{"subject": "sub-01", "t1": ".../t1.nii.gz", "t1_mask": ...}`` and ``keys="t1"``,
    writes ``<output_dir>/sub-01/<output_key>.nii.gz`` and sets ``item[output_key]`` to its path.

    Args:
        keys: keys of the input volume paths.
        translator: the :class:`VolumeTranslator`.
        output_dir: root folder of the outputs (one sub-folder per subject).
        output_keys: item key (and file stem) of each output; default ``"pred"``.
        mask_keys: key of each input's head mask path (``None``: masks are computed).
        subject_key: key of the subject name (default ``"subject"``; the input file's stem if absent).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        translator: VolumeTranslator,
        output_dir: str | os.PathLike,
        output_keys: KeysCollection = "pred",
        mask_keys: KeysCollection | None = None,
        subject_key: str = dataset_keys.SUBJECT,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.translator = translator
        self.output_dir = Path(output_dir)
        self.output_keys = ensure_tuple_rep(output_keys, len(self.keys))
        self.mask_keys = ensure_tuple_rep(mask_keys, len(self.keys))
        self.subject_key = subject_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, output_key, mask_key in self.key_iterator(d, self.output_keys, self.mask_keys):
            subject = subject_name(d, self.subject_key, key)
            output_path = self.output_dir / subject / f"{output_key}.nii.gz"
            mask_path = None if mask_key is None else d[mask_key]
            d[output_key] = str(self.translator.translate_file(d[key], output_path, mask_path))
        return d


def translate_datalist(
    translator: VolumeTranslator,
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    source_key: str,
    output_key: str = "pred",
    mask_key: str | None = None,
    split: str = dataset_keys.TEST,
    base_dir: str | os.PathLike | None = None,
    subject_key: str = dataset_keys.SUBJECT,
    write_dicom: bool = False,
    dicom_series_description: str | None = None,
    predictions_file: str = "predictions.json",
) -> list[dict[str, Any]]:
    """Translate the source volume of every item of a datalist split.

    All inputs are checked first (files exist, masks on the input's grid, values that can be of the
    source modality on its scale: ``IntensityMapping.check_intensities``), so a bad item stops the run
    before any output is written. Writes ``<output_dir>/<subject>/<output_key>.nii.gz`` per item, with
    ``write_dicom`` also a DICOM series in ``<output_dir>/<subject>/<output_key>_dicom/``
    (:func:`~modality_translation.inference.dicom_output.write_dicom_series`; the subject name, a
    pseudonym in a preprocessed cohort, as patient ID; a CT output gets the target window for display),
    and ``<output_dir>/<predictions_file>``: a datalist ``{split: items}`` whose items are the
    input items plus ``output_key`` (and ``<output_key>_dicom``), the input of ``evaluate_translation``.

    Args:
        translator: the :class:`VolumeTranslator`.
        datalist: a datalist JSON file (e.g. the preprocessing's ``dataset.json``) or a list of items.
        output_dir: output folder.
        source_key: item key of the volume to translate (``"t1"``, ``"ct"``...).
        output_key: item key and file stem of the output.
        mask_key: item key of the source's head mask (``"t1_mask"``); ``None`` computes the masks.
        split: datalist split (``"test"``, ``"validation"``, ``"training"``).
        base_dir: folder relative paths are relative to (default: the datalist file's folder).
        subject_key: item key of the subject name.
        write_dicom: also write each output as a synthetic DICOM series.
        dicom_series_description: its SeriesDescription (must contain "SYNTHETIC"); default
            ``"SYNTHETIC <TARGET> FROM <SOURCE>"``.
        predictions_file: name of the output datalist.

    Returns:
        The output items.

    Raises:
        DatalistFileError, DatalistError, GeometryError: before any work, for a missing file or key,
            an empty split, an item without its subject, a repeated subject or a mask on another grid.
        IntensityMismatchError: before any work, a volume whose values cannot be of the source
            modality (e.g. a CT in HU listed as the T2 of an MR -> CT model), the file named.
    """
    path_keys = {source_key: "volume to translate", **({mask_key: "head mask"} if mask_key is not None else {})}
    items = load_datalist_items(datalist, split, base_dir, path_keys, subject_key)
    for item in items:
        check_files_on_grid(item[source_key], "volume", [(item[mask_key], "head mask")] if mask_key is not None else [])
    for item in items:  # reads the voxels: after the header checks of every item
        translator.source.check_intensities(read_volume(item[source_key]).array, item[source_key], "volume to translate")

    # predictions.json lists the outputs by absolute path, as it lists the inputs: a relative one would
    # be read against the dataset's folder by the evaluation, not against the working directory.
    output_dir = Path(output_dir).resolve()
    transform = TranslateVolumed(source_key, translator, output_dir, output_key, mask_key, subject_key)
    outputs = []
    for item in items:
        output = transform(item)
        if write_dicom:
            folder = Path(output_dir) / output[subject_key] / f"{output_key}_dicom"
            target = translator.target
            write_dicom_series(
                sitk.ReadImage(output[output_key]), folder, target.modality, dicom_series_description,
                source_modality=translator.source.modality, patient_id=output[subject_key],
                window=(target.window.center, target.window.width) if target.is_ct else None,
            )
            output[f"{output_key}_dicom"] = str(folder)
        outputs.append(output)
    atomic_write_json(Path(output_dir) / predictions_file, {split: outputs})
    return outputs
