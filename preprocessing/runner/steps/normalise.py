"""Step: head mask and intensity normalisation of every registered MR volume."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from medgan_common import dataset_keys as keys
from preprocessing.runner.common import like
from preprocessing.runner.imaging import carried_mask
from preprocessing.runner.steps.base import Step, SubjectContext, delivered_mask, transform_names


def normalise(image: sitk.Image, mask: np.ndarray, normalization: Mapping[str, Any]) -> sitk.Image:
    """MR intensity normalisation inside ``mask`` (z-score, or percentiles to ``out_range``)."""
    from preprocessing.normalization import percentile_normalize, zscore_normalize

    array = sitk.GetArrayFromImage(image)
    if normalization["method"] == "zscore":
        values = zscore_normalize(array, mask)
    else:
        values = percentile_normalize(array, mask, normalization["lower"], normalization["upper"],
                                      normalization["out_range"], outside_value=normalization["out_range"][0])
    return like(np.asarray(values, dtype=np.float32), image)


class NormaliseMR(Step):
    """Head mask (``<subject>_<modality>_mask``) and normalised volume (``<subject>_<modality>``) of each MR.

    The head mask is computed on the registered volume (``mr.head_mask.method`` otsu or noise), or is
    the mask delivered with the volumes (``given``), carried with the volume's own transforms.
    """

    reads = ("raw", "given", "registered", "forward")
    writes = ("volumes", "masks", "entry")

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        from preprocessing.normalization import head_mask_mr

        head_options, normalization = context.config["mr"]["head_mask"], context.config["mr"]["normalization"]
        writer, name = context.writer, context.name
        made: dict[str, dict[str, Any]] = {key: {} for key in self.writes}
        for modality in (m for m in context.modalities if m != "ct"):
            with context.timer(f"normalise.{modality}"):
                registered = values["registered"][modality]
                mask_inputs = context.raw_inputs[modality]
                if head_options["method"] == "given":
                    given = delivered_mask(context, values["raw"], values["given"], modality, "mr.head_mask.method")
                    mask = carried_mask(given, registered, values["forward"][modality])
                    head = sitk.GetArrayFromImage(mask) > 0
                    mask_inputs = mask_inputs + context.raw_inputs["mask"]
                else:
                    head = head_mask_mr(sitk.GetArrayFromImage(registered), **head_options)
                    mask = like(head.astype(np.uint8), registered)
                mask_path = writer.image(mask, f"{name}_{modality}_mask.nii.gz", "head_mask", mask_inputs,
                                         {"head_mask": head_options})
                normalised = normalise(registered, head, normalization)
                path = writer.image(normalised, f"{name}_{modality}.nii.gz", "normalise",
                                    context.raw_inputs[modality] + [writer.record(mask_path, "head mask")],
                                    {"normalization": normalization,
                                     "transforms": transform_names(values["forward"], modality)})
            made["entry"].update({modality: writer.relative(path), keys.mask_key(modality): writer.relative(mask_path)})
            made["volumes"][modality], made["masks"][modality] = normalised, mask
        return made
