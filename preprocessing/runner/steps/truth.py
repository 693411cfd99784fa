"""Step (demo cohorts): the ground truth carried into each modality's registered space."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medgan_common import dataset_keys as keys
from preprocessing.runner.common import AIR
from preprocessing.runner.demo_truth import TRUTH_MODALITIES, grid_image, raw_grid, truth_volumes
from preprocessing.runner.imaging import warp
from preprocessing.runner.steps.base import Step, SubjectContext, transform_names


class CarryTruth(Step):
    """Demo truth of every other modality (and the labels) in each modality's output space.

    Each truth volume is rendered into the modality's raw scanner grid through the known pose, then
    through the modality's own registration transforms: it is misaligned and realigned exactly like
    the registered volume, so a translation of that volume can be compared with it voxel by voxel.
    Writes ``<subject>_truth_<other>_in_<modality>`` and ``_truth_labels_in_<modality>``.
    """

    reads = ("registered", "forward")
    writes = ("entry",)

    def applies(self, context: SubjectContext) -> bool:
        return bool(context.job["truth"])

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        from preprocessing.demo.pose import render_in_raw

        truth = truth_volumes(Path(context.job["truth"]))
        name, writer = context.name, context.writer
        inputs = [{"name": f"truth/{name}", "role": "demo truth", "sha256": context.job["inputs_sha256"]["truth"]}]
        entry: dict[str, Any] = {}
        for modality in (m for m in context.modalities if m in TRUTH_MODALITIES):
            with context.timer(f"truth.{modality}"):
                grid = raw_grid(modality, truth, Path(context.job["volumes"][modality]))
                pose, target = truth["poses"][modality], values["registered"][modality]
                transforms = values["forward"][modality]
                parameters = {"transforms": transform_names(values["forward"], modality)}
                for other in (n for n in TRUTH_MODALITIES if n != modality):
                    air = AIR.get(other, 0.0)
                    rendered = render_in_raw(truth["arrays"][other], truth["grid"], pose, grid, order=1, cval=air)
                    image = warp(grid_image(rendered, grid), target, transforms, "linear", air)
                    path = writer.image(image, f"{name}_truth_{other}_in_{modality}.nii.gz", "truth", inputs,
                                        parameters)
                    entry[keys.truth_key(other, modality)] = writer.relative(path)
                # The raw CT labels hold the head holder too (labels 9-11).
                labels = truth["ct_labels"] if modality == "ct" else render_in_raw(
                    truth["labels"], truth["grid"], pose, grid, order=0, cval=0)
                image = warp(grid_image(labels.astype(np.uint8), grid), target, transforms, "genericLabel", 0)
                path = writer.image(sitk.Cast(image, sitk.sitkUInt8), f"{name}_truth_labels_in_{modality}.nii.gz",
                                    "truth", inputs, parameters)
                entry[keys.truth_labels_key(modality)] = writer.relative(path)
        return {"entry": entry}
