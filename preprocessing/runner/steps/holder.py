"""Step: the CT's own head-holder mask, built on the CT as read (``per_subject`` artefact mode)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from preprocessing.runner.imaging import apply_mask, build_mask
from preprocessing.runner.steps.base import Step, SubjectContext


class RemoveHolderAsRead(Step):
    """The CT's artefact mask at the scanner's resolution, and the CT without its holder.

    Registering the holder-free CT onto the holder-free reference lets the metric see the whole
    head outline: the reference-mode alternative (the holder kept, the metric restricted to the
    reference's head) ignores a moving head that extends beyond the reference's.
    """

    reads = ("raw",)
    writes = ("native_masks", "holder_free", "artefact_mask")

    def applies(self, context: SubjectContext) -> bool:
        artefact = context.config["artefact"]
        return "ct" in context.modalities and artefact["enabled"] and artefact["mode"] == "per_subject"

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        ct = values["raw"]["ct"]
        with context.timer("mask.ct"):
            mask, info = build_mask(ct, context.config["artefact"]["options"])
            holder_free = apply_mask(ct, mask, float(context.config["artefact"]["outside_hu"]))
        return {"native_masks": {"ct": mask}, "holder_free": {"ct": holder_free}, "artefact_mask": {"ct": info}}
