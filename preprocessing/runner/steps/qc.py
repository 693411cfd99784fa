"""Step: the registration montage and the slice strip (the artefact montage is drawn by the CT step)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from preprocessing.runner.steps.base import Step, SubjectContext


class DrawQC(Step):
    """``qc/<subject>_registration.png`` (every registration view) and ``qc/<subject>_slices.png``."""

    reads = ("qc_views", "strips")
    writes = ()

    def applies(self, context: SubjectContext) -> bool:
        return context.config["qc"]["enabled"]

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        from preprocessing.qc import registration_montage, slice_strip

        name = context.name
        with context.timer("qc"):
            if values["qc_views"]:
                path = registration_montage(list(values["qc_views"].values()),
                                            context.folder / "qc" / f"{name}_registration.png",
                                            title=f"{name}: registration (contours of the reference)")
                context.writer.track(path, "qc", [], {})
            if values["strips"]:
                path = slice_strip(dict(values["strips"]), context.folder / "qc" / f"{name}_slices.png",
                                   title=f"{name}: extracted slices", n_slices=context.config["qc"]["slices_in_strip"])
                context.writer.track(path, "qc", [], {})
        return {}
