"""What every per-subject step shares: the subject's fixed context, the step contract and its runner.

A step is an object that declares the values it reads and the values it writes (by name, e.g.
``registered``: volumes on their output grid, by modality). :func:`run_steps` hands each step only
what it declared it reads and accepts only what it declared it writes; a step may add entries to
a value (a modality, a dataset key) but never replace one another step made. The step order is
the pipeline list in :mod:`preprocessing.runner.steps`.

Values passed between steps (each a mapping):

* ``raw``: volumes as read from the cache, by modality;
* ``given``: ``{"mask": image}``, the head mask delivered with the volumes (SynthRAD2023), if any;
* ``native_masks``, ``holder_free``: in ``per_subject`` (and ``given``) artefact mode, the CT's mask
  on the grid it was read on and the CT without its holder;
* ``registered``, ``forward``: volumes on their output grid before masking and normalisation, and
  the transform files that took each raw volume there (empty: no registration);
* ``volumes``, ``masks``: the final volumes (windowed CT, normalised MR, pairs) and their masks, by
  dataset key; slices are cut from them;
* ``entry``: the subject's dataset.json item; ``registration``, ``artefact_mask``: its metrics;
* ``qc_views``, ``strips``: what the QC montages show.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import SimpleITK as sitk

from medgan_common.errors import PreprocessingError
from preprocessing.provenance import input_record, write_sidecar
from preprocessing.runner.common import jsonable, relative, write_image
from preprocessing.runner.imaging import check_one_grid

__all__ = ["Step", "SubjectContext", "SubjectWriter", "Timer", "delivered_mask", "run_steps"]


class Timer:
    """Accumulates seconds per ``step.modality`` key."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start


class SubjectWriter:
    """Writes one subject's files, each with its provenance sidecar."""

    def __init__(self, output: Path, folder: Path):
        self.output = output
        self.folder = folder

    def image(self, image: sitk.Image, name: str, step: str, inputs: list[dict], parameters: dict) -> Path:
        path = write_image(image, self.folder / name)
        self.track(path, step, inputs, parameters)
        return path

    def track(self, path: Path, step: str, inputs: list[dict], parameters: dict) -> None:
        write_sidecar(path, step, inputs, jsonable(parameters))

    def record(self, path: Path, role: str) -> dict:
        """Input record of a file this subject already wrote."""
        return input_record(path, relative(path, self.output), role)

    def relative(self, path: Path) -> str:
        return relative(path, self.output)


@dataclass(frozen=True)
class SubjectContext:
    """What a subject's steps may use besides the values they declare: the job, its folder and tools.

    Attributes:
        job: the subject's task (pseudonym, configuration, modalities, references, input hashes...).
        folder: ``OUT/subjects/<pseudonym>``.
        timer: seconds per ``step.modality`` (the report's columns).
        writer: writes the subject's files with their sidecars.
        raw_inputs: provenance records of each modality's input volume.
    """

    job: dict
    folder: Path
    timer: Timer
    writer: SubjectWriter
    raw_inputs: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.job["subject"]

    @property
    def config(self) -> dict:
        return self.job["config"]

    @property
    def modalities(self) -> list[str]:
        return self.job["modalities"]

    @property
    def output(self) -> Path:
        return Path(self.job["output"])

    @property
    def transforms(self) -> Path:
        return self.folder / "transforms"

    def reference_file(self, name: str) -> Path:
        return self.output / "references" / name

    def track_transforms(self, prefix: str, step: str, inputs: list[dict], parameters: dict) -> None:
        """Sidecars for the transform files ``prefix*`` a registration saved."""
        for path in sorted(self.transforms.glob(f"{prefix}*")):
            if not path.name.endswith(".provenance.json"):
                self.writer.track(path, step, inputs, parameters)


def delivered_mask(context: SubjectContext, raw: Mapping[str, sitk.Image], given: Mapping[str, sitk.Image],
                   modality: str, option: str) -> sitk.Image:
    """The head mask delivered with the subject's volumes, checked to lie on ``modality``'s grid as read.

    Args:
        context: the subject.
        raw: the volumes as read.
        given: the ``given`` value (``{"mask": image}`` or empty).
        modality: the volume the mask is used for.
        option: the configuration key that asks for it, for the message.

    Returns:
        The mask as a uint8 image (1 = head).

    Raises:
        PreprocessingError: the subject has no delivered mask.
        GeometryError: the volume is not on the mask's grid (naming the volume's file and the mask's).
    """
    if "mask" not in given:
        raise PreprocessingError(context.job["volumes"][modality], f"{option} 'given' needs the mask delivered with "
                                 "the volumes (the synthrad2023 layout's mask.nii.gz); this subject has none")
    check_one_grid(raw[modality], given["mask"], context.job["volumes"][modality], context.job["mask"],
                   "the delivered mask is the head mask of every volume of its subject")
    # Read as float like every NIfTI volume; a keep mask is stored as 0/1 bytes, like a built one.
    return sitk.Cast(given["mask"] > 0.5, sitk.sitkUInt8)


def transform_names(forward: Mapping[str, list[str]], modality: str) -> list[str]:
    """File names of the transforms that took ``modality`` to its output grid."""
    return [Path(t).name for t in forward[modality]]


class Step:
    """One per-subject step.

    Subclasses set ``reads`` and ``writes`` (value names, see the module docstring), may narrow
    :meth:`applies`, and implement :meth:`run`, which returns ``{value name: {key: item}}`` for
    some of the names in ``writes``.
    """

    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()

    def applies(self, context: SubjectContext) -> bool:
        """Whether the step runs for this subject and configuration."""
        return True

    def run(self, context: SubjectContext, values: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        raise NotImplementedError


def run_steps(steps: Sequence[Step], context: SubjectContext,
              values: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Run ``steps`` in order on ``values`` (updated in place and returned).

    Raises:
        TypeError: a step returned a value it does not declare, or replaced an item another step made.
    """
    for step in steps:
        if not step.applies(context):
            continue
        view = {name: MappingProxyType(values.setdefault(name, {})) for name in step.reads}
        made = step.run(context, view)
        for name, items in made.items():
            if name not in step.writes:
                raise TypeError(f"{type(step).__name__} wrote {name!r}, which it does not declare")
            target = values.setdefault(name, {})
            replaced = set(items) & set(target)
            if replaced:
                raise TypeError(f"{type(step).__name__} replaced {name} {sorted(replaced)} made by an earlier step")
            target.update(items)
    return values
