"""Step: the CT's artefact mask on its registered grid, the masked HU volume and the CT window."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from medgan_common import dataset_keys as keys
from preprocessing.provenance import input_record
from preprocessing.runner.common import like, read_image
from preprocessing.runner.imaging import apply_mask, carried_mask
from preprocessing.runner.steps.base import Step, SubjectContext, transform_names


def windowed_ct(hu: sitk.Image, ct: Mapping[str, Any]) -> tuple[sitk.Image, dict[str, Any]]:
    """A CT in HU through the cohort's window (``ct.window`` mapped to ``ct.out_range``).

    Args:
        hu: the CT in Hounsfield units.
        ct: the configuration's ``ct`` section.

    Returns:
        The windowed float32 volume on ``hu``'s grid, and the window's record for the provenance.
    """
    from preprocessing.windowing import get_window, hu_to_window

    window, out_range = get_window(ct["window"]), ct["out_range"]
    values = np.asarray(hu_to_window(sitk.GetArrayFromImage(hu), window, out_range), np.float32)
    return like(values, hu), {"window": window.to_dict(), "out_range": out_range}


class MaskAndWindowCT(Step):
    """Artefact mask (the reference's, or the CT's own carried through its transforms) and CT window.

    Writes ``<subject>_ct_mask``, ``_ct_hu`` (masked, in HU) and ``_ct`` (windowed), and the artefact
    QC montage.
    """

    reads = ("registered", "forward", "raw", "native_masks", "holder_free")
    writes = ("volumes", "masks", "entry")

    def applies(self, context: SubjectContext) -> bool:
        return "ct" in context.modalities

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        ct, artefact, writer, name = values["registered"]["ct"], context.config["artefact"], context.writer, context.name
        native_masks = values["native_masks"]
        with context.timer("mask.ct"):
            reference = context.job["references"].get("ct", {})
            mask_inputs: list[dict] = []
            if not artefact["enabled"]:
                keep, masked = like(np.ones(sitk.GetArrayViewFromImage(ct).shape, np.uint8), ct), ct
            else:
                if artefact["mode"] == "reference":
                    keep = read_image(context.reference_file(reference["mask"]))
                    mask_inputs = [input_record(context.reference_file(reference["mask"]),
                                                f"references/{reference['mask']}", "reference artefact mask",
                                                sha256=reference["mask_sha256"])]
                else:
                    # Built on the CT as read, or delivered with it (RemoveHolderAsRead), and carried
                    # with the CT's own transforms: the mask follows this head wherever the
                    # registration leaves it.
                    keep = carried_mask(native_masks["ct"], ct, values["forward"]["ct"])
                    mask_inputs = context.raw_inputs["ct"]
                masked = apply_mask(ct, keep, float(artefact["outside_hu"]))
            mask_path = writer.image(keep, f"{name}_ct_mask.nii.gz", "artefact_mask", mask_inputs, {"artefact": artefact})
            hu_path = writer.image(masked, f"{name}_ct_hu.nii.gz", "artefact_mask",
                                   context.raw_inputs["ct"] + [writer.record(mask_path, "keep mask")],
                                   {"artefact": artefact, "transforms": transform_names(values["forward"], "ct")})
        with context.timer("window.ct"):
            windowed, window = windowed_ct(masked, context.config["ct"])
            ct_path = writer.image(windowed, f"{name}_ct.nii.gz", "window", [writer.record(hu_path, "CT in HU")], window)
        if context.config["qc"]["enabled"]:
            from preprocessing.qc import artefact_montage

            with context.timer("qc"):
                # A per-subject mask is drawn where it was built, on the CT as read.
                shown = ((values["raw"]["ct"], native_masks["ct"], values["holder_free"]["ct"])
                         if "ct" in native_masks else (ct, keep, masked))
                path = artefact_montage(*shown, context.folder / "qc" / f"{name}_artefact.png",
                                        title=f"{name}: CT artefact mask")
                writer.track(path, "qc", [writer.record(mask_path, "keep mask")], {})
        entry = {"ct": writer.relative(ct_path), keys.hu_key("ct"): writer.relative(hu_path),
                 keys.mask_key("ct"): writer.relative(mask_path)}
        return {"volumes": {"ct": windowed}, "masks": {"ct": keep}, "entry": entry}
