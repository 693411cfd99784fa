"""Translate a datalist split: every item's source volume to a file, and ``predictions.json`` for evaluation.

Entry points (built from plain JSON with ``_target_``): :func:`translate_datalist` (a split ->
translated files + ``predictions.json``) and :class:`TranslateVolumed` (one datalist item).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk
from monai.config import KeysCollection
from monai.data import load_decathlon_datalist
from monai.transforms import MapTransform
from monai.utils import ensure_tuple_rep

from medgan_common.atomic import atomic_write_json
from medgan_common.errors import InputReadError, PreprocessingError
from modality_translation.inference.dicom_output import write_dicom_series
from modality_translation.inference.io import check_files_on_grid, read_volume
from modality_translation.inference.translate import VolumeTranslator


def subject_name(item: Mapping[Hashable, Any], subject_key: str = "subject", fallback_key: Hashable | None = None) -> str:
    """The subject of a datalist item: ``item[subject_key]``, else the stem of the file ``item[fallback_key]``.

    Raises:
        KeyError: neither key is in the item.
    """
    subject = item.get(subject_key)
    if subject is None:
        if fallback_key is None or fallback_key not in item:
            raise KeyError(f"datalist item has no {subject_key!r} entry to name its subject: {dict(item)}")
        return Path(str(item[fallback_key])).name.split(".")[0]
    # load_decathlon_datalist turns every value naming an existing path into an absolute path, and a
    # cohort has one folder per subject: keep the name only.
    return Path(str(subject)).name


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
        subject_key: str = "subject",
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


def load_datalist_items(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    split: str = "test",
    base_dir: str | os.PathLike | None = None,
    path_keys: Mapping[str, str] | None = None,
    subject_key: str = "subject",
) -> list[dict[str, Any]]:
    """The items of one split of a MONAI datalist, with their files checked and their subjects named.

    Args:
        datalist: a datalist JSON file (``monai.data.load_decathlon_datalist``) or a list of items.
        split: the split of a datalist file.
        base_dir: folder relative paths are relative to (default: the datalist file's folder).
        path_keys: item key -> what the file is (for messages); each must name an existing file, and
            is replaced by its absolute path.
        subject_key: item key of the subject name; set on every item (see :func:`subject_name`, with
            the first of ``path_keys`` as the fallback), and subjects must be unique.

    Returns:
        Copies of the items.

    Raises:
        InputReadError: a missing or unreadable datalist file, a missing file of ``path_keys``.
        PreprocessingError: a split that is absent or empty, an item without a key, a repeated subject.
    """
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist)
        if not path.is_file():
            raise InputReadError(path, "datalist file does not exist")
        try:
            items = load_decathlon_datalist(path, is_segmentation=False, data_list_key=split, base_dir=base_dir)
        except ValueError as exc:
            raise PreprocessingError(path, f"datalist has no split {split!r}") from exc
        except (OSError, TypeError) as exc:
            raise InputReadError(path, f"cannot read the datalist: {exc}") from exc
        if not items:
            raise PreprocessingError(path, f"datalist split {split!r} is empty")
        base_dir = path.parent if base_dir is None else base_dir
    else:
        items = list(datalist)
        if not items:
            raise PreprocessingError(None, f"datalist split {split!r} is empty: no item to process")
    base = None if base_dir is None else Path(base_dir)
    path_keys = dict(path_keys or {})
    checked = []
    for item in items:
        item = dict(item)
        subject = subject_name(item, subject_key, next(iter(path_keys), None))
        for key, what in path_keys.items():
            item[key] = str(resolve_item_path(item, key, base, what, subject))
        item[subject_key] = subject
        checked.append(item)
    subjects = [item[subject_key] for item in checked]
    repeated = sorted({s for s in subjects if subjects.count(s) > 1})
    if repeated:
        raise PreprocessingError(None, f"subjects listed more than once in split {split!r}: {', '.join(repeated)}")
    return checked


def resolve_item_path(item: Mapping[str, Any], key: str, base_dir: Path | None, what: str, subject: str) -> Path:
    """The existing file ``item[key]`` (relative paths against ``base_dir``).

    Raises:
        PreprocessingError: the item has no ``key``.
        InputReadError: the file does not exist (named with ``what``, the key and the subject).
    """
    if key not in item:
        raise PreprocessingError(None, f"datalist item of subject {subject!r} has no {key!r} ({what})")
    path = Path(item[key])
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise InputReadError(path, f"{what} ({key!r} of subject {subject!r}) does not exist")
    return path


def translate_datalist(
    translator: VolumeTranslator,
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    source_key: str,
    output_key: str = "pred",
    mask_key: str | None = None,
    split: str = "test",
    base_dir: str | os.PathLike | None = None,
    subject_key: str = "subject",
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
        InputReadError, PreprocessingError, GeometryError: before any work, for a missing file or key,
            an empty split or a mask on another grid.
        IntensityMismatchError: before any work, a volume whose values cannot be of the source
            modality (e.g. a CT in HU listed as the T2 of an MR -> CT model), the file named.
    """
    path_keys = {source_key: "volume to translate", **({mask_key: "head mask"} if mask_key is not None else {})}
    items = load_datalist_items(datalist, split, base_dir, path_keys, subject_key)
    for item in items:
        check_files_on_grid(item[source_key], "volume", [(item[mask_key], "head mask")] if mask_key is not None else [])
    for item in items:  # reads the voxels: after the header checks of every item
        translator.source.check_intensities(read_volume(item[source_key]).array, item[source_key], "volume to translate")

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
