"""Read and check the translation datalist (``dataset.json``) before any training starts.

The datalist is a MONAI Decathlon-style JSON file written by the preprocessing cohort runner:

.. code-block:: json

    {"modalities": ["ct", "t1", "t2"],
     "training": [{"subject": "sub-001", "t1": "sub-001/t1.nii.gz",
                   "t1_slices": ["sub-001/slices/t1/sub-001_axial_0040.nii.gz", "..."], "...": "..."}],
     "validation": ["..."], "test": ["..."]}

with paths relative to the datalist's folder. :func:`load_translation_datalist` returns the items of
one split with absolute paths, after checking everything a training needs so that a bad cohort
fails at once with the file and the problem named, not hours later inside a data loader worker:
the file exists and is JSON, the split exists and is not empty, every item names its subject and has
every requested modality, every listed slice file exists, the first slice of each subject is a 2D
(or 2.5D) image, and no file listed under one modality is named after another one. The keys the
preprocessing writes for a volume registered into another modality's space (``t2_in_t1``: the T2 on
its subject's T1 grid; ``ct_in_t2``: the CT on its subject's own T2 grid, the pair of MR -> CT
training, listed in the datalist's ``"pairs"`` as ``["ct", "t2"]``), for a CT in Hounsfield units
(``ct_hu``, ``ct_in_t2_hu``) and for a demo cohort's ground truth (``truth_ct_in_t2``) are requested
like modalities; their files are checked against the modality of their image (T2, CT), not of the
space.

Paths are resolved here rather than by :func:`monai.data.load_decathlon_datalist`: MONAI joins a
value with the datalist folder only when the joined path exists (so a missing slice would be reported
relative to the current directory, not where it was expected) and it also turns a ``"subject"`` value
into a path whenever a subject folder of that name exists. The resulting items have the same form as
MONAI's (absolute paths, other values untouched) and can be given to any MONAI dataset.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib

from medgan_common.errors import InputReadError, PreprocessingError

SPLITS = ("training", "validation", "test")

#: Name tokens that identify a modality in a file or folder name (IXI ``-T1``, BIDS ``_T1w``, ``ct``).
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1w"),
    "t2": ("t2", "t2w"),
    "pd": ("pd", "pdw"),
    "flair": ("flair",),
    "mra": ("mra",),
    "ct": ("ct",),
}

#: Prefix of the keys of a demo cohort's ground truth (``truth_t2_in_t1``: the true T2 on the T1 grid).
TRUTH_PREFIX = "truth_"
#: Separator of the keys of a volume registered into another modality's space (``t2_in_t1``: the T2
#: resampled onto its subject's T1 grid; ``ct_in_t2``: the CT on its subject's T2 grid), as the
#: preprocessing names them.
SPACE_SEPARATOR = "_in_"
#: Suffix of the keys of a CT volume kept in Hounsfield units (``ct_hu``, ``ct_in_t2_hu``) beside the
#: windowed one.
HU_SUFFIX = "_hu"

#: ``<image>_in_<space>`` words of a file name (words: runs of letters and digits).
_REGISTERED_NAME = re.compile(r"(?<![a-z0-9])([a-z0-9]+)_in_([a-z0-9]+)(?![a-z0-9])")

#: Item keys whose values are file paths (besides the requested keys themselves).
_PATH_KEY_SUFFIXES = ("_slices", "_mask", "_mask_slices", HU_SUFFIX)
_PATH_KEY_PREFIXES = (TRUTH_PREFIX,)


class DatalistError(PreprocessingError):
    """The datalist, one of its items or one of the files it lists cannot be used for training."""


class ModalityMismatchError(PreprocessingError):
    """A file listed (or given) as one modality is named as another one."""


def slices_key(modality: str) -> str:
    """Datalist key of a modality's slice list (``"t1"`` -> ``"t1_slices"``)."""
    return f"{modality}_slices"


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


def _is_path_key(key: str, modalities: Iterable[str]) -> bool:
    return key in modalities or key.endswith(_PATH_KEY_SUFFIXES) or key.startswith(_PATH_KEY_PREFIXES)


def _resolve(base: Path, value: Any) -> Any:
    if isinstance(value, str):
        return os.path.normpath(base / value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [os.path.normpath(base / v) for v in value]
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
        DatalistError: if the file is missing, is not JSON or is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DatalistError(path, "datalist file does not exist")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatalistError(path, f"cannot read the datalist as JSON: {error}") from error
    if not isinstance(content, dict):
        raise DatalistError(path, f"the datalist must be a JSON object, got {type(content).__name__}")
    return content


def load_translation_datalist(
    path: str | os.PathLike,
    split: str = "training",
    modalities: Sequence[str] = (),
    require_slices: bool = True,
    check_files: bool = True,
    slice_channels: int | None = None,
) -> list[dict[str, Any]]:
    """Items of one split of a translation datalist, with absolute paths, checked for training.

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
        The split's items, each a dict with ``"subject"`` and absolute paths for the requested keys,
        the declared modalities, ``*_slices``, ``*_mask``, ``*_mask_slices`` and ``truth_*`` keys.

    Raises:
        DatalistError: missing or malformed file, missing or empty split, item without subject or
            without a requested modality, a missing slice or volume file; the message names the file
            and the subject.
        ModalityMismatchError: a file listed under one modality is named after another one.
        InputReadError: the first slice of a subject cannot be read.
    """
    path = Path(path).resolve()
    content = read_datalist(path)
    modalities = [m.lower() for m in modalities]
    declared = content.get("modalities")
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
    if split not in content:
        lists = [key for key, value in content.items() if isinstance(value, list) and key != "modalities"]
        raise DatalistError(path, f"has no {split!r} split (it has: {', '.join(lists) or 'none'})")
    raw_items = content[split]
    if not isinstance(raw_items, list):
        raise DatalistError(path, f"split {split!r} must be a list of items, got {type(raw_items).__name__}")
    if not raw_items:
        raise DatalistError(path, f"split {split!r} is empty: no subject to use")

    known = {*MODALITY_ALIASES, *(declared or ()), *(modality_of_key(m) for m in modalities)}
    path_keys = {*known, *modalities}
    base = path.parent
    items = []
    for position, raw in enumerate(raw_items):
        if not isinstance(raw, dict):
            raise DatalistError(path, f"item {position} of split {split!r} is not an object: {raw!r}")
        subject = raw.get("subject")
        if not isinstance(subject, str) or not subject:
            raise DatalistError(path, f"item {position} of split {split!r} has no 'subject'")
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
                check_modality_name(base / listed, modality, name=listed, known=known)
        item = {key: _resolve(base, value) if _is_path_key(key, path_keys) else value for key, value in raw.items()}
        if check_files:
            for modality in modalities:
                key = slices_key(modality) if require_slices else modality
                files = item[key] if require_slices else [item[key]]
                for file in files:
                    if not os.path.isfile(file):
                        kind = "slice" if require_slices else "volume"
                        raise DatalistError(
                            file, f"{modality} {kind} file of subject {subject!r} does not exist (listed in {path})"
                        )
                if require_slices:
                    _check_slice_header(files[0], subject, modality, slice_channels)
        items.append(item)
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
            records.append({"image": file, "subject": item.get("subject"), "modality": modality, "slice": position})
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
        subject = item.get("subject")
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
            records.append({names[0]: source, names[1]: target, "subject": subject, "slice": position})
    return records
