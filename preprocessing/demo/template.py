"""The MNI152 ICBM 2009a symmetric template, read from the installed nilearn package, as tissue maps.

nilearn's wheel ships the template's brain-extracted T1 and its grey- and white-matter probability
maps at 1 mm (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``),
so a real brain anatomy is available offline. The package is only located, never imported: the
files are plain NIfTI and importing nilearn would cost seconds and pull in scikit-learn for nothing.

From the three files this module derives, once per process, what the demo anatomy samples:

- grey- and white-matter fractions (the probability maps, read as partial-volume fractions);
- the intracranial fraction: the template's brain mask, where the rest of each voxel
  (1 - GM - WM) is cerebrospinal fluid;
- the ventricles: the deep CSF of the template (its lateral and third ventricles);
- the signed distance (mm, positive outside) to a smooth dural envelope around the brain, from
  which the skull and scalp layers are built.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Template files inside nilearn's ``datasets/data`` folder.
TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# The dural envelope is the brain mask closed over sulci and smoothed: the skull follows the brain's
# outline, not its folds. Computed on a 2 mm copy, where the distance map costs a tenth of 1 mm.
ENVELOPE_SMOOTHING_MM = 4.0
ENVELOPE_STEP = 2
# Room around the brain for CSF, skull and scalp (mm), so that the distance map covers the whole head.
ENVELOPE_MARGIN_MM = 40.0
# Ventricles: CSF-dominated voxels at least this deep inside the brain mask, in the component(s) at
# the bodies of the lateral ventricles (RAS mm of the ICBM 2009a template).
VENTRICLE_MIN_DEPTH_MM = 8.0
VENTRICLE_SEEDS_RAS = ((16.0, -12.0, 20.0), (-16.0, -12.0, 20.0))


class TemplateMissingError(FileNotFoundError):
    """The MNI152 template files cannot be found in the installed nilearn package."""


def nilearn_location() -> Path | None:
    """The installed nilearn package's folder, found without importing it (``None`` if absent)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def template_folder() -> Path:
    """The folder of nilearn's packaged data, checked to hold the three template files.

    Returns:
        ``<site-packages>/nilearn/datasets/data``.

    Raises:
        TemplateMissingError: nilearn is not installed, or a template file is missing from it.
    """
    package = nilearn_location()
    if package is None:
        raise TemplateMissingError(
            "the MNI152 anatomy needs the nilearn package, which ships the template: "
            "pip install nilearn (or use --anatomy procedural)"
        )
    folder = package / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise TemplateMissingError(
            f"{folder}: MNI152 template file(s) missing from the installed nilearn package: {', '.join(missing)} "
            "(reinstall nilearn, or use --anatomy procedural)"
        )
    return folder


@dataclass(frozen=True)
class TemplateMaps:
    """Tissue maps of the template on its own 1 mm grid, padded for the head around the brain.

    Arrays are indexed ``[i, j, k]`` of the template's NIfTI grid (RAS axes), float32.

    Args:
        grey_matter: grey-matter fraction.
        white_matter: white-matter fraction.
        intracranial: 1 inside the template's brain mask (CSF fills what GM and WM leave), else 0.
        ventricle: 1 in the ventricles (a subset of the CSF), else 0.
        envelope_distance: signed distance (mm) to the dural envelope, positive outside, on the
            coarser grid ``envelope_affine``.
        affine: voxel index -> RAS mm of the tissue maps.
        envelope_affine: voxel index -> RAS mm of ``envelope_distance``.
        brain_centre_ras: centre of the brain's bounding box (RAS mm).
    """

    grey_matter: np.ndarray
    white_matter: np.ndarray
    intracranial: np.ndarray
    ventricle: np.ndarray
    envelope_distance: np.ndarray
    affine: np.ndarray
    envelope_affine: np.ndarray
    brain_centre_ras: np.ndarray


def _read(folder: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    path = folder / TEMPLATE_FILES[key]
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as error:  # a truncated or foreign file: name it
        raise TemplateMissingError(f"{path}: cannot read the MNI152 template file ({error})") from None
    if data.ndim != 3:
        raise TemplateMissingError(f"{path}: expected a 3D template volume, found shape {data.shape}")
    return data, image.affine


def _block_reduce(mask: np.ndarray, step: int, reduce) -> np.ndarray:
    """``step``-voxel blocks of a boolean mask reduced with ``np.any`` or ``np.all``."""
    shape = [s // step for s in mask.shape]
    blocks = mask[: shape[0] * step, : shape[1] * step, : shape[2] * step].reshape(
        shape[0], step, shape[1], step, shape[2], step)
    return reduce(blocks, axis=(1, 3, 5))


def _ventricles(csf: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The template's lateral ventricles: the deep-CSF component at their known MNI position.

    Deep CSF (more than :data:`VENTRICLE_MIN_DEPTH_MM` inside the brain mask) splits into the
    ventricles, the midline cisterns and the Sylvian fissures; the component that holds the
    ventricles' bodies is chosen by position, which is fixed for this one template.
    """
    step = ENVELOPE_STEP
    # Depth on 2 mm blocks that are wholly brain: a tenth of the cost, ample for an 8 mm criterion.
    depth = ndimage.distance_transform_edt(_block_reduce(brain, step, np.all)) * step
    depth = np.repeat(np.repeat(np.repeat(depth, step, 0), step, 1), step, 2)
    depth = np.pad(depth, [(0, b - d) for b, d in zip(brain.shape, depth.shape)])
    deep_csf = (csf > 0.5) & (depth > VENTRICLE_MIN_DEPTH_MM)
    labels, _ = ndimage.label(deep_csf)
    inverse = np.linalg.inv(affine)
    chosen = set()
    for seed in VENTRICLE_SEEDS_RAS:
        i, j, k = np.rint(inverse[:3, :3] @ np.asarray(seed, float) + inverse[:3, 3]).astype(int)
        near = labels[i - 4: i + 5, j - 4: j + 5, k - 4: k + 5]
        chosen.update(int(v) for v in np.unique(near) if v)
    if not chosen:
        raise TemplateMissingError("the MNI152 template's ventricles were not found where expected: "
                                   "not the ICBM 2009a symmetric template?")
    core = np.isin(labels, sorted(chosen))
    # Grown into the CSF around the core so that the ventricle wall's partial volume belongs to it.
    return (ndimage.binary_dilation(core) & (csf > 0.2)).astype(np.float32)


def _envelope_distance(brain: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm) to the smoothed, closed outline of ``brain``, on a padded 2 mm grid."""
    step = ENVELOPE_STEP
    pad = int(np.ceil(ENVELOPE_MARGIN_MM / step))
    # A coarse voxel is brain when any of its fine voxels is.
    coarse = np.pad(_block_reduce(brain, step, np.any), pad)
    smooth = ndimage.gaussian_filter(coarse.astype(np.float32), ENVELOPE_SMOOTHING_MM / step)
    envelope = ndimage.binary_fill_holes(smooth > 0.35)
    outside = ndimage.distance_transform_edt(~envelope) * step
    inside = ndimage.distance_transform_edt(envelope) * step
    distance = np.where(envelope, -inside + step / 2, outside - step / 2).astype(np.float32)
    coarse_affine = affine @ np.diag([step, step, step, 1.0])
    # The block centre of coarse voxel c is fine index step * c + (step - 1) / 2; shifted by the padding.
    coarse_affine[:3, 3] = affine[:3, :3] @ np.full(3, (step - 1) / 2 - step * pad) + affine[:3, 3]
    return distance, coarse_affine


@lru_cache(maxsize=1)
def load_template_maps() -> TemplateMaps:
    """Read and derive the template's tissue maps (cached: once per process).

    Returns:
        The maps.

    Raises:
        TemplateMissingError: nilearn or one of its template files is missing or unreadable.
    """
    folder = template_folder()
    t1, affine = _read(folder, "t1")
    grey, grey_affine = _read(folder, "gm")
    white, white_affine = _read(folder, "wm")
    for key, other in (("gm", grey_affine), ("wm", white_affine)):
        if not np.allclose(other, affine, atol=1e-4):
            raise TemplateMissingError(f"{folder / TEMPLATE_FILES[key]}: not on the grid of the template T1")
    grey /= 255.0
    white /= 255.0
    brain = t1 > 0
    total = grey + white
    # The probability maps sum to at most 1 (checked on the shipped files); guard against rounding.
    over = total > 1.0
    grey[over] /= total[over]
    white[over] /= total[over]
    grey *= brain
    white *= brain
    csf = np.where(brain, 1.0 - grey - white, 0.0).astype(np.float32)
    ventricle = _ventricles(csf, brain, affine)
    distance, envelope_affine = _envelope_distance(brain, affine)
    index = np.argwhere(brain)
    centre_index = (index.min(axis=0) + index.max(axis=0)) / 2.0
    centre = affine[:3, :3] @ centre_index + affine[:3, 3]
    return TemplateMaps(grey, white, brain.astype(np.float32), ventricle, distance, np.asarray(affine, float),
                        envelope_affine, centre)
