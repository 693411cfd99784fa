"""Step: every volume registered onto its modality's reference (the reference itself: identity)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medgan_common import dataset_keys as keys
from preprocessing.config import registration_config
from preprocessing.provenance import input_record
from preprocessing.registration import apply_transforms, register
from preprocessing.runner.common import AIR, read_image
from preprocessing.runner.imaging import apply_mask, by_position, identity_result, save_transforms_reproducibly
from preprocessing.runner.steps.base import Step, SubjectContext


class RegisterToReferences(Step):
    """Register each raw volume (the CT without its holder, where there is one) onto its reference.

    Writes the transforms (``transforms/<modality>_to_reference_*``) and, per modality, the volume on
    the reference's grid, the transform chain that took it there, the similarity metrics, the
    ``<modality>_transforms`` dataset key and a QC view.
    """

    reads = ("raw", "holder_free")
    writes = ("registered", "forward", "registration", "entry", "qc_views")

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        from preprocessing.qc import RegistrationView

        raw, holder_free = values["raw"], values["holder_free"]
        made: dict[str, dict[str, Any]] = {name: {} for name in self.writes}
        for modality in context.modalities:
            with context.timer(f"register.{modality}"):
                reference = context.job["references"].get(modality)
                if reference is None:  # registration disabled: the volume stays on its own grid
                    made["registered"][modality], made["forward"][modality] = raw[modality], []
                    continue
                # With a common space, each volume still registers onto its modality's reference in
                # that reference's own space (same contrast, same holder); the reference's own
                # transform into the common space is then appended to the chain.
                aligned = bool(reference.get("aligned_to"))
                fixed_name = reference["own_space_image"] if aligned else reference["image"]
                fixed_sha = reference["own_space_image_sha256"] if aligned else reference["image_sha256"]
                mask_name = reference.get("own_space_mask") if aligned else reference.get("mask")
                fixed = read_image(context.reference_file(fixed_name))
                config = registration_config(context.config, modality)
                # Holder and couch stay where the scanner put them while the head moves, and would
                # pull the alignment towards them: either both CTs lose their holder, or the metric
                # counts the reference's head only.
                fixed_mask = read_image(context.reference_file(mask_name)) if mask_name else None
                moving = holder_free.get(modality, raw[modality])
                if modality in holder_free and fixed_mask is not None:
                    fixed_for_metric = apply_mask(fixed, fixed_mask, float(context.config["artefact"]["outside_hu"]))
                    fixed_mask = None
                else:
                    fixed_for_metric = fixed
                is_reference = reference.get("subject") == context.name
                if is_reference:  # the reference, possibly on a coarsened grid, is its own registered volume
                    result = identity_result(fixed)
                else:
                    result = register(moving, fixed_for_metric, config, fixed_mask=fixed_mask)
                prefix = f"{modality}_to_reference_"
                result = save_transforms_reproducibly(result, context.transforms, prefix)
                warped, forward = result.warped, list(result.forward_transforms)
                if aligned:
                    fixed = read_image(context.reference_file(reference["image"]))
                    forward = [str(context.reference_file(name)) for name in reference["to_space_transforms"]] + forward
                    warped = apply_transforms(moving, fixed, forward, "linear", default_value=config.default_value)
                made["registered"][modality], made["forward"][modality] = warped, forward
                made["registration"][modality] = {**result.metrics, "reference": is_reference}
                fixed_record = input_record(context.reference_file(fixed_name), f"references/{fixed_name}", "fixed",
                                            sha256=fixed_sha)
                context.track_transforms(prefix, "register", context.raw_inputs[modality] + [fixed_record],
                                         {"registration": config.__dict__})
                made["entry"][keys.transforms_key(modality)] = context.writer.relative(
                    context.transforms / f"{prefix}transforms.json")
                made["qc_views"][modality] = RegistrationView(
                    modality, fixed, by_position(raw[modality], fixed, AIR.get(modality, 0.0)), warped)
        return made
