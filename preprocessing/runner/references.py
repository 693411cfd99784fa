"""The cohort-wide references: one volume per modality that every subject is registered onto.

The reference phase runs on the worker pool too: the downsampled copies and pairwise comparisons
of the automatic choice, the writing (and CT masking) of each reference and, with a common space,
the reference-to-reference registrations. Each ``_*_job`` function is one task of the pool.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from medgan_common.atomic import atomic_write_json
from preprocessing.config import output_min_spacing, registration_config, to_common_space_config
from preprocessing.qc import RegistrationView, registration_montage
from preprocessing.provenance import code_version, file_sha256, input_record, write_sidecar
from preprocessing.registration import (
    apply_transforms,
    downsampled,
    most_similar,
    reference_comparisons,
    register,
    rigid_similarity,
)
from preprocessing.runner.common import (
    AIR,
    STATUS_OK,
    RunnerError,
    jsonable,
    read_image,
    relative,
    sha,
    write_image,
    write_image_plain,
)
from preprocessing.runner.discovery import CohortInputs
from preprocessing.runner.imaging import (
    apply_mask,
    build_mask,
    carried_mask,
    coarsened,
    load_reference_image,
    save_transforms_reproducibly,
)
from preprocessing.runner.pool import WorkerPool

__all__ = ["prepare_references"]


def _gathered(pool: WorkerPool, function: Any, jobs: Mapping[Any, dict], what: str,
              progress: bool) -> dict[Any, dict]:
    """Run ``function`` on every job in the pool; ``{name: result}``; a failure stops the run."""
    results = {}
    for name, result, error in pool.results(function, jobs, f"references: {what}", progress):
        if error is not None:  # without its reference, no subject of the modality can be processed
            if isinstance(error, RunnerError):
                raise error
            modality = name[0] if isinstance(name, tuple) else name
            raise RunnerError(f"cannot make the {modality} reference ({what}): {error}") from error
        results[name] = result
    return results


def _comparison_copy_job(job: dict) -> dict:
    """Write the downsampled copy of one reference candidate that its comparisons use."""
    config = registration_config(job["config"], job["modality"])
    image = downsampled(read_image(Path(job["volume"])), config.reference_spacing_mm)
    write_image_plain(image, Path(job["copy"]))
    return {"copy": job["copy"]}


def _similarity_job(job: dict) -> dict:
    """NCC of one pair of reference candidates (their downsampled copies) after a quick rigid alignment."""
    first, second = job["pair"]
    config = registration_config(job["config"], job["modality"])
    images = [read_image(Path(job["copies"][name])) for name in (first, second)]
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
        image = read_image(Path(candidates[choice]))
        description = {"kind": "subject", "subject": choice}
        inputs = [input_record(candidates[choice], f"cache/{choice}/{modality}.nii", "reference volume")]
    else:
        image = load_reference_image(choice)
        description = {"kind": "file", "file": Path(choice).name}
        inputs = [input_record(choice, Path(choice).name, "reference file")]
    native = image
    minimum = output_min_spacing(config, modality)
    if minimum is not None:
        image = coarsened(image, minimum, AIR.get(modality, 0.0))
    folder = Path(job["folder"])
    image_path = write_image(image, folder / f"reference_{modality}.nii.gz")
    parameters = {"modality": modality, "choice": description, "candidates": sorted(candidates),
                  "output_min_spacing_mm": minimum, "registration": jsonable(reg.__dict__)}
    write_sidecar(image_path, "choose_reference", inputs, parameters)
    record = {**description, "image": relative(image_path, output / "references"), "image_sha256": file_sha256(image_path)}
    if modality == "ct" and config["artefact"]["enabled"]:
        # Whatever the mode the reference needs its mask: reference mode applies it to every CT
        # and restricts the CT registration metric with it; per-subject mode removes the
        # reference's holder with it before holder-free CTs are registered onto it. Built at the
        # scanner's resolution: on the smoothed, coarsened grid a thin holder plate and its
        # contact pads blur into one dense piece with the skull, which is then not recognised.
        mask, info = build_mask(native, config["artefact"]["options"])
        if native is not image:
            mask = carried_mask(mask, image, [])
        mask_path = write_image(mask, folder / "reference_ct_mask.nii.gz")
        write_sidecar(mask_path, "artefact_mask", [input_record(image_path, image_path.name, "reference CT")],
                      {"options": config["artefact"]["options"], "result": info})
        record.update(mask=relative(mask_path, output / "references"), mask_sha256=file_sha256(mask_path))
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
    moving = read_image(references / own["image"])
    fixed = read_image(references / target["image"])
    mask = read_image(references / own["mask"]) if own.get("mask") else None
    config = to_common_space_config(job["config"], modality)
    holder_free = moving if mask is None else apply_mask(moving, mask, float(job["config"]["artefact"]["outside_hu"]))
    result = register(holder_free, fixed, config)
    result = save_transforms_reproducibly(result, references / "transforms", f"{modality}_to_{space}_")
    inputs = [input_record(references / own["image"], f"references/{own['image']}", "moving reference"),
              input_record(references / target["image"], f"references/{target['image']}", "fixed reference")]
    parameters = {"modality": modality, "common_space": space, "registration": jsonable(config.__dict__),
                  "metrics": result.metrics}
    for path in sorted((references / "transforms").glob(f"{modality}_to_{space}_*")):
        if not path.name.endswith(".provenance.json"):
            write_sidecar(path, "align_reference", inputs, parameters)
    # The reference keeps its holder, like every registered CT the mask is applied to. Its mask
    # is carried rather than built again on the common grid, which may be too coarse to resolve
    # the holder (see _reference_job).
    warped = result.warped if mask is None else apply_transforms(
        moving, fixed, result.forward_transforms, "linear", default_value=config.default_value)
    image_path = write_image(warped, references / f"reference_{modality}.nii.gz")
    write_sidecar(image_path, "align_reference", inputs, parameters)
    record = {key: own[key] for key in ("kind", "subject", "file") if key in own}
    record.update(image=image_path.name, image_sha256=file_sha256(image_path), aligned_to=space,
                  own_space_image=own["image"], own_space_image_sha256=own["image_sha256"],
                  to_space_transforms=[relative(Path(t), references) for t in result.forward_transforms],
                  alignment=result.metrics)
    if mask is not None:
        record.update(own_space_mask=own["mask"])
        common_mask = carried_mask(mask, fixed, result.forward_transforms)
        mask_path = write_image(common_mask, references / "reference_ct_mask.nii.gz")
        write_sidecar(mask_path, "artefact_mask",
                      [input_record(references / own["mask"], f"references/{own['mask']}", "own-space mask")],
                      {"options": job["config"]["artefact"]["options"], "transforms": record["to_space_transforms"]})
        record.update(mask=mask_path.name, mask_sha256=file_sha256(mask_path))
    return record


def prepare_references(pool: WorkerPool, config: dict, inputs: CohortInputs, reads: dict[str, dict],
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
    own_keys = {m: sha(json.dumps({"candidates": hashes[m], "code": code_version(),
                                    "registration": jsonable(registration_config(config, m).__dict__),
                                    "artefact": config["artefact"] if m == "ct" else None}, sort_keys=True))
                for m in candidates}
    keys = {m: own_keys[m] if space is None or m == space else sha(json.dumps(
                {"own": own_keys[m], "space": own_keys[space],
                 "registration": jsonable(to_common_space_config(config, m).__dict__)}, sort_keys=True))
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
    montage = output / "references" / COMMON_SPACE_MONTAGE
    if space is not None and len(references) > 1 and (todo or not montage.is_file()):
        common_space_montage(references, space, output / "references", montage)
    return references


#: The QC picture of the references in the common space, in ``OUT/references/``.
COMMON_SPACE_MONTAGE = "qc_common_space.png"


def common_space_montage(references: Mapping[str, Mapping[str, Any]], space: str, folder: Path, path: Path) -> Path:
    """The registration montage of every reference onto the common space's: one pose for all modalities.

    Each reference is shown on the ``space`` reference's grid before (by scanner position) and after
    its registration, with the contours of the ``space`` reference: a CT <-> MR network trained on
    slices of these spaces learns contrast only if they agree.

    Args:
        references: ``references.json``'s records (``image``, and ``own_space_image`` for the aligned ones).
        space: the common space's modality.
        folder: ``OUT/references``.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    fixed = sitk.Cast(read_image(folder / references[space]["image"]), sitk.sitkFloat32)
    views = []
    inputs = [input_record(folder / references[space]["image"], f"references/{references[space]['image']}",
                           f"{space} reference")]
    for modality, record in references.items():
        if modality == space or not record.get("own_space_image"):
            continue
        own = sitk.Cast(read_image(folder / record["own_space_image"]), sitk.sitkFloat32)
        before = sitk.Resample(own, fixed, sitk.Transform(), sitk.sitkLinear, 0.0)
        after = sitk.Cast(read_image(folder / record["image"]), sitk.sitkFloat32)
        views.append(RegistrationView(f"{modality} onto {space}", fixed, before, after))
        inputs += [input_record(folder / record["own_space_image"], f"references/{record['own_space_image']}",
                                f"{modality} reference, own space"),
                   input_record(folder / record["image"], f"references/{record['image']}", f"{modality} reference, common space")]
    registration_montage(views, path, title=f"references in the common space ({space})")
    write_sidecar(path, "common_space_montage", inputs, {"common_space": space})
    return path
