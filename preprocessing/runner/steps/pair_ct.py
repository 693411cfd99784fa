"""Step: the subject's CT onto its own MR (``ct_pairing``), into each MR's output grid: paired MR -> CT data."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from medgan_common import dataset_keys as keys
from preprocessing.config import ct_pairing_config, registration_config
from preprocessing.registration import RegistrationConfig, RegistrationResult, register
from preprocessing.runner.imaging import (
    apply_mask,
    by_position,
    carried_mask,
    check_one_grid,
    save_transforms_reproducibly,
    warp,
)
from preprocessing.runner.steps.base import Step, SubjectContext
from preprocessing.runner.steps.ct import windowed_ct

__all__ = ["PairCTWithOwnMR", "mutual_information", "register_ct_to_mr"]


def mutual_information(first: sitk.Image, second: sitk.Image) -> float:
    """Normalised mutual information of two images on one grid (Studholme's, scikit-image's, 100 bins).

    CT and MR intensities are related by no linear map, so the NCC that the MR pairs report says
    little; mutual information measures what the registration optimises.

    Args:
        first, second: images of the same size (the grid is not checked beyond the array shape).

    Returns:
        From 1 (independent intensities) to 2 (one determines the other).
    """
    from skimage.metrics import normalized_mutual_information

    return float(normalized_mutual_information(sitk.GetArrayViewFromImage(first), sitk.GetArrayViewFromImage(second)))


def register_ct_to_mr(ct: sitk.Image, mr: sitk.Image, config: RegistrationConfig) -> RegistrationResult:
    """Register a CT onto an MR of the same subject; the metrics are the normalised mutual information.

    Args:
        ct: the CT in HU (without its head holder where there is one: the holder has no
            counterpart in MR and would pull the alignment).
        mr: the MR as read (its own grid is the fixed grid).
        config: registration parameters (:func:`preprocessing.config.ct_pairing_config`).

    Returns:
        The registration result, its metrics replaced by ``nmi_before`` (the CT by position only)
        and ``nmi_after`` (see :func:`mutual_information`), both on the MR's grid.

    Raises:
        ValueError: an image ANTs cannot register (not 3D scalar, NaN values).
        RuntimeError: ANTs failed.
    """
    result = register(ct, mr, config)
    before = by_position(ct, mr, config.default_value)
    metrics = {"nmi_before": mutual_information(mr, before), "nmi_after": mutual_information(mr, result.warped)}
    return dataclasses.replace(result, metrics=metrics)


class PairCTWithOwnMR(Step):
    """``<subject>_ct_in_<mr>`` (windowed) and ``_ct_in_<mr>_hu``: the CT on each ``ct_pairing.fixed`` MR's output grid.

    The CT as read (without its holder in ``per_subject`` mode) is registered rigidly onto the
    subject's raw MR with Mattes mutual information, then resampled once, through the MR's own
    transforms and the pair transform, into the MR's output grid. Its artefact mask goes the same
    way and is applied as the CT step applies it; the windowed volume is windowed as the CT step
    windows. With ``ct_pairing.register`` false the CT and the MR must share one grid (checked) and
    only the MR's transforms are applied. The pair's mask, and so its slices, are the MR's.
    """

    reads = ("raw", "holder_free", "native_masks", "registered", "forward", "masks", "entry")
    writes = ("volumes", "masks", "registration", "entry", "qc_views")

    def applies(self, context: SubjectContext) -> bool:
        pairing = context.config["ct_pairing"]
        return pairing["enabled"] and "ct" in context.modalities and any(
            m in context.modalities for m in pairing["fixed"])

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        from preprocessing.qc import RegistrationView

        config, writer, name = context.config, context.writer, context.name
        pairing, artefact = config["ct_pairing"], config["artefact"]
        raw, registered, entry = values["raw"], values["registered"], values["entry"]
        outside = registration_config(config, "ct").default_value
        registration = ct_pairing_config(config)
        # The CT the CT step resamples: without its holder when it has its own mask.
        ct = values["holder_free"].get("ct", raw["ct"])
        made: dict[str, dict[str, Any]] = {key: {} for key in self.writes}
        for fixed in (m for m in pairing["fixed"] if m in context.modalities):
            key, prefix = keys.pair_key("ct", fixed), f"ct_to_{fixed}_"
            inputs = context.raw_inputs["ct"] + context.raw_inputs[fixed]
            with context.timer(f"pair.{key}"):
                if pairing["register"]:
                    result = save_transforms_reproducibly(register_ct_to_mr(ct, raw[fixed], registration),
                                                          context.transforms, prefix)
                    made["registration"][key] = dict(result.metrics)
                    context.track_transforms(prefix, "pair_ct", inputs, {"registration": registration.__dict__})
                    made["entry"][keys.transforms_key(key)] = writer.relative(context.transforms / f"{prefix}transforms.json")
                    pair_transforms = list(result.forward_transforms)
                else:
                    check_one_grid(raw["ct"], raw[fixed], context.job["volumes"]["ct"], context.job["volumes"][fixed],
                                   "ct_pairing.register false needs the CT and the MR on one grid")
                    made["registration"][key] = {"nmi": round(mutual_information(raw[fixed], ct), 6)}
                    pair_transforms = []
                # One resampling of the CT as read: through the pair transform into the raw MR, then
                # through the MR's transforms into its output grid (ANTs composes the list).
                chain = values["forward"][fixed] + pair_transforms
                grid = registered[fixed]
                paired = warp(ct, grid, chain, "linear", outside)
                hu = paired
                if artefact["enabled"]:
                    keep = carried_mask(values["native_masks"]["ct"], grid, chain)
                    hu = apply_mask(paired, keep, float(artefact["outside_hu"]))
                hu_path = writer.image(hu, f"{name}_{key}_hu.nii.gz", "pair_ct", inputs,
                                       {"artefact": artefact, "transforms": [Path(t).name for t in chain]})
                windowed, window = windowed_ct(hu, config["ct"])
                path = writer.image(windowed, f"{name}_{key}.nii.gz", "window", [writer.record(hu_path, "CT in HU")],
                                    window)
            made["entry"].update({key: writer.relative(path), keys.hu_key(key): writer.relative(hu_path),
                                  keys.mask_key(key): entry[keys.mask_key(fixed)]})
            made["volumes"][key], made["masks"][key] = windowed, values["masks"][fixed]
            view = f"ct -> own {fixed}"
            made["qc_views"][view] = RegistrationView(view, grid, by_position(raw["ct"], grid, outside), hu)
        return made
