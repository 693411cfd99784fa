"""Step: T2 (and the other ``pairing.moving``) registered onto the subject's own T1, into T1's output grid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from medgan_common import dataset_keys as keys
from preprocessing.config import pairing_config
from preprocessing.registration import register
from preprocessing.runner.imaging import by_position, save_transforms_reproducibly, warp
from preprocessing.runner.steps.base import Step, SubjectContext
from preprocessing.runner.steps.normalise import normalise


class PairWithinSubject(Step):
    """Paired volumes for pix2pix: ``<subject>_<moving>_in_<fixed>``, normalised inside the fixed volume's head mask."""

    reads = ("raw", "registered", "forward", "masks", "entry")
    writes = ("volumes", "masks", "registration", "entry", "qc_views")

    def applies(self, context: SubjectContext) -> bool:
        pairing = context.config["pairing"]
        return pairing["enabled"] and pairing["fixed"] in context.modalities

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        from preprocessing.qc import RegistrationView

        pairing, normalization = context.config["pairing"], context.config["mr"]["normalization"]
        fixed = pairing["fixed"]
        raw, registered, writer, name = values["raw"], values["registered"], context.writer, context.name
        config = pairing_config(context.config)
        made: dict[str, dict[str, Any]] = {key: {} for key in self.writes}
        for moving in (m for m in pairing["moving"] if m in context.modalities):
            key, prefix = keys.pair_key(moving, fixed), f"{moving}_to_{fixed}_"
            with context.timer(f"pair.{moving}"):
                result = save_transforms_reproducibly(register(raw[moving], raw[fixed], config), context.transforms,
                                                      prefix)
                made["registration"][key] = dict(result.metrics)
                context.track_transforms(prefix, "pair", context.raw_inputs[moving] + context.raw_inputs[fixed],
                                         {"registration": config.__dict__})
                # One resampling of the raw volume: through the pair transform into the raw T1, then
                # through T1's transforms into the T1 output grid (ANTs applies the list as a composition).
                chain = values["forward"][fixed] + list(result.forward_transforms)
                paired = warp(raw[moving], registered[fixed], chain, "linear", 0.0)
                normalised = normalise(paired, sitk.GetArrayFromImage(values["masks"][fixed]) > 0, normalization)
                mask_record = writer.record(context.output / values["entry"][keys.mask_key(fixed)], "head mask")
                path = writer.image(normalised, f"{name}_{key}.nii.gz", "pair",
                                    context.raw_inputs[moving] + [mask_record],
                                    {"normalization": normalization, "transforms": [Path(t).name for t in chain]})
            made["entry"].update({key: writer.relative(path), keys.mask_key(key): values["entry"][keys.mask_key(fixed)],
                                  keys.transforms_key(key): writer.relative(context.transforms / f"{prefix}transforms.json")})
            made["volumes"][key], made["masks"][key] = normalised, values["masks"][fixed]
            view = f"{moving} -> own {fixed}"
            made["qc_views"][view] = RegistrationView(view, registered[fixed],
                                                      by_position(raw[moving], registered[fixed], 0.0), paired)
        return made
