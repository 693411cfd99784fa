"""The one reader of the translation datalist (``dataset.json``), for training, inference and evaluation.

The datalist is a MONAI Decathlon-style JSON file written by the preprocessing cohort runner, its
keys named in :mod:`medgan_common.dataset_keys`:

.. code-block:: json

    {"modalities": ["ct", "t1", "t2"],
     "training": [{"subject": "sub-001", "t1": "sub-001/t1.nii.gz",
                   "t1_slices": ["sub-001/slices/t1/sub-001_axial_0040.nii.gz", "..."], "...": "..."}],
     "validation": ["..."], "test": ["..."]}

:func:`load_datalist_items` reads one split for any use; :func:`load_translation_datalist` adds the
checks a training needs (slice lists, modalities, the first slice's shape). They behave alike:

- **Source.** A datalist file, or (:func:`load_datalist_items`) a list of items already in memory,
  such as the ``predictions.json`` items that inference hands to evaluation.
- **Relative paths** are resolved against the datalist's folder (``base_dir`` overrides it; items
  given in memory without ``base_dir`` keep their paths as given, relative to the working directory).
  Every value under a key that holds files is resolved and normalised: the requested keys, the
  modalities (declared and known), registered volumes (``<image>_in_<space>``), ground truths
  (``truth_*``) and the companions of a volume (``*_slices``, ``*_slice_index``, ``*_mask``,
  ``*_transforms``, ``*_hu``); absolute paths stay as they are. A resolved item therefore means the
  same wherever it is written next (``predictions.json`` lives in another folder than the cohort).
  MONAI's :func:`monai.data.load_decathlon_datalist` is not used: it joins a value with the folder
  only when the joined path exists (so a missing file would be reported relative to the working
  directory, not where it was expected) and it turns a ``"subject"`` value into a path whenever a
  subject folder of that name exists.
- **Subjects.** Every item names its subject (``"subject"``, kept as written); an item without one,
  or a subject listed twice in a split, is refused: outputs are written and metrics reported per
  subject.
- **Missing files** are refused before any work: a missing or unreadable datalist and a listed file
  that does not exist raise :class:`DatalistFileError` (both a :class:`DatalistError` and an
  ``InputReadError``), a missing or empty split, an item without its subject or a requested key
  raise :class:`DatalistError`. Every error names the file it is about (the missing file, or the
  datalist), the subject when there is one, and the key.

For training, :func:`load_translation_datalist` also checks that every item has every requested key
(``<key>_slices``, non-empty, or the ``<key>`` volume), that the first slice of each subject is a 2D
(or 2.5D) image, and that no file listed under one modality is named after another one. The keys the
preprocessing writes for a volume registered into another modality's space (``t2_in_t1``: the T2 on
its subject's T1 grid; ``ct_in_t2``: the CT on its subject's own T2 grid, the pair of MR -> CT
training, listed in the datalist's ``"pairs"`` as ``["ct", "t2"]``), for a CT in Hounsfield units
(``ct_hu``, ``ct_in_t2_hu``) and for a demo cohort's ground truth (``truth_ct_in_t2``) are requested
like modalities; their files are checked against the modality of their image (T2, CT), not of the
space.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib

from medgan_common import dataset_keys
from medgan_common.dataset_keys import HU_SUFFIX, SPACE_SEPARATOR, SPLITS, TRUTH_PREFIX, slice_index_key, slices_key
from medgan_common.errors import InputReadError, PreprocessingError

__all__ = [
    "HU_SUFFIX", "MODALITY_ALIASES", "SPACE_SEPARATOR", "SPLITS", "TRUTH_PREFIX", "DatalistError", "DatalistFileError",
    "ModalityMismatchError", "check_modality_name", "flatten_slices", "load_datalist_items", "load_translation_datalist",
    "modality_named_in", "modality_of_key", "pair_slices", "read_datalist", "registered_image_modalities",
    "resolve_item_path", "slice_index_key", "slices_key", "subject_name",
]

#: Name tokens that identify a modality in a file or folder name (IXI ``-T1``, BIDS ``_T1w``, ``ct``).
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1w"),
    "t2": ("t2", "t2w"),
    "pd": ("pd", "pdw"),
    "flair": ("flair",),
    "mra": ("mra",),
    "ct": ("ct",),
}

#: ``<image>_in_<space>`` words of a file name (words: runs of letters and digits).
_REGISTERED_NAME = re.compile(r"(?<![a-z0-9])([a-z0-9]+)_in_([a-z0-9]+)(?![a-z0-9])")

#: Item keys whose values are file paths (besides the requested keys and the modalities).
_PATH_KEY_SUFFIXES = (dataset_keys.SLICES_SUFFIX, dataset_keys.SLICE_INDEX_SUFFIX, dataset_keys.MASK_SUFFIX,
                      dataset_keys.TRANSFORMS_SUFFIX, HU_SUFFIX)
_PATH_KEY_PREFIXES = (TRUTH_PREFIX,)


class DatalistError(PreprocessingError):
    """The datalist, one of its items or one of the files it lists cannot be used."""


class DatalistFileError(DatalistError, InputReadError):
    """The datalist file, or a file it lists, does not exist or cannot be read."""


class ModalityMismatchError(PreprocessingError):
    """A file listed (or given) as one modality is named as another one."""


def modality_of_key(key: str) -> str:
    """The modality of the image a datalist key names: its contrast, not the space it was resampled into.

    Args:
        key: a modality (``"t1"``), a registered volume ``"<image>_in_<space>"`` (``"t2_in_t1"``,
            ``"ct_in_t2"``), a CT in HU ``"ct_hu"`` / ``"ct_in_t2_hu"``, or a ground truth
            ``"truth_<image>[_in_<space>]"`` (``"truth_ct_in_t2"``).

    Returns:
        The image's modality, lower case: ``"t1"``, ``"t2"``, ``"ct"``, ``"ct"``, ``"ct"`` for the
        examples above.
    """
    name = key.lower().removeprefix(TRUTH_PREFIX).partition(SPACE_SEPARATOR)[0]
    return name.removesuffix(HU_SUFFIX)


def _is_path_key(key: Hashable, modalities: Iterable[str]) -> bool:
    if not isinstance(key, str) or key == dataset_keys.SUBJECT:
        return False
    return (key in modalities or SPACE_SEPARATOR in key or key.endswith(_PATH_KEY_SUFFIXES)
            or key.startswith(_PATH_KEY_PREFIXES))


def _resolve(base: Path | None, value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        return os.path.normpath(value if base is None else base / value)
    if isinstance(value, list) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.path.normpath(v if base is None else base / v) for v in value]
    return value


def _name_tokens(name: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", name.lower())) - {""}


def modality_named_in(name: str, known: Iterable[str] = tuple(MODALITY_ALIASES)) -> set[str]:
    """The modalities whose name (or an alias of it) is a word of ``name``.

    Args:
        name: a file name or relative path (words are separated by anything but letters and digits).
        known: modality names to look for.

    Returns:
        The set of modality names found, lower case.
    """
    tokens = _name_tokens(name)
    found = set()
    for modality in known:
        modality = modality.lower()
        if tokens & set(MODALITY_ALIASES.get(modality, (modality,))):
            found.add(modality)
    return found


def registered_image_modalities(name: str, known: Iterable[str] = tuple(MODALITY_ALIASES)) -> set[str]:
    """The image modalities of the ``<image>_in_<space>`` words of a name (``"sub_ct_in_t2_hu"`` -> ``{"ct"}``).

    The preprocessing names a volume resampled into another modality's space this way; such a file
    holds an image of ``<image>``, whatever ``<space>`` it lies in.

    Args:
        name: a file name or relative path.
        known: modality names to recognise (both words must be one of them or an alias).

    Returns:
        The set of ``<image>`` modalities, lower case (empty when the name has no such word).
    """
    aliases = {alias: modality.lower() for modality in known
               for alias in MODALITY_ALIASES.get(modality.lower(), (modality.lower(),))}
    found = set()
    for image, space in _REGISTERED_NAME.findall(name.lower()):
        if image in aliases and space in aliases:
            found.add(aliases[image])
    return found


def check_modality_name(path: str | os.PathLike, expected: str, name: str | None = None,
                        known: Iterable[str] = tuple(MODALITY_ALIASES)) -> None:
    """Raise if ``path`` is named after another modality than ``expected`` and not after ``expected``.

    A name that mentions no modality, or ``expected`` among others, passes: only a name that speaks
    exclusively of other modalities is taken as a file of the wrong modality. A name with an
    ``<image>_in_<space>`` word (:func:`registered_image_modalities`) speaks of its image's modality
    only: ``sub_ct_in_t2_hu.nii.gz`` is a CT, refused where a T2 is expected.

    Args:
        path: the file, for the error message.
        expected: the modality the file is used as, or the datalist key it is listed under: a
            registered volume or a truth key is checked against its image's modality
            (:func:`modality_of_key`: ``"t2_in_t1"`` and ``"truth_t2_in_t1"`` expect a T2).
        name: the part of the path to inspect (default: the whole path); the datalist passes the
            path as listed, relative to its folder, so folders above the cohort do not count.
        known: modality names to recognise.

    Raises:
        ModalityMismatchError: naming the file, the modality it is named after and the expected one.
    """
    expected = modality_of_key(expected)
    name = os.fspath(path) if name is None else name
    found = registered_image_modalities(name, {*known, expected}) or modality_named_in(name, {*known, expected})
    if found and expected not in found:
        raise ModalityMismatchError(
            path, f"is named as a {'/'.join(sorted(found)).upper()} image but is used as {expected.upper()}"
        )


def _check_slice_header(path: str, subject: str, modality: str, slice_channels: int | None) -> None:
    try:
        shape = nib.load(path).shape
    except Exception as error:  # nibabel raises several types for unreadable files
        raise InputReadError(path, f"cannot read the {modality} slice of subject {subject!r}: {error}") from error
    if len(shape) not in (2, 3):
        raise DatalistError(
            path, f"{modality} slice of subject {subject!r} has shape {shape}; expected (H, W) or (H, W, channels)"
        )
    channels = 1 if len(shape) == 2 else shape[2]
    if slice_channels is not None and channels != slice_channels:
        raise DatalistError(
            path, f"{modality} slice of subject {subject!r} has {channels} channel(s), expected {slice_channels}"
        )


def read_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a datalist JSON file.

    Raises:
        DatalistFileError: if the file is missing, is not JSON or is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DatalistFileError(path, "datalist file does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatalistFileError(path, f"cannot read the datalist as JSON: {error}") from error
    if not isinstance(content, dict):
        raise DatalistFileError(path, f"the datalist must be a JSON object, got {type(content).__name__}")
    return content


def subject_name(item: Mapping[Hashable, Any], subject_key: str = dataset_keys.SUBJECT,
                 fallback_key: Hashable | None = None) -> str:
    """The subject of an item: ``item[subject_key]``, else the stem of the file ``item[fallback_key]``.

    For items that did not come through :func:`load_datalist_items` (which requires the subject), e.g.
    the items a MONAI transform receives from another loader.

    Raises:
        KeyError: neither key is in the item.
    """
    subject = item.get(subject_key)
    if subject is None:
        if fallback_key is None or fallback_key not in item:
            raise KeyError(f"datalist item has no {subject_key!r} entry to name its subject: {dict(item)}")
        return Path(str(item[fallback_key])).name.split(".")[0]
    # monai.data.load_decathlon_datalist turns every value naming an existing path into an absolute
    # path, and a cohort has one folder per subject: keep the name only.
    return Path(str(subject)).name


def resolve_item_path(item: Mapping[str, Any], key: str, base_dir: str | os.PathLike | None, what: str, subject: str,
                      datalist: str | os.PathLike | None = None) -> Path:
    """The existing file ``item[key]`` (a relative path against ``base_dir``).

    Args:
        item: a datalist item.
        key: the item key of the file.
        base_dir: folder of relative paths (``None``: the working directory).
        what: what the file is, for the messages (``"volume to translate"``).
        subject: the item's subject, for the messages.
        datalist: the datalist file the item comes from, for the messages.

    Raises:
        DatalistError: the item has no ``key`` (the datalist named).
        DatalistFileError: the file does not exist (the file, ``what``, the key, the subject and the
            datalist named).
    """
    listed_in = f" (listed in {datalist})" if datalist is not None else ""
    value = item.get(key)
    if not isinstance(value, (str, os.PathLike)):
        raise DatalistError(datalist, f"subject {subject!r} has no {key!r} ({what})")
    path = Path(value)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.is_file():
        raise DatalistFileError(path, f"{what} ({key!r} of subject {subject!r}) does not exist{listed_in}")
    return path


def _split_of(content: Mapping[str, Any], path: Path, split: str) -> list[Any]:
    if split not in content:
        lists = [key for key, value in content.items() if isinstance(value, list) and key != dataset_keys.MODALITIES]
        raise DatalistError(path, f"datalist has no split {split!r} (it has: {', '.join(lists) or 'none'})")
    raw_items = content[split]
    if not isinstance(raw_items, list):
        raise DatalistError(path, f"split {split!r} must be a list of items, got {type(raw_items).__name__}")
    return raw_items


def _resolved_items(raw_items: Sequence[Any], source: Path | None, split: str, base: Path | None,
                    path_keys: Iterable[str], subject_key: str) -> list[dict[str, Any]]:
    """Copies of the items with their subjects checked and their file paths resolved."""
    if not raw_items:
        raise DatalistError(source, f"datalist split {split!r} is empty: no subject to use")
    path_keys = set(path_keys)
    items = []
    for position, raw in enumerate(raw_items):
        if not isinstance(raw, Mapping):
            raise DatalistError(source, f"item {position} of split {split!r} is not an object: {raw!r}")
        subject = raw.get(subject_key)
        if not isinstance(subject, str) or not subject:
            raise DatalistError(source, f"item {position} of split {split!r} has no {subject_key!r}")
        items.append({key: _resolve(base, value) if _is_path_key(key, path_keys) else value
                      for key, value in raw.items()})
    subjects = [item[subject_key] for item in items]
    repeated = sorted({s for s in subjects if subjects.count(s) > 1})
    if repeated:
        raise DatalistError(source, f"subjects listed more than once in split {split!r}: {', '.join(repeated)}")
    return items


def load_datalist_items(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    split: str = dataset_keys.TEST,
    base_dir: str | os.PathLike | None = None,
    path_keys: Mapping[str, str] | None = None,
    subject_key: str = dataset_keys.SUBJECT,
) -> list[dict[str, Any]]:
    """The items of one split, with their file paths resolved and the files of ``path_keys`` checked.

    Args:
        datalist: a datalist JSON file, or a list of items.
        split: the split of a datalist file (named in the messages for a list of items too).
        base_dir: folder relative paths are relative to (default: the datalist file's folder; for a
            list of items, none: paths stay as given).
        path_keys: item key -> what the file is (for messages); each key must be in every item and
            name an existing file.
        subject_key: item key of the subject name; every item must have one, unique in the split.

    Returns:
        Copies of the items, every file path resolved (see the module docstring).

    Raises:
        DatalistFileError: a missing or unreadable datalist file, a missing file of ``path_keys``.
        DatalistError: a split that is absent or empty, an item without its subject or a key of
            ``path_keys``, a repeated subject.
    """
    path_keys = dict(path_keys or {})
    known = {*MODALITY_ALIASES, *path_keys}
    if isinstance(datalist, (str, os.PathLike)):
        source: Path | None = Path(datalist).resolve()
        content = read_datalist(source)
        known.update(str(m).lower() for m in content.get(dataset_keys.MODALITIES) or ())
        raw_items = _split_of(content, source, split)
        base = source.parent if base_dir is None else Path(base_dir).resolve()
    else:
        source, raw_items = None, list(datalist)
        base = None if base_dir is None else Path(base_dir).resolve()
    items = _resolved_items(raw_items, source, split, base, known, subject_key)
    for item in items:
        for key, what in path_keys.items():
            item[key] = str(resolve_item_path(item, key, None, what, item[subject_key], source))
    return items


def load_translation_datalist(
    path: str | os.PathLike,
    split: str = dataset_keys.TRAINING,
    modalities: Sequence[str] = (),
    require_slices: bool = True,
    check_files: bool = True,
    slice_channels: int | None = None,
) -> list[dict[str, Any]]:
    """Items of one split of a translation datalist, with absolute paths, checked for training.

    Reads the split as :func:`load_datalist_items` does (paths resolved against the datalist's
    folder, subjects required and unique), then checks what a training needs.

    Args:
        path: the ``dataset.json`` file.
        split: ``"training"``, ``"validation"``, ``"test"`` (or any list key of the file).
        modalities: keys every item must have: modalities (e.g. ``("t1", "t2")``), registered
            volumes (``"t2_in_t1"``) or ground truths (``"truth_ct_in_t2"``). The modality of each
            key's image (:func:`modality_of_key`) must be among the datalist's ``"modalities"`` when
            it declares them, and every file listed under the key must not be named after another one.
        require_slices: require ``"<key>_slices"`` (non-empty) for each key; otherwise require the
            ``"<key>"`` volume.
        check_files: check that every listed slice (or volume) file exists and that the first slice
            of each subject is a 2D / 2.5D image.
        slice_channels: expected channels per slice (1 for 2D, ``2N + 1`` for 2.5D); ``None``: any.

    Returns:
        The split's items, each a dict with ``"subject"`` and absolute paths for every key holding
        files (see the module docstring).

    Raises:
        DatalistFileError: a missing or malformed datalist, a missing slice or volume file (named,
            with the subject and the datalist).
        DatalistError: a missing or empty split, an item without subject or without a requested
            modality, a repeated subject; the message names the file and the subject.
        ModalityMismatchError: a file listed under one modality is named after another one.
        InputReadError: the first slice of a subject cannot be read.
    """
    path = Path(path).resolve()
    content = read_datalist(path)
    modalities = [m.lower() for m in modalities]
    declared = content.get(dataset_keys.MODALITIES)
    if declared is not None:
        declared = [str(m).lower() for m in declared]
        undeclared = [
            m if modality_of_key(m) == m else f"{modality_of_key(m)} ({m})"
            for m in modalities if modality_of_key(m) not in declared
        ]
        if undeclared:
            raise DatalistError(
                path, f"modalities {undeclared} are not among the datalist's modalities {declared}"
            )
    raw_items = _split_of(content, path, split)
    known = {*MODALITY_ALIASES, *(declared or ()), *(modality_of_key(m) for m in modalities)}
    items = _resolved_items(raw_items, path, split, path.parent, {*known, *modalities}, dataset_keys.SUBJECT)
    for raw, item in zip(raw_items, items):
        subject = item[dataset_keys.SUBJECT]
        for modality in modalities:
            key = slices_key(modality) if require_slices else modality
            value = raw.get(key)
            if require_slices and (not isinstance(value, list) or not value):
                raise DatalistError(
                    path, f"subject {subject!r} in split {split!r} has no {key!r} (a non-empty list of slice files)"
                )
            if not require_slices and not isinstance(value, str):
                raise DatalistError(path, f"subject {subject!r} in split {split!r} has no {key!r} volume")
            for listed in value if isinstance(value, list) else [value]:
                check_modality_name(path.parent / listed, modality, name=listed, known=known)
        if check_files:
            for modality in modalities:
                key = slices_key(modality) if require_slices else modality
                what = f"{modality} slice file" if require_slices else f"{modality} volume"
                files = item[key] if require_slices else [item[key]]
                for file in files:
                    resolve_item_path({key: file}, key, None, what, subject, path)
                if require_slices:
                    _check_slice_header(files[0], subject, modality, slice_channels)
    return items


def flatten_slices(items: Sequence[dict[str, Any]], modality: str, key: str | None = None) -> list[dict[str, Any]]:
    """One record per slice of ``modality`` over all items, for a MONAI dataset.

    Args:
        items: datalist items (from :func:`load_translation_datalist`).
        modality: the modality recorded with each slice.
        key: the item key holding the slice list (default ``"<modality>_slices"``).

    Returns:
        ``[{"image": path, "subject": ..., "modality": ..., "slice": position in the subject's list}]``.

    Raises:
        DatalistError: an item lacks the key.
    """
    key = key or slices_key(modality)
    records = []
    for item in items:
        if key not in item:
            raise DatalistError(None, f"subject {item.get('subject')!r} has no {key!r}")
        for position, file in enumerate(item[key]):
            records.append({"image": file, dataset_keys.SUBJECT: item.get(dataset_keys.SUBJECT), "modality": modality, "slice": position})
    return records


def pair_slices(
    items: Sequence[dict[str, Any]], source_key: str, target_key: str, names: tuple[str, str] = ("A", "B")
) -> list[dict[str, Any]]:
    """Records of paired slices (same subject, same position in both lists), for pix2pix or validation.

    Args:
        items: datalist items.
        source_key: item key of the source slice list (e.g. ``"t1_slices"``).
        target_key: item key of the paired target slice list (e.g. ``"t2_slices"`` of a registered
            pair, or ``"truth_t2_in_t1_slices"``).
        names: record keys of the source and target files.

    Returns:
        ``[{names[0]: source file, names[1]: target file, "subject": ..., "slice": position}]``.

    Raises:
        DatalistError: an item lacks a key or its two lists differ in length.
    """
    records = []
    for item in items:
        subject = item.get(dataset_keys.SUBJECT)
        for key in (source_key, target_key):
            if not isinstance(item.get(key), list):
                raise DatalistError(None, f"subject {subject!r} has no {key!r} slice list for pairing")
        sources, targets = item[source_key], item[target_key]
        if len(sources) != len(targets):
            raise DatalistError(
                None,
                f"subject {subject!r}: {source_key!r} has {len(sources)} slices but {target_key!r} has "
                f"{len(targets)}; paired slices must correspond one to one",
            )
        for position, (source, target) in enumerate(zip(sources, targets)):
            records.append({names[0]: source, names[1]: target, dataset_keys.SUBJECT: subject, "slice": position})
    return records
