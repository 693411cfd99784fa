"""Phase 1 for one subject: hash the inputs and read every volume into ``OUT/cache/<subject>``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import SimpleITK as sitk

from medgan_common.atomic import atomic_write_json
from medgan_common.errors import PreprocessingError
from preprocessing.dicom import read_dicom_series
from preprocessing.nifti import read_nifti
from preprocessing.provenance import files_sha256
from preprocessing.pseudonym import Redactor, dicom_identifiers
from preprocessing.runner.common import (
    AIR,
    NIFTI_SUFFIXES,
    STATUS_FAILED,
    STATUS_OK,
    hash_input,
    reason,
    write_image_plain,
)

__all__ = ["read_job"]


def read_job(job: dict) -> dict:
    """Phase 1 for one subject: hash the inputs and read every volume (and a delivered mask) into the cache.

    A CT is a DICOM folder, or a NIfTI file in HU (SynthRAD2023); an MR and a mask are NIfTI files.
    The cache holds ``<modality>.nii`` and ``mask.nii``; the metadata of each records its size,
    spacing and ``slices``: the slice count as stored (the DICOM series' slices, the NIfTI file's
    third axis).
    """
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
        hashes = {m: hash_input(p) for m, p in volumes.items()}
        if job.get("mask"):
            volumes["mask"] = Path(job["mask"])
            hashes["mask"] = hash_input(volumes["mask"])
        if job["truth"]:
            truth = Path(job["truth"])
            hashes["truth"] = files_sha256([p for p in truth.rglob("*") if p.is_file()], truth)
        marker = cache / "read.json"
        cached = json.loads(marker.read_text()) if marker.is_file() else None
        if cached is not None and cached.get("inputs_sha256") == hashes and all(
                (cache / f"{m}.nii").is_file() and "slices" in cached["metadata"].get(m, {}) for m in volumes):
            metadata = cached["metadata"]
        else:
            metadata = {}
            for modality, path in volumes.items():
                step = time.perf_counter()
                if modality == "ct" and not path.name.lower().endswith(NIFTI_SUFFIXES):
                    image, info = read_dicom_series(path, job["dicom"])
                    metadata[modality] = {k: info[k] for k in ("series_description", "number_of_slices",
                                                               "slice_thickness_mm", "kvp", "findings") if k in info}
                    stored_slices = info["number_of_slices"]
                else:
                    image = read_nifti(path, AIR.get(modality, 0.0))
                    metadata[modality] = {"file": redact(path.name)}
                    # The file's own third axis, before any reorientation: what a slice count
                    # rule (input.keep_slice_counts) speaks of.
                    stored_slices = int(nib.load(path).shape[2])
                if image.GetPixelID() != sitk.sitkFloat32:
                    image = sitk.Cast(image, sitk.sitkFloat32)
                metadata[modality].update(size=list(image.GetSize()), spacing=[round(s, 6) for s in image.GetSpacing()],
                                          slices=stored_slices)
                write_image_plain(image, cache / f"{modality}.nii")
                result["seconds"][f"read.{modality}"] = time.perf_counter() - step
            # Reader findings name files; a source folder name must not ride along.
            metadata = json.loads(redact(json.dumps(metadata)))
            atomic_write_json(marker, {"subject": job["subject"], "inputs_sha256": hashes, "metadata": metadata})
        result.update(status=STATUS_OK, inputs_sha256=hashes, metadata=metadata)
    except Exception as error:  # one subject's failure must not stop the cohort
        result.update(status=STATUS_FAILED, reason=reason(error, redact))
    result["seconds"]["read"] = time.perf_counter() - start
    return result
