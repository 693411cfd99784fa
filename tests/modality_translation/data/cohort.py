"""A tiny preprocessed cohort on disk: NIfTI slices and a ``dataset.json`` datalist, as the cohort runner writes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SIZE = 32


def slice_array(subject_index: int, modality_index: int, position: int, size: int = SIZE, channels: int = 1) -> np.ndarray:
    """A recognisable slice: a horizontal ramp in [-1, 0.5] plus an offset identifying subject, modality, position.

    ``channels > 1`` gives ``(H, W, channels)`` (the 2.5D file layout) with channel ``c`` offset by ``c / 100``.
    """
    ramp = np.tile(np.linspace(-1.0, 0.5, size, dtype=np.float32), (size, 1))
    value = ramp + 0.1 * subject_index + 0.03 * modality_index + 0.005 * position
    if channels == 1:
        return value.astype(np.float32)
    return np.stack([value + c / 100 for c in range(channels)], axis=-1).astype(np.float32)


def save_nifti(path: Path, array: np.ndarray, description: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, np.eye(4))
    if description is not None:
        image.header["descrip"] = description.encode()
    nib.save(image, path)


def write_cohort(
    root: Path,
    splits: dict[str, list[str]] | None = None,
    modalities: tuple[str, ...] = ("t1", "t2"),
    slices: dict[str, int] | None = None,
    channels: int = 1,
    size: int = SIZE,
    declared: list[str] | None = None,
) -> Path:
    """Write slices for every subject and modality, and the datalist; return the datalist path.

    Args:
        root: cohort folder.
        splits: subjects per split (default two training subjects, one validation, one test).
        modalities: modalities of every subject.
        slices: slices per modality (default 3 each).
        channels: channels per slice.
        size: slice side.
        declared: the datalist's ``"modalities"`` (default ``modalities``).
    """
    splits = splits or {"training": ["sub-001", "sub-002"], "validation": ["sub-003"], "test": ["sub-004"]}
    slices = slices or {m: 3 for m in modalities}
    subject_numbers = {s: i for i, s in enumerate(sorted({s for ss in splits.values() for s in ss}))}
    content: dict = {"name": "tiny", "modalities": list(declared if declared is not None else modalities)}
    for split, subjects in splits.items():
        items = []
        for subject in subjects:
            item = {"subject": subject}
            for m_index, modality in enumerate(modalities):
                files = []
                for position in range(slices[modality]):
                    relative = f"{subject}/slices/{modality}/{subject}_axial_{position:04d}.nii.gz"
                    save_nifti(root / relative, slice_array(subject_numbers[subject], m_index, position, size, channels))
                    files.append(relative)
                item[f"{modality}_slices"] = files
                item[modality] = f"{subject}/{modality}.nii.gz"
            items.append(item)
        content[split] = items
    path = root / "dataset.json"
    path.write_text(json.dumps(content, indent=2))
    return path


def edit_datalist(path: Path, edit) -> None:
    """Apply ``edit(content)`` to the datalist JSON in place."""
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))
