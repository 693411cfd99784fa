"""The cohort runner: every preprocessing step over every subject of a cohort.

``python -m preprocessing run --config CONFIG --input DIR --output OUT [--workers N]``

Per subject: read (CT DICOM series, MR NIfTI) → CT artefact mask on the CT as read (per-subject
mode) → register each volume to its modality's reference → CT artefact mask carried onto (or, in
reference mode, taken from) the reference grid → CT windowing (the HU volume is kept too) → MR head
mask and normalisation → T2 (and other MR) registered onto the subject's own T1 (paired volumes) →
slices → QC montages.
For the demo cohort, the ground truth is also carried into every registered space.

Two phases, because references are cohort-wide:

1. every subject is read (in parallel) and cached as NIfTI under ``OUT/cache``; then, per
   modality, the reference is chosen (the volume most similar to the others after rigid
   alignment, or the one named in the configuration) and written to ``OUT/references`` together
   with the CT artefact mask built on it;
2. subjects are processed in parallel, each against the references.

Outputs: ``OUT/subjects/<pseudonym>/`` (volumes, masks, transforms, slices, truth, QC), and at the
root ``dataset.json`` (MONAI datalist, split by subject), ``report.json`` / ``report.csv``. Every
output file has a provenance sidecar (:mod:`preprocessing.provenance`); subject IDs are
pseudonyms (:mod:`preprocessing.pseudonym`).

Robustness: a subject that fails (bad file, failed step) is reported with its reason and the
others go on. A subject is complete when its marker file (written last) matches the hashes of its
inputs, of the configuration, of the references and of the code; a rerun skips complete subjects
and redoes the others from scratch, and because every file is written atomically and every
computation is seeded with a fixed thread count, a run killed at any point and rerun gives the
same bytes as an uninterrupted run (for the same ``--workers`` on the same machine: ANTs results
depend on its thread count, which is cores // workers).
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from preprocessing.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from preprocessing.config import (
    config_sha256,
    load_config,
    output_min_spacing,
    pairing_config,
    registration_config,
    slice_size,
    to_common_space_config,
)
from preprocessing.dicom import read_dicom_series, to_canonical
from preprocessing.errors import InputReadError, PreprocessingError
from preprocessing.nifti import parse_mr_filename, read_nifti
from preprocessing.provenance import code_version, file_sha256, files_sha256, input_record, write_sidecar
from preprocessing.pseudonym import Redactor, dicom_identifiers, pseudonymise_all
from preprocessing.registration import (
    RegistrationResult,
    apply_transforms,
    configure_determinism,
    downsampled,
    most_similar,
    reference_comparisons,
    register,
    rigid_similarity,
    save_transforms,
)

logger = logging.getLogger(__name__)

__all__ = [
    "STATUS_FAILED",
    "STATUS_OK",
    "STATUS_SKIPPED",
    "CohortInputs",
    "RunnerError",
    "SubjectSource",
    "discover_subjects",
    "run_cohort",
    "split_subjects",
]

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped-finished"
#: Steps timed per subject (report columns), in pipeline order.
STEPS = ("read", "register", "mask", "window", "normalise", "pair", "slice", "truth", "qc")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_AIR = {"ct": -1000.0}  # value outside the field of view, per modality (0 for MR)
_TRUTH_MODALITIES = ("ct", "t1", "t2")


class RunnerError(RuntimeError):
    """A problem with the run as a whole (no input found, output in use, a reference that cannot be made)."""


# --------------------------------------------------------------------------------------------
# Input discovery


@dataclass
class SubjectSource:
    """One subject of the input.

    Attributes:
        source: the source folder name (or IXI file name stem); never written to any output.
        subject: the pseudonym.
        volumes: modality (``ct``, ``t1``, ``t2``...) → DICOM folder or NIfTI file.
        truth: demo truth folder of the subject, if any.
        problems: reasons the subject cannot be processed, found while listing the input.
    """

    source: str
    subject: str
    volumes: dict[str, Path]
    truth: Path | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class CohortInputs:
    """Result of :func:`discover_subjects`.

    Attributes:
        layout: ``demo``, ``ixi`` or ``cq500``.
        root: the folder that was listed.
        subjects: the subjects, sorted by pseudonym.
        unassigned: input files that belong to no subject, with the reason (file names are redacted).
    """

    layout: str
    root: Path
    subjects: list[SubjectSource]
    unassigned: list[str] = field(default_factory=list)


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_NIFTI_SUFFIXES)


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
                                 "(IXI) or one DICOM folder per subject (CQ500, PACS export)")


def discover_subjects(input_dir: str | os.PathLike, config: Mapping[str, Any]) -> CohortInputs:
    """List the subjects of an input folder and give them pseudonyms.

    Layouts (``config["input"]["layout"]``, detected when ``auto``):

    * ``demo``: ``DIR/raw/ct/<subject>/…`` DICOM and ``DIR/raw/mri/<subject>-<T1|T2>.nii.gz``
      (``DIR`` may be the cohort root or its ``raw/`` folder); ``DIR/truth/<subject>`` if present.
    * ``ixi``: ``<subject>-<modality>.nii.gz`` files in the folder or in its subfolders
      (``IXI-T1/``, ``IXI-T2/``).
    * ``cq500``: one folder per subject, any DICOM tree below it (CT only).

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
    problems: dict[str, list[str]] = {}
    unassigned: list[tuple[Path, str]] = []

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
                                      problems.get(source, [])))
    subjects.sort(key=lambda s: s.subject)
    redact = Redactor(names, anywhere={str(root): "<input>"})
    messages = [redact(f"{path.relative_to(root)}: {why}") for path, why in unassigned]
    return CohortInputs(layout, root, subjects, messages)


# --------------------------------------------------------------------------------------------
# Small helpers shared by the phases


def _hash_input(path: Path) -> str:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        return files_sha256(files, path)
    return file_sha256(path)


def _write_image(image: sitk.Image, path: Path) -> Path:
    atomic_write_with(path, lambda tmp: sitk.WriteImage(image, str(tmp), True))
    return path


def _read_image(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _reason(error: BaseException, redact: Redactor) -> str:
    """One line naming the file and the problem, with source names and identifiers redacted."""
    if isinstance(error, PreprocessingError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return redact(" ".join(text.split()))


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --------------------------------------------------------------------------------------------
# Worker processes


def _die_with_parent() -> None:
    """Ask Linux to kill this worker when the runner dies, so that a killed run leaves no orphan writing files."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:  # not Linux: orphans finish their subject, which atomic writes make harmless
        pass


def _init_worker(seed: int, threads: int) -> None:
    """Worker initialiser: fixed thread counts and seeds before anything imports ANTs or torch.

    Each worker also keeps the memory it frees for its next allocations: a subject's steps
    allocate and free arrays of tens to hundreds of MiB, which glibc otherwise maps afresh (and
    the kernel zeroes page by page) every time. A worker then holds its peak memory until the run
    ends.
    """
    from modality_translation.host_memory import retain_freed_host_memory

    _die_with_parent()
    retain_freed_host_memory()
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)
    configure_determinism(seed=seed, threads=threads)
    import torch

    torch.set_num_threads(threads)


def _read_job(job: dict) -> dict:
    """Phase 1 for one subject: hash the inputs and read every volume into the cache."""
    start = time.perf_counter()
    redact = Redactor(job["names"], anywhere=job["anywhere"])
    cache = Path(job["cache"])
    volumes = {m: Path(p) for m, p in job["volumes"].items()}
    identifiers: set[str] = set()
    if "ct" in volumes:
        identifiers = dicom_identifiers(volumes["ct"], max_files=5)
        redact = redact.extended(identifiers=identifiers)
    result: dict[str, Any] = {"subject": job["subject"], "identifiers": sorted(identifiers), "seconds": {}}
    try:
        if job["problems"]:
            raise PreprocessingError(None, "; ".join(job["problems"]))
        hashes = {m: _hash_input(p) for m, p in volumes.items()}
        if job["truth"]:
            truth = Path(job["truth"])
            hashes["truth"] = files_sha256([p for p in truth.rglob("*") if p.is_file()], truth)
        marker = cache / "read.json"
        cached = json.loads(marker.read_text()) if marker.is_file() else None
        if cached is not None and cached.get("inputs_sha256") == hashes and all(
                (cache / f"{m}.nii").is_file() for m in volumes):
            metadata = cached["metadata"]
        else:
            metadata = {}
            for modality, path in volumes.items():
                step = time.perf_counter()
                if modality == "ct":
                    image, info = read_dicom_series(path, job["dicom"])
                    metadata[modality] = {k: info[k] for k in ("series_description", "number_of_slices",
                                                               "slice_thickness_mm", "kvp", "findings") if k in info}
                else:
                    image = read_nifti(path)
                    metadata[modality] = {"file": redact(path.name)}
                if image.GetPixelID() != sitk.sitkFloat32:
                    image = sitk.Cast(image, sitk.sitkFloat32)
                metadata[modality].update(size=list(image.GetSize()), spacing=[round(s, 6) for s in image.GetSpacing()])
                _write_image_plain(image, cache / f"{modality}.nii")
                result["seconds"][f"read.{modality}"] = time.perf_counter() - step
            # Reader findings name files; a source folder name must not ride along.
            metadata = json.loads(redact(json.dumps(metadata)))
            atomic_write_json(marker, {"subject": job["subject"], "inputs_sha256": hashes, "metadata": metadata})
        result.update(status=STATUS_OK, inputs_sha256=hashes, metadata=metadata)
    except Exception as error:  # one subject's failure must not stop the cohort
        result.update(status=STATUS_FAILED, reason=_reason(error, redact))
    result["seconds"]["read"] = time.perf_counter() - start
    return result


def _write_image_plain(image: sitk.Image, path: Path) -> None:
    """Uncompressed NIfTI for the cache: read back several times, compression would only cost time."""
    atomic_write_with(path, lambda tmp: sitk.WriteImage(image, str(tmp), False))


def _load_reference_image(spec: str) -> sitk.Image:
    path = Path(spec)
    if path.name.lower().endswith(_NIFTI_SUFFIXES):
        return read_nifti(path)
    image, _ = to_canonical(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32), 0.0)
    return image


def _build_artefact_mask(ct_hu: sitk.Image, options: Mapping[str, Any]) -> tuple[sitk.Image, dict]:
    """Keep-mask (1 = head; holder, couch and air 0) of a CT as a uint8 image on its grid, and its info."""
    from preprocessing.artefact_mask import build_artefact_mask

    mask, info = build_artefact_mask(sitk.GetArrayViewFromImage(ct_hu), **dict(options))
    return _like(mask.astype(np.uint8), ct_hu), _jsonable(info)


def _apply_artefact_mask(ct_hu: sitk.Image, mask: sitk.Image, outside_hu: float) -> sitk.Image:
    from preprocessing.artefact_mask import apply_artefact_mask

    masked = apply_artefact_mask(sitk.GetArrayViewFromImage(ct_hu), sitk.GetArrayViewFromImage(mask) > 0, outside_hu)
    return _like(masked.astype(np.float32, copy=False), ct_hu)


def _same_grid(first: sitk.Image, second: sitk.Image) -> bool:
    return first.GetSize() == second.GetSize() and all(
        np.allclose(getattr(first, name)(), getattr(second, name)(), atol=1e-6)
        for name in ("GetSpacing", "GetOrigin", "GetDirection"))


def _carried_mask(mask: sitk.Image, grid: sitk.Image, transforms: list[str]) -> sitk.Image:
    """A binary mask carried onto ``grid`` (through ANTs transform files, or by position).

    The mask is interpolated linearly and thresholded at one half: its edge then follows the
    transformed boundary to a fraction of a voxel, where nearest-neighbour sampling moves it by up
    to half a voxel of the finer grid and a mask rebuilt on the new grid loses what the new grid
    cannot resolve (a holder plate thinner than its voxels).
    """
    if not transforms and _same_grid(mask, grid):
        return mask
    if transforms:
        from preprocessing.mask_warp import carry_mask_array

        carried = carry_mask_array(sitk.GetArrayViewFromImage(mask) > 0, mask, grid, transforms)
        if carried is not None:  # the same voxels as ANTs' below, evaluated at the mask's edge only
            return _like(carried.view(np.uint8), grid)
    fraction = _warp(sitk.Cast(mask > 0, sitk.sitkFloat32), grid, transforms, "linear", 0.0)
    return sitk.Cast(fraction >= 0.5, sitk.sitkUInt8)


def _coarsened(image: sitk.Image, min_spacing: float, outside: float) -> sitk.Image:
    """``image`` on a grid with no voxel side below ``min_spacing`` mm (coarser axes are kept).

    Each coarsened axis is smoothed first (Gaussian, sigma of half the new voxel side in mm; the
    other axes are left alone) so that the resampling does not alias.
    """
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    target = np.maximum(spacing, min_spacing)
    if np.allclose(target, spacing):
        return image
    variance = np.where(target > spacing, (target / 2.0) ** 2, 0.0)
    smoothed = sitk.DiscreteGaussian(image, variance.tolist(), 32, 0.01, True)
    extent = np.asarray(image.GetSize()) * spacing
    size = np.maximum(1, np.round(extent / target)).astype(int)
    # Keep the field of view centred: the first voxel centre moves by half the size change.
    origin = image.TransformContinuousIndexToPhysicalPoint((0.5 * target / spacing - 0.5).tolist())
    return sitk.Resample(smoothed, size.tolist(), sitk.Transform(), sitk.sitkLinear, origin, target.tolist(),
                         image.GetDirection(), outside, sitk.sitkFloat32)


def _comparison_copy_job(job: dict) -> dict:
    """Write the downsampled copy of one reference candidate that its comparisons use."""
    config = registration_config(job["config"], job["modality"])
    image = downsampled(_read_image(Path(job["volume"])), config.reference_spacing_mm)
    _write_image_plain(image, Path(job["copy"]))
    return {"copy": job["copy"]}


def _similarity_job(job: dict) -> dict:
    """NCC of one pair of reference candidates (their downsampled copies) after a quick rigid alignment."""
    first, second = job["pair"]
    config = registration_config(job["config"], job["modality"])
    images = [_read_image(Path(job["copies"][name])) for name in (first, second)]
    return {"pair": (first, second), "ncc": rigid_similarity(images[0], images[1], config)}


def _reference_job(job: dict) -> dict:
    """Write (and for CT mask) the chosen reference of one modality in its own space.

    ``job["folder"]`` is ``references/`` when the reference is final, or ``references/own_space/``
    when it is registered onto the common space's reference next (:func:`_align_reference_job`).
    """
    modality = job["modality"]
    output = Path(job["output"])
    config = job["config"]
    candidates = job["candidates"]  # pseudonym -> cache path
    choice = job["choice"]
    reg = registration_config(config, modality)
    if choice in candidates:
        image = _read_image(Path(candidates[choice]))
        description = {"kind": "subject", "subject": choice}
        inputs = [input_record(candidates[choice], f"cache/{choice}/{modality}.nii", "reference volume")]
    else:
        image = _load_reference_image(choice)
        description = {"kind": "file", "file": Path(choice).name}
        inputs = [input_record(choice, Path(choice).name, "reference file")]
    native = image
    minimum = output_min_spacing(config, modality)
    if minimum is not None:
        image = _coarsened(image, minimum, _AIR.get(modality, 0.0))
    folder = Path(job["folder"])
    image_path = _write_image(image, folder / f"reference_{modality}.nii.gz")
    parameters = {"modality": modality, "choice": description, "candidates": sorted(candidates),
                  "output_min_spacing_mm": minimum, "registration": _jsonable(reg.__dict__)}
    write_sidecar(image_path, "choose_reference", inputs, parameters)
    record = {**description, "image": _relative(image_path, output / "references"), "image_sha256": file_sha256(image_path)}
    if modality == "ct" and config["artefact"]["enabled"]:
        # Whatever the mode the reference needs its mask: reference mode applies it to every CT
        # and restricts the CT registration metric with it; per-subject mode removes the
        # reference's holder with it before holder-free CTs are registered onto it. Built at the
        # scanner's resolution: on the smoothed, coarsened grid a thin holder plate and its
        # contact pads blur into one dense piece with the skull, which is then not recognised.
        mask, info = _build_artefact_mask(native, config["artefact"]["options"])
        if native is not image:
            mask = _carried_mask(mask, image, [])
        mask_path = _write_image(mask, folder / "reference_ct_mask.nii.gz")
        write_sidecar(mask_path, "artefact_mask", [input_record(image_path, image_path.name, "reference CT")],
                      {"options": config["artefact"]["options"], "result": info})
        record.update(mask=_relative(mask_path, output / "references"), mask_sha256=file_sha256(mask_path))
    return record


def _align_reference_job(job: dict) -> dict:
    """Register one modality's reference onto the common space's reference and write it there.

    A CT reference is registered with its head holder removed (its artefact mask applied: the
    holder has no counterpart in MR and would pull the alignment); its mask is carried into the
    common space with the same transforms. Subjects keep registering onto the reference in its own space (same
    modality, same holder); their outputs go through both transforms in one resampling.
    """
    modality, space = job["modality"], job["space"]
    output = Path(job["output"])
    references = output / "references"
    own, target = job["own"], job["target"]
    moving = _read_image(references / own["image"])
    fixed = _read_image(references / target["image"])
    mask = _read_image(references / own["mask"]) if own.get("mask") else None
    config = to_common_space_config(job["config"], modality)
    holder_free = moving if mask is None else _apply_artefact_mask(moving, mask, float(job["config"]["artefact"]["outside_hu"]))
    result = register(holder_free, fixed, config)
    result = _save_transforms(result, references / "transforms", f"{modality}_to_{space}_")
    inputs = [input_record(references / own["image"], f"references/{own['image']}", "moving reference"),
              input_record(references / target["image"], f"references/{target['image']}", "fixed reference")]
    parameters = {"modality": modality, "common_space": space, "registration": _jsonable(config.__dict__),
                  "metrics": result.metrics}
    for path in sorted((references / "transforms").glob(f"{modality}_to_{space}_*")):
        if not path.name.endswith(".provenance.json"):
            write_sidecar(path, "align_reference", inputs, parameters)
    # The reference keeps its holder, like every registered CT the mask is applied to. Its mask
    # is carried rather than built again on the common grid, which may be too coarse to resolve
    # the holder (see _reference_job).
    warped = result.warped if mask is None else apply_transforms(
        moving, fixed, result.forward_transforms, "linear", default_value=config.default_value)
    image_path = _write_image(warped, references / f"reference_{modality}.nii.gz")
    write_sidecar(image_path, "align_reference", inputs, parameters)
    record = {key: own[key] for key in ("kind", "subject", "file") if key in own}
    record.update(image=image_path.name, image_sha256=file_sha256(image_path), aligned_to=space,
                  own_space_image=own["image"], own_space_image_sha256=own["image_sha256"],
                  to_space_transforms=[_relative(Path(t), references) for t in result.forward_transforms],
                  alignment=result.metrics)
    if mask is not None:
        record.update(own_space_mask=own["mask"])
        common_mask = _carried_mask(mask, fixed, result.forward_transforms)
        mask_path = _write_image(common_mask, references / "reference_ct_mask.nii.gz")
        write_sidecar(mask_path, "artefact_mask",
                      [input_record(references / own["mask"], f"references/{own['mask']}", "own-space mask")],
                      {"options": job["config"]["artefact"]["options"], "transforms": record["to_space_transforms"]})
        record.update(mask=mask_path.name, mask_sha256=file_sha256(mask_path))
    return record


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


# --------------------------------------------------------------------------------------------
# Phase 2: one subject


class _Timer:
    """Accumulates seconds per ``step.modality`` key."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


class _SubjectWriter:
    """Writes one subject's files, each with its provenance sidecar, and remembers them for the dataset entry."""

    def __init__(self, output: Path, folder: Path):
        self.output = output
        self.folder = folder
        self.files: list[Path] = []

    def image(self, image: sitk.Image, name: str, step: str, inputs: list[dict], parameters: dict) -> Path:
        path = _write_image(image, self.folder / name)
        self.track(path, step, inputs, parameters)
        return path

    def track(self, path: Path, step: str, inputs: list[dict], parameters: dict) -> None:
        write_sidecar(path, step, inputs, _jsonable(parameters))
        self.files.append(path)

    def record(self, path: Path, role: str) -> dict:
        """Input record of a file this subject already wrote."""
        return input_record(path, _relative(path, self.output), role)

    def relative(self, path: Path) -> str:
        return _relative(path, self.output)


def _identity_result(image: sitk.Image) -> RegistrationResult:
    """Registration result of the reference onto itself: an identity affine in ANTs' own format."""
    import ants

    workdir = tempfile.TemporaryDirectory(prefix="registration-")
    path = os.path.join(workdir.name, "0GenericAffine.mat")
    ants.write_transform(ants.new_ants_transform(precision="float", dimension=3, transform_type="AffineTransform"), path)
    metrics = {"ncc_before": 1.0, "ncc_after": 1.0}
    return RegistrationResult(image, [path], [path], [True], metrics, workdir)


def _save_transforms(result: RegistrationResult, folder: Path, prefix: str) -> RegistrationResult:
    """Save the transforms with the similarity metrics but without the wall time.

    The manifest is an output like any other and must be byte-identical between runs; the time
    goes to the report instead.
    """
    metrics = {k: round(float(v), 6) for k, v in result.metrics.items() if k != "seconds"}
    return save_transforms(dataclasses.replace(result, metrics=metrics), folder, prefix=prefix)


def _warp(image: sitk.Image, grid: sitk.Image, transforms: list[str], interpolator: str, default: float) -> sitk.Image:
    """``image`` onto ``grid`` through ANTs transform files (none: by physical position)."""
    if transforms:
        return apply_transforms(image, grid, transforms, interpolator, default_value=default)
    method = sitk.sitkNearestNeighbor if interpolator in ("nearestNeighbor", "genericLabel") else sitk.sitkLinear
    pixel = image.GetPixelID() if method == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    return sitk.Resample(image, grid, sitk.Transform(), method, default, pixel)


def _by_position(image: sitk.Image, grid: sitk.Image, default: float) -> sitk.Image:
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, default, sitk.sitkFloat32)


def _truth_volumes(truth: Path) -> dict[str, Any]:
    """The demo truth of one subject: arrays on the truth grid, poses, raw CT grid and labels."""
    import nibabel as nib

    from preprocessing.demo.grid import grid_from_affine_ras
    from preprocessing.demo.pose import Pose

    def load(name: str) -> tuple[Any, np.ndarray]:
        image = nib.load(str(truth / name))
        return grid_from_affine_ras(image.shape, image.affine), np.asarray(image.dataobj)

    grid, labels = load("labels.nii.gz")
    arrays = {m: load(f"{m}.nii.gz")[1].astype(np.float32) for m in _TRUTH_MODALITIES}
    poses = {m: Pose.from_dict(d) for m, d in json.loads((truth / "pose.json").read_text()).items()}
    ct_grid, ct_labels = load("ct_raw_labels.nii.gz")
    return {"grid": grid, "arrays": arrays, "labels": labels, "poses": poses, "ct_grid": ct_grid, "ct_labels": ct_labels}


def _grid_image(array: np.ndarray, grid: Any) -> sitk.Image:
    """A demo ``Grid`` array (indexed [i, j, k]) as a SimpleITK image with the grid's geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing([float(s) for s in grid.spacing])
    image.SetOrigin([float(o) for o in grid.origin])
    image.SetDirection(np.asarray(grid.direction, dtype=float).ravel().tolist())
    return image


def _raw_grid(modality: str, truth: dict, volume_path: Path) -> Any:
    if modality == "ct":
        return truth["ct_grid"]
    import nibabel as nib

    from preprocessing.demo.grid import grid_from_affine_ras

    header = nib.load(str(volume_path))
    return grid_from_affine_ras(header.shape, header.affine)


def _process_job(job: dict) -> dict:
    """Phase 2 for one subject; never raises (failures are returned with their reason)."""
    redact = Redactor(job["names"], job["identifiers"], job["anywhere"])
    timer = _Timer()
    result: dict[str, Any] = {"subject": job["subject"]}
    folder = Path(job["output"]) / "subjects" / job["subject"]
    try:
        with timer("total"):
            entry, metrics = _process_subject(job, folder, timer)
        result.update(status=STATUS_OK, entry=entry, metrics=metrics)
    except Exception as error:  # isolate the failure: report it, leave no half-made subject behind
        logger.debug("subject %s failed", job["subject"], exc_info=True)
        shutil.rmtree(folder, ignore_errors=True)
        result.update(status=STATUS_FAILED, reason=_reason(error, redact))
    result["seconds"] = timer.seconds
    return result


@dataclass
class _Subject:
    """One subject while phase 2 processes it: inputs, what the steps made so far, and its outputs.

    Attributes:
        registered: volumes on their output grid, before masking and normalisation (by modality).
        native_masks: in ``per_subject`` mode, the CT's artefact mask on the grid it was read on.
        holder_free: the CT as read with that mask applied, which ``per_subject`` mode registers in
            place of the CT as read.
        forward: transform files from each raw volume to its output grid (empty: no registration).
        volumes, masks: the final volumes (windowed CT, normalised MR, pairs) and their masks, by
            dataset key; slices are cut from them.
        entry: the subject's dataset.json item.
    """

    job: dict
    folder: Path
    timer: _Timer
    writer: _SubjectWriter
    raw: dict[str, sitk.Image]
    raw_inputs: dict[str, list[dict]]
    entry: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=lambda: {"registration": {}})
    registered: dict[str, sitk.Image] = field(default_factory=dict)
    holder_free: dict[str, sitk.Image] = field(default_factory=dict)
    native_masks: dict[str, sitk.Image] = field(default_factory=dict)
    forward: dict[str, list[str]] = field(default_factory=dict)
    volumes: dict[str, sitk.Image] = field(default_factory=dict)
    masks: dict[str, sitk.Image] = field(default_factory=dict)
    qc_views: list = field(default_factory=list)
    strips: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.job["subject"]

    @property
    def config(self) -> dict:
        return self.job["config"]

    @property
    def output(self) -> Path:
        return Path(self.job["output"])

    @property
    def transforms(self) -> Path:
        return self.folder / "transforms"

    def reference_file(self, name: str) -> Path:
        return self.output / "references" / name

    def transform_names(self, modality: str) -> list[str]:
        return [Path(t).name for t in self.forward[modality]]

    def track_transforms(self, prefix: str, step: str, inputs: list[dict], parameters: dict) -> None:
        for path in sorted(self.transforms.glob(f"{prefix}*")):
            if not path.name.endswith(".provenance.json"):
                self.writer.track(path, step, inputs, parameters)


def _process_subject(job: dict, folder: Path, timer: _Timer) -> tuple[dict, dict]:
    """Every phase-2 step of one subject; returns its dataset item and metrics."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cache = Path(job["output"]) / "cache" / job["subject"]
    subject = _Subject(
        job, folder, timer, _SubjectWriter(Path(job["output"]), folder),
        raw={m: _read_image(cache / f"{m}.nii") for m in job["modalities"]},
        raw_inputs={m: [input_record(cache / f"{m}.nii", f"{job['subject']}/{m}", "input volume",
                                     sha256=job["inputs_sha256"][m])] for m in job["modalities"]},
    )
    subject.entry["subject"] = subject.name
    artefact = subject.config["artefact"]
    if "ct" in job["modalities"] and artefact["enabled"] and artefact["mode"] == "per_subject":
        _remove_holder_as_read(subject)
    _register_to_references(subject)
    if "ct" in job["modalities"]:
        _mask_and_window_ct(subject)
    _normalise_mr(subject)
    _pair_within_subject(subject)
    if subject.config["slices"]["enabled"]:
        _extract_slices(subject)
    if job["truth"]:
        _carry_truth(subject)
    if subject.config["qc"]["enabled"]:
        _draw_qc(subject)
    return subject.entry, subject.metrics


def _remove_holder_as_read(s: _Subject) -> None:
    """The CT's own artefact mask, built at the scanner's resolution, and the CT without its holder.

    Registering the holder-free CT onto the holder-free reference lets the metric see the whole
    head outline: the reference-mode alternative (the holder kept, the metric restricted to the
    reference's head) ignores a moving head that extends beyond the reference's.
    """
    with s.timer("mask.ct"):
        mask, s.metrics["artefact_mask"] = _build_artefact_mask(s.raw["ct"], s.config["artefact"]["options"])
        s.native_masks["ct"] = mask
        s.holder_free["ct"] = _apply_artefact_mask(s.raw["ct"], mask, float(s.config["artefact"]["outside_hu"]))


def _register_to_references(s: _Subject) -> None:
    """Register every volume to its modality's reference (the reference itself: identity)."""
    from preprocessing.qc import RegistrationView

    for modality in s.job["modalities"]:
        with s.timer(f"register.{modality}"):
            reference = s.job["references"].get(modality)
            if reference is None:  # registration disabled: the volume stays on its own grid
                s.registered[modality], s.forward[modality] = s.raw[modality], []
                continue
            # With a common space, each volume still registers onto its modality's reference in
            # that reference's own space (same contrast, same holder); the reference's own
            # transform into the common space is then appended to the chain.
            aligned = bool(reference.get("aligned_to"))
            fixed_name = reference["own_space_image"] if aligned else reference["image"]
            fixed_sha = reference["own_space_image_sha256"] if aligned else reference["image_sha256"]
            mask_name = reference.get("own_space_mask") if aligned else reference.get("mask")
            fixed = _read_image(s.reference_file(fixed_name))
            config = registration_config(s.config, modality)
            # Holder and couch stay where the scanner put them while the head moves, and would pull
            # the alignment towards them: either both CTs lose their holder, or the metric counts
            # the reference's head only.
            fixed_mask = _read_image(s.reference_file(mask_name)) if mask_name else None
            moving = s.holder_free.get(modality, s.raw[modality])
            if modality in s.holder_free and fixed_mask is not None:
                fixed_for_metric = _apply_artefact_mask(fixed, fixed_mask, float(s.config["artefact"]["outside_hu"]))
                fixed_mask = None
            else:
                fixed_for_metric = fixed
            is_reference = reference.get("subject") == s.name
            if is_reference:  # the reference, possibly on a coarsened grid, is its own registered volume
                result = _identity_result(fixed)
            else:
                result = register(moving, fixed_for_metric, config, fixed_mask=fixed_mask)
            prefix = f"{modality}_to_reference_"
            result = _save_transforms(result, s.transforms, prefix)
            warped, forward = result.warped, list(result.forward_transforms)
            if aligned:
                fixed = _read_image(s.reference_file(reference["image"]))
                forward = [str(s.reference_file(name)) for name in reference["to_space_transforms"]] + forward
                warped = apply_transforms(moving, fixed, forward, "linear", default_value=config.default_value)
            s.registered[modality], s.forward[modality] = warped, forward
            s.metrics["registration"][modality] = {**result.metrics, "reference": is_reference}
            fixed_record = input_record(s.reference_file(fixed_name), f"references/{fixed_name}", "fixed", sha256=fixed_sha)
            s.track_transforms(prefix, "register", s.raw_inputs[modality] + [fixed_record], {"registration": config.__dict__})
            s.entry[f"{modality}_transforms"] = s.writer.relative(s.transforms / f"{prefix}transforms.json")
            s.qc_views.append(RegistrationView(modality, fixed, _by_position(s.raw[modality], fixed, _AIR.get(modality, 0.0)),
                                               warped))


def _mask_and_window_ct(s: _Subject) -> None:
    """Artefact mask (the reference's, or the CT's own) and CT window; keeps the masked HU volume."""
    from preprocessing.windowing import get_window, hu_to_window

    ct, artefact, writer = s.registered["ct"], s.config["artefact"], s.writer
    with s.timer("mask.ct"):
        reference = s.job["references"].get("ct", {})
        mask_inputs: list[dict] = []
        if not artefact["enabled"]:
            keep, masked = _like(np.ones(sitk.GetArrayViewFromImage(ct).shape, np.uint8), ct), ct
        else:
            if artefact["mode"] == "reference":
                keep = _read_image(s.reference_file(reference["mask"]))
                mask_inputs = [input_record(s.reference_file(reference["mask"]), f"references/{reference['mask']}",
                                            "reference artefact mask", sha256=reference["mask_sha256"])]
            else:
                # Built on the CT as read (_remove_holder_as_read) and carried with the CT's own
                # transforms: the mask follows this head wherever the registration leaves it.
                keep = _carried_mask(s.native_masks["ct"], ct, s.forward["ct"])
                mask_inputs = s.raw_inputs["ct"]
            masked = _apply_artefact_mask(ct, keep, float(artefact["outside_hu"]))
        mask_path = writer.image(keep, f"{s.name}_ct_mask.nii.gz", "artefact_mask", mask_inputs, {"artefact": artefact})
        hu_path = writer.image(masked, f"{s.name}_ct_hu.nii.gz", "artefact_mask",
                               s.raw_inputs["ct"] + [writer.record(mask_path, "keep mask")],
                               {"artefact": artefact, "transforms": s.transform_names("ct")})
    with s.timer("window.ct"):
        window = get_window(s.config["ct"]["window"])
        out_range = s.config["ct"]["out_range"]
        windowed = _like(np.asarray(hu_to_window(sitk.GetArrayFromImage(masked), window, out_range), np.float32), masked)
        ct_path = writer.image(windowed, f"{s.name}_ct.nii.gz", "window", [writer.record(hu_path, "CT in HU")],
                               {"window": window.to_dict(), "out_range": out_range})
    s.entry.update(ct=writer.relative(ct_path), ct_hu=writer.relative(hu_path), ct_mask=writer.relative(mask_path))
    s.volumes["ct"], s.masks["ct"] = windowed, keep
    if s.config["qc"]["enabled"]:
        from preprocessing.qc import artefact_montage

        with s.timer("qc"):
            # A per-subject mask is drawn where it was built, on the CT as read.
            shown = (s.raw["ct"], s.native_masks["ct"], s.holder_free["ct"]) if "ct" in s.native_masks else (ct, keep, masked)
            path = artefact_montage(*shown, s.folder / "qc" / f"{s.name}_artefact.png",
                                    title=f"{s.name}: CT artefact mask")
            writer.track(path, "qc", [writer.record(mask_path, "keep mask")], {})


def _normalise(image: sitk.Image, mask: np.ndarray, normalization: Mapping[str, Any]) -> sitk.Image:
    """MR intensity normalisation inside ``mask`` (z-score, or percentiles to ``out_range``)."""
    from preprocessing.normalization import percentile_normalize, zscore_normalize

    array = sitk.GetArrayFromImage(image)
    if normalization["method"] == "zscore":
        values = zscore_normalize(array, mask)
    else:
        values = percentile_normalize(array, mask, normalization["lower"], normalization["upper"],
                                      normalization["out_range"], outside_value=normalization["out_range"][0])
    return _like(np.asarray(values, dtype=np.float32), image)


def _normalise_mr(s: _Subject) -> None:
    """Head mask and normalisation of every registered MR volume."""
    from preprocessing.normalization import head_mask_mr

    head_options, normalization = s.config["mr"]["head_mask"], s.config["mr"]["normalization"]
    for modality in (m for m in s.job["modalities"] if m != "ct"):
        with s.timer(f"normalise.{modality}"):
            registered = s.registered[modality]
            head = head_mask_mr(sitk.GetArrayFromImage(registered), **head_options)
            mask = _like(head.astype(np.uint8), registered)
            mask_path = s.writer.image(mask, f"{s.name}_{modality}_mask.nii.gz", "head_mask", s.raw_inputs[modality],
                                       {"head_mask": head_options})
            normalised = _normalise(registered, head, normalization)
            path = s.writer.image(normalised, f"{s.name}_{modality}.nii.gz", "normalise",
                                  s.raw_inputs[modality] + [s.writer.record(mask_path, "head mask")],
                                  {"normalization": normalization, "transforms": s.transform_names(modality)})
        s.entry.update({modality: s.writer.relative(path), f"{modality}_mask": s.writer.relative(mask_path)})
        s.volumes[modality], s.masks[modality] = normalised, mask


def _pair_within_subject(s: _Subject) -> None:
    """Register T2 (and the other ``pairing.moving``) onto the subject's own T1, into T1's output grid."""
    from preprocessing.qc import RegistrationView

    pairing, normalization = s.config["pairing"], s.config["mr"]["normalization"]
    fixed = pairing["fixed"]
    if not pairing["enabled"] or fixed not in s.job["modalities"]:
        return
    config = pairing_config(s.config)
    for moving in (m for m in pairing["moving"] if m in s.job["modalities"]):
        key, prefix = f"{moving}_in_{fixed}", f"{moving}_to_{fixed}_"
        with s.timer(f"pair.{moving}"):
            result = _save_transforms(register(s.raw[moving], s.raw[fixed], config), s.transforms, prefix)
            s.metrics["registration"][key] = dict(result.metrics)
            s.track_transforms(prefix, "pair", s.raw_inputs[moving] + s.raw_inputs[fixed], {"registration": config.__dict__})
            # One resampling of the raw volume: through the pair transform into the raw T1, then
            # through T1's transforms into the T1 output grid (ANTs applies the list as a composition).
            chain = s.forward[fixed] + list(result.forward_transforms)
            paired = _warp(s.raw[moving], s.registered[fixed], chain, "linear", 0.0)
            normalised = _normalise(paired, sitk.GetArrayFromImage(s.masks[fixed]) > 0, normalization)
            mask_record = s.writer.record(s.output / s.entry[f"{fixed}_mask"], "head mask")
            path = s.writer.image(normalised, f"{s.name}_{key}.nii.gz", "pair", s.raw_inputs[moving] + [mask_record],
                                  {"normalization": normalization, "transforms": [Path(t).name for t in chain]})
        s.entry.update({key: s.writer.relative(path), f"{key}_mask": s.entry[f"{fixed}_mask"],
                        f"{key}_transforms": s.writer.relative(s.transforms / f"{prefix}transforms.json")})
        s.volumes[key], s.masks[key] = normalised, s.masks[fixed]
        s.qc_views.append(RegistrationView(f"{moving} -> own {fixed}", s.registered[fixed],
                                           _by_position(s.raw[moving], s.registered[fixed], 0.0), paired))


def _extract_slices(s: _Subject) -> None:
    """Slices of every final volume, selected with its mask (a pair shares its T1's slices)."""
    from preprocessing.slices import extract_slices, resolve_axis, save_slices

    spec, normalization = s.config["slices"], s.config["mr"]["normalization"]
    for key, volume in s.volumes.items():
        with s.timer(f"slice.{key}"):
            out_range = s.config["ct"]["out_range"] if key == "ct" else normalization["out_range"]
            # z-scores have no fixed range: they are sliced as they are.
            intensity = None if key != "ct" and normalization["method"] == "zscore" else out_range
            axis = resolve_axis(spec["axis"], volume.GetDirection())
            in_plane = tuple(n for a, n in enumerate(sitk.GetArrayViewFromImage(volume).shape) if a != axis)
            slices, geometries = extract_slices(
                volume, spec["axis"], spec["selection"], sitk.GetArrayFromImage(s.masks[key]) > 0, spec["neighbours"],
                slice_size(s.config, in_plane), intensity_range=intensity,
                out_range=out_range if intensity is not None else (-1.0, 1.0), interpolation=spec["interpolation"])
            paths = save_slices(slices, geometries, s.folder / "slices" / key, f"{s.name}_{key}", spec["compress"])
            source = s.writer.record(s.output / s.entry[key], "volume")
            for path in paths:
                s.writer.track(path, "slice", [source], {"slices": spec, "output_shape": list(geometries[0].output_shape)})
            s.entry[f"{key}_slices"] = [s.writer.relative(p) for p in paths[:-1]]
            s.entry[f"{key}_slice_index"] = s.writer.relative(paths[-1])
            s.strips[key] = slices


def _carry_truth(s: _Subject) -> None:
    """Demo truth of every other modality (and the labels) in each modality's output space.

    Each truth volume is rendered into the modality's raw scanner grid through the known pose, then
    through the modality's own registration transforms: it is misaligned and realigned exactly like
    the registered volume, so a translation of that volume can be compared with it voxel by voxel.
    """
    from preprocessing.demo.pose import render_in_raw

    truth = _truth_volumes(Path(s.job["truth"]))
    inputs = [{"name": f"truth/{s.name}", "role": "demo truth", "sha256": s.job["inputs_sha256"]["truth"]}]
    for modality in (m for m in s.job["modalities"] if m in _TRUTH_MODALITIES):
        with s.timer(f"truth.{modality}"):
            grid = _raw_grid(modality, truth, Path(s.job["volumes"][modality]))
            pose, target, transforms = truth["poses"][modality], s.registered[modality], s.forward[modality]
            parameters = {"transforms": s.transform_names(modality)}
            for other in (n for n in _TRUTH_MODALITIES if n != modality):
                air = _AIR.get(other, 0.0)
                rendered = render_in_raw(truth["arrays"][other], truth["grid"], pose, grid, order=1, cval=air)
                image = _warp(_grid_image(rendered, grid), target, transforms, "linear", air)
                path = s.writer.image(image, f"{s.name}_truth_{other}_in_{modality}.nii.gz", "truth", inputs, parameters)
                s.entry[f"truth_{other}_in_{modality}"] = s.writer.relative(path)
            # The raw CT labels hold the head holder too (labels 9-11).
            labels = truth["ct_labels"] if modality == "ct" else render_in_raw(
                truth["labels"], truth["grid"], pose, grid, order=0, cval=0)
            image = _warp(_grid_image(labels.astype(np.uint8), grid), target, transforms, "genericLabel", 0)
            path = s.writer.image(sitk.Cast(image, sitk.sitkUInt8), f"{s.name}_truth_labels_in_{modality}.nii.gz",
                                  "truth", inputs, parameters)
            s.entry[f"truth_labels_in_{modality}"] = s.writer.relative(path)


def _draw_qc(s: _Subject) -> None:
    """Registration montage and slice strip (the artefact montage is drawn with the mask)."""
    from preprocessing.qc import registration_montage, slice_strip

    with s.timer("qc"):
        if s.qc_views:
            path = registration_montage(s.qc_views, s.folder / "qc" / f"{s.name}_registration.png",
                                        title=f"{s.name}: registration (contours of the reference)")
            s.writer.track(path, "qc", [], {})
        if s.strips:
            path = slice_strip(s.strips, s.folder / "qc" / f"{s.name}_slices.png", title=f"{s.name}: extracted slices",
                               n_slices=s.config["qc"]["slices_in_strip"])
            s.writer.track(path, "qc", [], {})


# --------------------------------------------------------------------------------------------
# The run


def split_subjects(subjects: list[str], fractions: Mapping[str, float], seed: int) -> dict[str, list[str]]:
    """Assign subjects to training / validation / test.

    The subjects are sorted, shuffled with ``seed`` and cut by ``fractions`` (largest remainder
    rounding). With three subjects or more, every split of positive fraction gets at least one
    subject (taken from the largest split).

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each list sorted.
    """
    names = ("training", "validation", "test")
    order = sorted(subjects)
    np.random.default_rng(seed).shuffle(order)
    n = len(order)
    exact = [fractions[k] * n for k in names]
    counts = [int(np.floor(v)) for v in exact]
    for index in sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))[: n - sum(counts)]:
        counts[index] += 1
    if n >= 3:
        for index in range(3):
            if fractions[names[index]] > 0 and counts[index] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[index] = 1
    splits, start = {}, 0
    for name, count in zip(names, counts):
        splits[name] = sorted(order[start : start + count])
        start += count
    return splits


@contextmanager
def _output_lock(output: Path) -> Iterator[None]:
    output.mkdir(parents=True, exist_ok=True)
    handle = open(output / ".lock", "w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunnerError(f"another run is writing to {output}") from None
        yield
    finally:
        handle.close()


def _remove_stray_temporaries(output: Path) -> None:
    """Temporary files of a killed run (see preprocessing.atomic) are garbage: remove them."""
    for path in output.rglob(".tmp-*"):
        if path.is_file():
            path.unlink()


def _complete(output: Path, subject: str, key: str) -> dict | None:
    """The marker of a subject finished with resume ``key`` whose files all exist, else None."""
    marker = output / "subjects" / subject / f"{subject}_subject.json"
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except ValueError:
        return None
    if record.get("key") != key:
        return None
    for name, size in record.get("files", {}).items():
        path = output / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return record


def _core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_cohort(
    config: str | os.PathLike | Mapping[str, Any],
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Preprocess a cohort (see the module docstring).

    Args:
        config: a shipped configuration name, a YAML/JSON path, or a mapping (see :mod:`preprocessing.config`).
        input_dir: the input folder (demo cohort, IXI folder or CQ500-like DICOM tree).
        output_dir: the output folder (created if needed; a previous run's outputs are reused
            where complete).
        workers: parallel processes (default: one per core).
        progress: show progress bars on stderr.
        threads: ANTs/ITK (and torch) threads per worker; default cores // workers, so that
            workers x threads = cores. Results depend on it (ANTs sums in thread order).

    Returns:
        The report (also written to ``report.json``).

    Raises:
        ConfigError: an invalid configuration.
        InputReadError: the input folder does not exist or holds nothing recognisable.
        RunnerError: another run writes to the output, or a reference cannot be made.
    """
    from tqdm import tqdm

    config = load_config(config)
    output = Path(output_dir)
    inputs = discover_subjects(input_dir, config)
    if not inputs.subjects:
        raise RunnerError(f"no subject found in the input ({inputs.layout} layout)")
    cores = _core_count()
    workers = max(1, int(workers or cores))
    threads = max(1, int(threads or cores // workers))
    names = {s.source: s.subject for s in inputs.subjects}
    # The configuration is copied into sidecars and may name a reference subject by its source
    # folder name: from here on it speaks of pseudonyms only.
    config = json.loads(Redactor(names)(json.dumps(config)))
    config_hash = config_sha256(config)
    anywhere = {str(inputs.root.resolve()): "<input>", str(inputs.root): "<input>"}
    code = code_version()
    start = time.perf_counter()

    with _output_lock(output):
        _remove_stray_temporaries(output)
        context = get_context("spawn")
        pool_size = max(1, min(workers, len(inputs.subjects)))
        with ProcessPoolExecutor(pool_size, mp_context=context, initializer=_init_worker,
                                 initargs=(int(config["seed"]), threads)) as pool:
            # --- phase 1: read every subject -----------------------------------------------------
            phases = {"start_workers_and_read": time.perf_counter()}
            reads: dict[str, dict] = {}
            jobs = {}
            for source in inputs.subjects:
                job = {"subject": source.subject, "volumes": {m: str(p) for m, p in source.volumes.items()},
                       "truth": str(source.truth) if source.truth else None, "problems": source.problems,
                       "cache": str(output / "cache" / source.subject), "dicom": config["input"]["dicom"],
                       "names": names, "anywhere": anywhere}
                jobs[pool.submit(_read_job, job)] = source.subject
            for future in tqdm(as_completed(jobs), total=len(jobs), desc="read", unit="subject", disable=not progress):
                reads[jobs[future]] = future.result()

            # --- references ----------------------------------------------------------------------
            phases["references"] = time.perf_counter()
            references = _prepare_references(pool, config, inputs, reads, output, progress)

            # --- phase 2: process subjects -------------------------------------------------------
            phases["process"] = time.perf_counter()
            results: dict[str, dict] = {}
            inputs_metadata: dict[str, dict] = {}
            jobs, pending = {}, []
            for source in inputs.subjects:
                read = reads[source.subject]
                if read["status"] != STATUS_OK:
                    results[source.subject] = {"subject": source.subject, "status": STATUS_FAILED,
                                               "reason": read["reason"], "seconds": read["seconds"]}
                    continue
                inputs_metadata[source.subject] = read["metadata"]
                modalities = sorted(source.volumes, key=lambda m: (m != "ct", m))
                used = {m: references[m] for m in modalities if m in references}
                key = _sha(json.dumps({"config": config_hash, "inputs": read["inputs_sha256"], "code": code,
                                       "references": used}, sort_keys=True))
                done = _complete(output, source.subject, key)
                if done is not None:
                    # Its time in this run: checking the inputs' hashes (phase 1) only.
                    results[source.subject] = {"subject": source.subject, "status": STATUS_SKIPPED,
                                               "entry": done["entry"], "metrics": done["metrics"],
                                               "seconds": read["seconds"]}
                    continue
                job = {"subject": source.subject, "output": str(output), "config": config, "modalities": modalities,
                       "volumes": {m: str(p) for m, p in source.volumes.items()}, "references": used,
                       "truth": str(source.truth) if source.truth else None, "inputs_sha256": read["inputs_sha256"],
                       "names": names, "anywhere": anywhere, "identifiers": read["identifiers"], "key": key,
                       "read_seconds": read["seconds"]}
                pending.append(job)
            # Longest first: the last subjects to start are then the shortest, so the workers finish
            # together instead of one waiting for the other's last large subject.
            for job in sorted(pending, key=lambda j: _estimated_work(j, reads[j["subject"]]["metadata"]), reverse=True):
                jobs[pool.submit(_process_job, job)] = job
            for future in tqdm(as_completed(jobs), total=len(jobs), desc="process", unit="subject",
                               disable=not progress):
                job = jobs[future]
                result = future.result()
                result["seconds"] = {**job["read_seconds"], **result["seconds"]}
                if result["status"] == STATUS_OK:
                    _write_marker(output, job, result)
                results[job["subject"]] = result

    phases["end"] = time.perf_counter()
    for subject, metadata in inputs_metadata.items():
        results[subject]["inputs"] = metadata
    marks = list(phases.items())
    phase_seconds = {name: round(marks[i + 1][1] - when, 3) for i, (name, when) in enumerate(marks[:-1])}
    report = _write_cohort_outputs(config, config_hash, inputs, references, results, output, workers, threads,
                                   time.perf_counter() - start, phase_seconds)
    return report


def _estimated_work(job: dict, metadata: Mapping[str, dict]) -> float:
    """Relative cost of processing a subject: the voxels it registers, plus a tenth for every other step.

    A subject whose volume is a modality's reference is not registered for that modality (identity).
    """
    work = 0.0
    for modality in job["modalities"]:
        voxels = float(np.prod(metadata.get(modality, {}).get("size", [0])))
        reference = job["references"].get(modality)
        registered = reference is not None and reference.get("subject") != job["subject"]
        work += voxels * (1.1 if registered else 0.1)
    return work


def _gathered(pool: ProcessPoolExecutor, function: Any, jobs: Mapping[Any, dict], what: str,
              progress: bool) -> dict[Any, dict]:
    """Run ``function`` on every job in the pool; ``{name: result}``; a failure stops the run."""
    from tqdm import tqdm

    futures = {pool.submit(function, job): name for name, job in jobs.items()}
    results = {}
    for future in tqdm(as_completed(futures), total=len(futures), desc=f"references: {what}", unit="job",
                       disable=not progress or not futures):
        name = futures[future]
        try:
            results[name] = future.result()
        except RunnerError:
            raise
        except Exception as error:  # without its reference, no subject of the modality can be processed
            modality = name[0] if isinstance(name, tuple) else name
            raise RunnerError(f"cannot make the {modality} reference ({what}): {error}") from error
    return results


def _prepare_references(pool: ProcessPoolExecutor, config: dict, inputs: CohortInputs, reads: dict[str, dict],
                        output: Path, progress: bool = False) -> dict[str, dict]:
    """Choose (or reuse) the reference of every modality; returns ``{modality: record}``.

    Every step is spread over the pool: the pairwise comparisons of the automatic choice, the
    writing (and CT masking) of each reference, then, with ``registration.common_space``, the
    registration of the other references onto that modality's reference.
    """
    if not config["registration"]["enabled"]:
        return {}
    candidates: dict[str, dict[str, str]] = {}
    hashes: dict[str, dict[str, str]] = {}
    for source in inputs.subjects:
        read = reads[source.subject]
        if read["status"] != STATUS_OK:
            continue
        for modality in source.volumes:
            candidates.setdefault(modality, {})[source.subject] = str(output / "cache" / source.subject / f"{modality}.nii")
            hashes.setdefault(modality, {})[source.subject] = read["inputs_sha256"][modality]
    space = config["registration"]["common_space"]
    if space is not None and space not in candidates:
        raise RunnerError(f"registration.common_space is {space!r} but no subject has a readable {space} volume")
    record_path = output / "references" / "references.json"
    previous = json.loads(record_path.read_text()) if record_path.is_file() else {}
    own_keys = {m: _sha(json.dumps({"candidates": hashes[m], "code": code_version(),
                                    "registration": _jsonable(registration_config(config, m).__dict__),
                                    "artefact": config["artefact"] if m == "ct" else None}, sort_keys=True))
                for m in candidates}
    keys = {m: own_keys[m] if space is None or m == space else _sha(json.dumps(
                {"own": own_keys[m], "space": own_keys[space],
                 "registration": _jsonable(to_common_space_config(config, m).__dict__)}, sort_keys=True))
            for m in candidates}

    def reusable(modality: str) -> bool:
        old = previous.get(modality)
        return old is not None and old.get("key") == keys[modality] and all(
            (output / "references" / old[name]).is_file() for name in ("image", "mask") if old.get(name))

    references = {m: previous[m] for m in sorted(candidates) if reusable(m)}
    todo = [m for m in sorted(candidates) if m not in references]
    choices: dict[str, str] = {}
    comparisons = {}
    copies: dict[str, dict[str, str]] = {}
    for modality in todo:
        reg = registration_config(config, modality)
        names = sorted(candidates[modality])
        if reg.reference is not None:
            if reg.reference not in candidates[modality] and not os.path.isfile(reg.reference):
                raise RunnerError(f"registration reference of {modality} ({reg.reference!r}) is neither a subject of "
                                  "this cohort that was read successfully nor an existing image file")
            choices[modality] = reg.reference
        elif len(names) == 1:
            choices[modality] = names[0]
        else:
            copies[modality] = {name: str(Path(path).with_name(f"{modality}_comparison_copy.nii"))
                                for name, path in candidates[modality].items()}
            for pair in reference_comparisons(names, reg.reference_max_comparisons):
                comparisons[(modality, pair)] = {"modality": modality, "pair": pair, "config": config,
                                                 "copies": copies[modality]}
    _gathered(pool, _comparison_copy_job, {(m, name): {"modality": m, "config": config, "volume": candidates[m][name],
                                                       "copy": copy} for m in copies for name, copy in copies[m].items()},
              "downsampling candidates", progress)
    similarity = _gathered(pool, _similarity_job, comparisons, "comparing candidates", progress)
    for modality in todo:
        if modality not in choices:
            found = {pair: result["ncc"] for (m, pair), result in similarity.items() if m == modality}
            choices[modality] = most_similar(candidates[modality], found)

    folders = {m: output / "references" / ("own_space" if space is not None and m != space else "") for m in todo}
    written = _gathered(pool, _reference_job, {m: {"modality": m, "output": str(output), "config": config,
                                                   "candidates": candidates[m], "choice": choices[m],
                                                   "folder": str(folders[m])} for m in todo}, "writing", progress)
    for modality in todo:
        if space is None or modality == space:
            references[modality] = {**written[modality], "key": keys[modality]}
    if space is not None:
        aligned = _gathered(pool, _align_reference_job, {
            m: {"modality": m, "space": space, "output": str(output), "config": config,
                "own": written[m], "target": references[space]} for m in todo if m != space},
            f"registering onto the {space} reference", progress)
        for modality, record in aligned.items():
            references[modality] = {**record, "key": keys[modality]}
    references = dict(sorted(references.items()))
    atomic_write_json(record_path, references)
    return references


def _write_marker(output: Path, job: dict, result: dict) -> None:
    """The subject's completion record, written last: what a rerun checks before skipping it."""
    subject = job["subject"]
    folder = output / "subjects" / subject
    files = {_relative(p, output): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    atomic_write_json(folder / f"{subject}_subject.json", {
        "subject": subject, "key": job["key"], "entry": result["entry"], "metrics": result["metrics"], "files": files,
    })


def _step_totals(seconds: Mapping[str, float]) -> dict[str, float]:
    """Seconds per step (summed over modalities) and in total, from ``step.modality`` keys.

    ``read`` is the whole of phase 1 (its ``read.<modality>`` entries are parts of it); ``total``
    adds phase 1 and phase 2.
    """
    totals = {step: 0.0 for step in STEPS}
    for key, value in seconds.items():
        step, _, part = key.partition(".")
        if step in totals and step != "read":
            totals[step] += value
    totals["read"] = seconds.get("read", 0.0)
    totals["total"] = seconds.get("read", 0.0) + seconds.get("total", 0.0)
    return {k: round(v, 3) for k, v in totals.items()}


def _write_cohort_outputs(config: dict, config_hash: str, inputs: CohortInputs, references: dict, results: dict,
                          output: Path, workers: int, threads: int, seconds: float, phases: dict[str, float]) -> dict:
    from preprocessing.windowing import get_window

    subjects = [s.subject for s in inputs.subjects]
    usable = [s for s in subjects if results[s]["status"] in (STATUS_OK, STATUS_SKIPPED)]
    splits = split_subjects(usable, config["split"], int(config["seed"]))
    modalities = sorted({m for s in inputs.subjects for m in s.volumes}, key=lambda m: (m != "ct", m))
    slice_sizes = {}
    for subject in usable:
        entry = results[subject]["entry"]
        for key in entry:
            if key.endswith("_slice_index") and key[: -len("_slice_index")] not in slice_sizes:
                index = json.loads((output / entry[key]).read_text())
                if index["slices"]:
                    slice_sizes[key[: -len("_slice_index")]] = index["slices"][0]["geometry"]["output_shape"]
    pairing = config["pairing"]
    datalist = {
        "name": config["name"],
        "description": config["description"] or f"preprocessed with the '{config['name']}' configuration",
        "config": config["name"],
        "config_sha256": config_hash,
        "modalities": modalities,
        "pairs": {f"{m}_in_{pairing['fixed']}": [m, pairing["fixed"]] for m in pairing["moving"]}
        if pairing["enabled"] else {},
        "ct_window": {**get_window(config["ct"]["window"]).to_dict(), "out_range": config["ct"]["out_range"],
                      "volumes": "ct: windowed, ct_hu: Hounsfield units"} if "ct" in modalities else None,
        "normalisation": config["mr"]["normalization"],
        "slice_axis": config["slices"]["axis"],
        "slice_size": slice_sizes,
        "references": {m: {k: v for k, v in r.items() if k in ("kind", "subject", "file")} for m, r in references.items()},
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
        **{name: [results[s]["entry"] for s in members] for name, members in splits.items()},
    }
    dataset_path = output / "dataset.json"
    atomic_write_json(dataset_path, datalist)
    markers = [input_record(output / "subjects" / s / f"{s}_subject.json", f"subjects/{s}/{s}_subject.json",
                            "subject record") for s in usable]
    write_sidecar(dataset_path, "datalist", markers, {"config": config, "split": config["split"]})

    rows = []
    for subject in subjects:
        result = results[subject]
        seconds_by_key = result.get("seconds", {})
        rows.append({
            "subject": subject,
            "status": result["status"],
            "reason": result.get("reason", ""),
            "split": next((name for name, members in splits.items() if subject in members), ""),
            "seconds": _step_totals(seconds_by_key),
            "seconds_detail": {k: round(v, 3) for k, v in sorted(seconds_by_key.items())},
            "registration": result.get("metrics", {}).get("registration", {}),
            "inputs": result.get("inputs", {}),
        })
    report = {
        "config": config["name"],
        "config_sha256": config_hash,
        "layout": inputs.layout,
        "workers": workers,
        "ants_threads_per_worker": threads,
        "seconds": round(seconds, 3),
        "phase_seconds": phases,
        "counts": {status: sum(r["status"] == status for r in rows) for status in (STATUS_OK, STATUS_SKIPPED, STATUS_FAILED)},
        "unassigned_inputs": inputs.unassigned,
        "references": datalist["references"],
        "subjects": rows,
    }
    atomic_write_json(output / "report.json", report)
    write_sidecar(output / "report.json", "report", [], {"config": config["name"], "config_sha256": config_hash})
    buffer = io.StringIO()
    columns = ["subject", "status", "reason", "split", *(f"seconds_{s}" for s in (*STEPS, "total"))]
    table = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    table.writeheader()
    for row in rows:
        table.writerow({"subject": row["subject"], "status": row["status"], "reason": row["reason"], "split": row["split"],
                        **{f"seconds_{k}": v for k, v in row["seconds"].items()}})
    atomic_write_text(output / "report.csv", buffer.getvalue())
    write_sidecar(output / "report.csv", "report", [], {"config": config["name"], "config_sha256": config_hash})
    if config["write_pseudonym_map"]:
        atomic_write_json(output / "pseudonym_map.json", {s.source: s.subject for s in inputs.subjects})
    return report
