"""Step: the CT's own head-holder mask on the CT as read: built (``per_subject`` artefact mode) or delivered (``given``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from preprocessing.runner.imaging import apply_mask, build_mask
from preprocessing.runner.steps.base import Step, SubjectContext, delivered_mask


class RemoveHolderAsRead(Step):
    """The CT's artefact mask at the scanner's resolution, and the CT without its holder.

    Registering the holder-free CT onto the holder-free reference lets the metric see the whole
    head outline: the reference-mode alternative (the holder kept, the metric restricted to the
    reference's head) ignores a moving head that extends beyond the reference's. In ``given`` mode
    the mask delivered with the volumes (SynthRAD2023's body mask) takes the built one's place.
    """

    reads = ("raw", "given")
    writes = ("native_masks", "holder_free", "artefact_mask")

    def applies(self, context: SubjectContext) -> bool:
        artefact = context.config["artefact"]
        return "ct" in context.modalities and artefact["enabled"] and artefact["mode"] in ("per_subject", "given")

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        ct = values["raw"]["ct"]
        with context.timer("mask.ct"):
            if context.config["artefact"]["mode"] == "given":
                mask = delivered_mask(context, values["raw"], values["given"], "ct", "artefact.mode")
                info = {"mask": "delivered with the volumes"}
            else:
                mask, info = build_mask(ct, context.config["artefact"]["options"])
            holder_free = apply_mask(ct, mask, float(context.config["artefact"]["outside_hu"]))
        return {"native_masks": {"ct": mask}, "holder_free": {"ct": holder_free}, "artefact_mask": {"ct": info}}
