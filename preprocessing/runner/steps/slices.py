"""Step: the 2D (or 2.5D) slices of every final volume, selected with its mask."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import SimpleITK as sitk

from medgan_common import dataset_keys as keys
from preprocessing.config import slice_size
from preprocessing.runner.steps.base import Step, SubjectContext


class ExtractSlices(Step):
    """Slices under ``slices/<key>/`` with their geometry index (which records the chosen range too).

    A pair (``t2_in_t1``, ``ct_in_t2``) shares its fixed volume's grid and mask, hence its slices:
    slice i of ``ct_in_t2`` is cut where slice i of ``t2`` is.
    """

    reads = ("volumes", "masks", "entry")
    writes = ("entry", "strips")

    def applies(self, context: SubjectContext) -> bool:
        return context.config["slices"]["enabled"]

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        from preprocessing.slices import extract_slices, resolve_axis, save_slices, selection_record

        spec, normalization = context.config["slices"], context.config["mr"]["normalization"]
        writer, name = context.writer, context.name
        made: dict[str, dict[str, Any]] = {key: {} for key in self.writes}
        for key, volume in values["volumes"].items():
            with context.timer(f"slice.{key}"):
                # "ct", and "ct_in_t2" (the CT on the T2's grid): windowed CT; the other keys are MR.
                is_ct = key.partition("_in_")[0] == "ct"
                out_range = context.config["ct"]["out_range"] if is_ct else normalization["out_range"]
                # z-scores have no fixed range: they are sliced as they are.
                intensity = None if not is_ct and normalization["method"] == "zscore" else out_range
                axis = resolve_axis(spec["axis"], volume.GetDirection())
                in_plane = tuple(n for a, n in enumerate(sitk.GetArrayViewFromImage(volume).shape) if a != axis)
                slices, geometries = extract_slices(
                    volume, spec["axis"], spec["selection"], sitk.GetArrayFromImage(values["masks"][key]) > 0,
                    spec["neighbours"], slice_size(context.config, in_plane), intensity_range=intensity,
                    out_range=out_range if intensity is not None else (-1.0, 1.0), interpolation=spec["interpolation"])
                paths = save_slices(slices, geometries, context.folder / "slices" / key, f"{name}_{key}",
                                    spec["compress"], selection_record(spec["selection"], geometries))
                source = writer.record(context.output / values["entry"][key], "volume")
                for path in paths:
                    writer.track(path, "slice", [source],
                                 {"slices": spec, "output_shape": list(geometries[0].output_shape)})
                made["entry"][keys.slices_key(key)] = [writer.relative(p) for p in paths[:-1]]
                made["entry"][keys.slice_index_key(key)] = writer.relative(paths[-1])
                made["strips"][key] = slices
        return made
