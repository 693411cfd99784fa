"""Input discovery: the subjects of an input folder, their volumes and their pseudonyms."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgan_common.errors import InputReadError
from preprocessing.nifti import parse_mr_filename
from preprocessing.pseudonym import Redactor, pseudonymise_all
from preprocessing.runner.common import NIFTI_SUFFIXES

__all__ = ["SYNTHRAD_FILES", "CohortInputs", "SubjectSource", "discover_subjects"]

#: The files of a SynthRAD2023 subject folder (Task 1, MR -> CT): modality -> file name stem. The
#: task's MR is T1-weighted; the mask (body mask) belongs to both volumes, which share one grid.
SYNTHRAD_FILES = {"t1": "mr", "ct": "ct"}
SYNTHRAD_MASK = "mask"


@dataclass
class SubjectSource:
    """One subject of the input.

    Attributes:
        source: the source folder name (or IXI file name stem); never written to any output.
        subject: the pseudonym.
        volumes: modality (``ct``, ``t1``, ``t2``...) → DICOM folder or NIfTI file.
        truth: demo truth folder of the subject, if any.
        problems: reasons the subject cannot be processed, found while listing the input.
        mask: a head mask delivered with the volumes, on their grid (SynthRAD2023's ``mask.nii.gz``).
    """

    source: str
    subject: str
    volumes: dict[str, Path]
    truth: Path | None = None
    problems: list[str] = field(default_factory=list)
    mask: Path | None = None


@dataclass
class CohortInputs:
    """Result of :func:`discover_subjects`.

    Attributes:
        layout: ``demo``, ``ixi``, ``cq500`` or ``synthrad2023``.
        root: the folder that was listed.
        subjects: the subjects, sorted by pseudonym.
        unassigned: input files that belong to no subject, with the reason (file names are redacted).
    """

    layout: str
    root: Path
    subjects: list[SubjectSource]
    unassigned: list[str] = field(default_factory=list)


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _synthrad_file(folder: Path, stem: str) -> Path | None:
    """``<folder>/<stem>.nii.gz`` (SynthRAD2023's name) or ``<stem>.nii``, if present."""
    return next((folder / f"{stem}{suffix}" for suffix in (".nii.gz", ".nii") if _is_nifti(folder / f"{stem}{suffix}")),
                None)


def _is_synthrad_subject(folder: Path) -> bool:
    return any(_synthrad_file(folder, stem) is not None for stem in (*SYNTHRAD_FILES.values(), SYNTHRAD_MASK))


def _detect_layout(folder: Path, layout: str) -> tuple[str, Path | None, list[Path], Path | None]:
    """``(layout, CT root, MR folders, truth root)`` of an input folder."""
    truth_root = None
    if layout in ("auto", "demo"):
        if (folder / "raw").is_dir() and any((folder / "raw" / sub).is_dir() for sub in ("ct", "mri")):
            truth_root, folder = folder / "truth", folder / "raw"
        elif folder.name == "raw":
            truth_root = folder.parent / "truth"
        if any((folder / sub).is_dir() for sub in ("ct", "mri")):
            ct_root = folder / "ct" if (folder / "ct").is_dir() else None
            mr_roots = [folder / "mri"] if (folder / "mri").is_dir() else []
            return "demo", ct_root, mr_roots, truth_root if truth_root is not None and truth_root.is_dir() else None
        if layout == "demo":
            raise InputReadError(folder, "not a demo cohort: expected raw/ct/<subject>/ and raw/mri/<subject>-T1.nii.gz")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if layout in ("auto", "synthrad2023"):
        # Files named mr/ct/mask.nii.gz are SynthRAD's alone: an IXI name holds its subject.
        if any(_is_synthrad_subject(p) for p in subfolders):
            return "synthrad2023", None, [], None
        if layout == "synthrad2023":
            raise InputReadError(folder, "not a SynthRAD2023 folder: expected <subject>/mr.nii.gz, ct.nii.gz and "
                                         "mask.nii.gz")
    if layout in ("auto", "ixi"):
        if any(_is_nifti(p) for p in folder.iterdir()):
            return "ixi", None, [folder], None
        nifti_folders = [p for p in subfolders if any(_is_nifti(f) for f in p.iterdir())]
        if nifti_folders:
            return "ixi", None, nifti_folders, None
        if layout == "ixi":
            raise InputReadError(folder, "no NIfTI file (<subject>-<modality>.nii.gz) in the folder or its subfolders")
    if subfolders:
        return "cq500", folder, [], None
    raise InputReadError(folder, "no input found: expected a demo cohort (raw/ct, raw/mri), NIfTI files "
                                 "(IXI), one DICOM folder per subject (CQ500, PACS export) or SynthRAD2023 "
                                 "subject folders (mr.nii.gz, ct.nii.gz, mask.nii.gz)")


def _synthrad_subjects(root: Path, wanted: list[str] | None, needs_mask: bool, volumes: dict[str, dict[str, Path]],
                       masks: dict[str, Path], problems: dict[str, list[str]],
                       unassigned: list[tuple[Path, str]]) -> None:
    """The subjects of a SynthRAD2023 folder: ``<subject>/mr.nii.gz``, ``ct.nii.gz``, ``mask.nii.gz``.

    A folder holding none of the three files is no subject (SynthRAD's ``overview/``); a subject
    missing one that the run needs is listed with that problem and fails, alone.
    """
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _is_synthrad_subject(folder):
            unassigned.append((folder, "holds no mr.nii.gz, ct.nii.gz or mask.nii.gz: not a SynthRAD2023 subject"))
            continue
        found = volumes.setdefault(folder.name, {})
        for modality, stem in SYNTHRAD_FILES.items():
            if wanted is not None and modality not in wanted:
                continue
            path = _synthrad_file(folder, stem)
            if path is None:
                problems.setdefault(folder.name, []).append(
                    f"{folder / f'{stem}.nii.gz'}: missing; a SynthRAD2023 subject holds mr.nii.gz, ct.nii.gz and "
                    "mask.nii.gz")
            else:
                found[modality] = path
        mask = _synthrad_file(folder, SYNTHRAD_MASK)
        if mask is not None:
            masks[folder.name] = mask
        elif needs_mask:
            problems.setdefault(folder.name, []).append(
                f"{folder / f'{SYNTHRAD_MASK}.nii.gz'}: missing; the configuration uses the mask delivered with "
                "the volumes (artefact.mode or mr.head_mask.method 'given')")


def discover_subjects(input_dir: str | os.PathLike, config: Mapping[str, Any]) -> CohortInputs:
    """List the subjects of an input folder and give them pseudonyms.

    Layouts (``config["input"]["layout"]``, detected when ``auto``):

    * ``demo``: ``DIR/raw/ct/<subject>/…`` DICOM and ``DIR/raw/mri/<subject>-<T1|T2>.nii.gz``
      (``DIR`` may be the cohort root or its ``raw/`` folder); ``DIR/truth/<subject>`` if present.
    * ``ixi``: ``<subject>-<modality>.nii.gz`` files in the folder or in its subfolders
      (``IXI-T1/``, ``IXI-T2/``).
    * ``cq500``: one folder per subject, any DICOM tree below it (CT only).
    * ``synthrad2023``: one folder per subject holding ``mr.nii.gz`` (taken as T1), ``ct.nii.gz``
      (HU) and ``mask.nii.gz`` (the head mask of both, on their shared grid); detected by ``auto``
      from those file names.

    Args:
        input_dir: the input folder.
        config: the run configuration (``input``, ``pseudonym`` sections).

    Returns:
        The subjects and the input files that could not be assigned to one.

    Raises:
        InputReadError: the folder does not exist or holds nothing recognisable.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise InputReadError(root, "input folder does not exist" if not root.exists() else "input is not a folder")
    layout, ct_root, mr_roots, truth_root = _detect_layout(root, config["input"]["layout"])
    wanted = config["input"]["modalities"]
    volumes: dict[str, dict[str, Path]] = {}
    masks: dict[str, Path] = {}
    problems: dict[str, list[str]] = {}
    unassigned: list[tuple[Path, str]] = []
    if layout == "synthrad2023":
        artefact, head_mask = config["artefact"], config["mr"]["head_mask"]
        needs_mask = (artefact["enabled"] and artefact["mode"] == "given") or head_mask["method"] == "given"
        _synthrad_subjects(root, wanted, needs_mask, volumes, masks, problems, unassigned)

    if ct_root is not None and (wanted is None or "ct" in wanted):
        for folder in sorted(p for p in ct_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            volumes.setdefault(folder.name, {})["ct"] = folder
    for mr_root in mr_roots:
        for path in sorted(p for p in mr_root.iterdir() if _is_nifti(p)):
            try:
                source, modality = parse_mr_filename(path)
            except InputReadError as error:
                unassigned.append((path, error.reason))
                continue
            modality = modality.lower()
            if wanted is not None and modality not in wanted:
                continue
            existing = volumes.setdefault(source, {}).get(modality)
            if existing is not None:
                problems.setdefault(source, []).append(
                    f"{path.name}: {modality.upper()} of this subject is also in {existing.name}")
                continue
            volumes[source][modality] = path

    pseudonym = config["pseudonym"]
    salt = pseudonym["salt"]
    if pseudonym.get("salt_env") and os.environ.get(pseudonym["salt_env"]):
        salt = os.environ[pseudonym["salt_env"]]
    names = pseudonymise_all(sorted(volumes), salt, pseudonym["prefix"], pseudonym["length"])
    subjects = []
    for source in sorted(volumes):
        truth = None
        if truth_root is not None and config["input"]["truth"] and (truth_root / source).is_dir():
            truth = truth_root / source
        subjects.append(SubjectSource(source, names[source], dict(sorted(volumes[source].items())), truth,
                                      problems.get(source, []), masks.get(source)))
    subjects.sort(key=lambda s: s.subject)
    redact = Redactor(names, anywhere={str(root): "<input>"})
    messages = [redact(f"{path.relative_to(root)}: {why}") for path, why in unassigned]
    return CohortInputs(layout, root, subjects, messages)
