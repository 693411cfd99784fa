"""The training record: everything inference needs from the cohort a bundle was trained on.

A bundle trained on a preprocessed cohort used that cohort's intensity mapping (MR normalisation
and head-mask options, CT window), its slice geometry and, for cohorts registered into a common
space, its reference volumes. Inference must use the same, and a bundle sent to another site
arrives without the cohort. So the training writes ``models/training_record.json`` (and copies the
references to ``models/references/``) when it starts (:class:`TrainingRecordWriter`, a handler of
every bundle's trainer: after the data checks, so a training refused before it starts writes
nothing), and inference reads them from the bundle.

The record (JSON, ``format_version`` 1)::

    {"format_version": 1,
     "bundle": {"name": "pix2pix_t1_t2", "version": "0.2.0"},
     "settings": {"image_size": 128, "generator_channels": 16, "neighbours": 0, ...},
     "overrides": {"image_size": "128", "train#trainer#max_epochs": "10"},
     "modalities": {"source": "t1", "target": "t2"},
     "intensity": {"t1": {IntensityMapping fields}, "t2": {...}},
     "slices": {"axis": "axial", "size": [128, 128], "neighbours": 0},
     "alignment": {"t1": {"reference": "references/reference_t1.nii.gz", "registration": {...}}, ...},
     "ct_artefact": {"enabled": true, "options": {...}, "outside_hu": -1000.0},
     "dataset": {"name": "demo", "config_sha256": "..."}}

- ``settings``: the values of the inference config's ids the network is built from, as trained;
  each bundle's ``inference.json`` takes its defaults from here, so neither the repository nor a
  recipient of the packaged bundle needs to repeat the training's overrides.
- ``overrides``: what was given on the training command line (``--key value``), as given.
- ``alignment``: per modality, the reference volume (relative to ``models/``) an input of that
  modality must be rigidly aligned to, and the registration parameters (the cohort's, rigid only).
  Absent when the cohort was not registered into a common space.
- ``ct_artefact``: how the cohort removed the head holder and other objects from its CTs (the
  artefact mask's options), for bundles with a CT side; a new CT is cleaned the same way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medgan_common.atomic import atomic_write_json, atomic_write_with
from medgan_common.errors import InputReadError, PreprocessingError
from modality_translation.inference.intensity import IntensityMapping

__all__ = [
    "RECORD_FILE",
    "REFERENCES_FOLDER",
    "TrainingRecord",
    "TrainingRecordError",
    "TrainingRecordWriter",
    "command_line_overrides",
    "read_training_record",
    "write_training_record",
]

#: File name of the record in a bundle's ``models/`` folder.
RECORD_FILE = "training_record.json"
#: Folder of the reference volumes in a bundle's ``models/`` folder.
REFERENCES_FOLDER = "references"
FORMAT_VERSION = 1

# Arguments of ``python -m monai.bundle run`` that are not config overrides.
_MONAI_RUN_ARGUMENTS = {
    "config_file", "meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking", "args_file",
    "workflow_type", "workflow_name", "properties_path",
}


class TrainingRecordError(PreprocessingError):
    """A training record that cannot be read or written, or does not fit the bundle."""


def command_line_overrides(argv: Sequence[str] | None = None) -> dict[str, str]:
    """The config overrides given on a ``python -m monai.bundle run`` command line.

    Args:
        argv: the command line (default ``sys.argv``); only a ``monai.bundle`` command's arguments
            are read, so a training started from Python records none.

    Returns:
        ``{id: value as typed}`` for every ``--id value`` or ``--id=value`` that is not one of
        MONAI's own run arguments (``config_file``, ``logging_file``...).
    """
    argv = list(sys.argv if argv is None else argv)
    if not argv or Path(argv[0]).parent.name != "bundle" or Path(argv[0]).parent.parent.name != "monai":
        return {}
    from modality_translation.bundle_support import command_line_options  # the one command-line parser

    # A bare flag is True, as fire reads it.
    return {name: "True" if value is None else value
            for name, value in command_line_options(argv).items() if name not in _MONAI_RUN_ARGUMENTS}


@dataclass(frozen=True)
class TrainingRecord:
    """What a bundle's training recorded for inference (see the module docstring for the file format).

    Attributes:
        folder: the ``models/`` folder the record belongs to (references are relative to it);
            ``None`` for a record not read from a file.
        settings, overrides, modalities, intensity, slices, alignment, ct_artefact, bundle, dataset: the
            record's entries.
    """

    folder: Path | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, str] = field(default_factory=dict)
    modalities: Mapping[str, str] = field(default_factory=dict)
    intensity: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    slices: Mapping[str, Any] = field(default_factory=dict)
    alignment: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ct_artefact: Mapping[str, Any] = field(default_factory=dict)
    bundle: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)

    def setting(self, name: str, default: Any = None) -> Any:
        """The trained value of an inference config id, or ``default`` when the record has none."""
        return self.settings.get(name, default)

    def intensity_mapping(self, modality: str) -> IntensityMapping:
        """The :class:`IntensityMapping` the training used for ``modality`` (raw units in, as a new scan is).

        Raises:
            TrainingRecordError: the record has no mapping for ``modality``.
        """
        entry = self.intensity.get(str(modality).lower())
        if entry is None:
            raise TrainingRecordError(self.path, f"records no intensity mapping for {modality!r} "
                                                 f"(it has {sorted(self.intensity) or 'none'})")
        return IntensityMapping(**{**entry, "on_network_scale": False})

    def preprocessing(self) -> dict[str, Any] | None:
        """The recorded intensity settings in the form ``IntensityMapping.from_preprocessing_config`` reads.

        ``None`` without a record, so that a config can fall back to the cohort's ``dataset.json``.
        """
        if not self.intensity:
            return None
        mr = next((v for m, v in self.intensity.items() if m != "ct"), None)
        ct = self.intensity.get("ct")
        config: dict[str, Any] = {}
        if ct is not None:
            config["ct"] = {"window": ct["window"], "out_range": ct["out_range"]}
        if mr is not None:
            config["mr"] = {"head_mask": mr["head_mask"],
                            "normalization": {**mr["normalization"], "out_range": mr["out_range"]}}
        return config

    def reference(self, modality: str) -> Path | None:
        """The reference volume an input of ``modality`` is aligned to, or ``None`` (no common space).

        Raises:
            TrainingRecordError: a recorded reference file that is missing from the bundle.
        """
        entry = self.alignment.get(str(modality).lower())
        if entry is None or self.folder is None:
            return None
        path = self.folder / entry["reference"]
        if not path.is_file():
            raise TrainingRecordError(path, "the reference volume recorded by the training is missing from the bundle")
        return path

    def registration(self, modality: str) -> dict[str, Any]:
        """The recorded registration parameters of ``modality``'s alignment (rigid only)."""
        return dict((self.alignment.get(str(modality).lower()) or {}).get("registration") or {})

    @property
    def path(self) -> Path | None:
        """The record file, when read from one."""
        return None if self.folder is None else self.folder / RECORD_FILE

    def to_json(self) -> dict[str, Any]:
        """The record as written to ``training_record.json``."""
        return {
            "format_version": FORMAT_VERSION,
            "bundle": dict(self.bundle),
            "settings": dict(self.settings),
            "overrides": dict(self.overrides),
            "modalities": dict(self.modalities),
            "intensity": {m: dict(v) for m, v in self.intensity.items()},
            "slices": dict(self.slices),
            "alignment": {m: dict(v) for m, v in self.alignment.items()},
            "ct_artefact": dict(self.ct_artefact),
            "dataset": dict(self.dataset),
        }


def read_training_record(models_dir: str | os.PathLike) -> TrainingRecord:
    """Read ``<models_dir>/training_record.json``; an empty record when the bundle has none.

    Args:
        models_dir: the bundle's ``models/`` folder.

    Returns:
        The record (empty, ``folder`` ``None``, when there is no file: defaults then apply).

    Raises:
        TrainingRecordError: a file that is not a record of a known format.
    """
    folder = Path(models_dir)
    path = folder / RECORD_FILE
    if not path.is_file():
        return TrainingRecord()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingRecordError(path, f"cannot read the training record: {exc}") from exc
    if not isinstance(data, Mapping) or data.get("format_version") != FORMAT_VERSION:
        found = data.get("format_version") if isinstance(data, Mapping) else type(data).__name__
        raise TrainingRecordError(path, f"not a training record of format {FORMAT_VERSION} (found {found!r})")
    keys = [f.name for f in dataclasses.fields(TrainingRecord) if f.name != "folder"]
    return TrainingRecord(folder=folder, **{key: data.get(key) or {} for key in keys})


def _read_json(path: Path, what: str) -> Mapping[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputReadError(path, f"cannot read the {what}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise InputReadError(path, f"the {what} is not a JSON object")
    return data


def _cohort_config(datalist_path: Path) -> Mapping[str, Any]:
    """The resolved preprocessing configuration of a cohort (from its datalist's provenance record)."""
    provenance = datalist_path.with_name(datalist_path.name + ".provenance.json")
    if not provenance.is_file():
        return {}
    return (_read_json(provenance, "datalist provenance").get("parameters") or {}).get("config") or {}


def _alignment(datalist_path: Path, datalist: Mapping[str, Any], config: Mapping[str, Any],
               modalities: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each modality's cohort reference and rigid registration parameters, for a registered cohort."""
    from preprocessing.config import registration_config  # the cohort's own rules for its parameters

    references_file = datalist_path.parent / "references" / "references.json"
    if not datalist.get("references") or not references_file.is_file():
        return {}
    references = _read_json(references_file, "references record")
    alignment = {}
    for modality in modalities:
        entry = references.get(modality)
        if not isinstance(entry, Mapping) or "image" not in entry:
            continue
        source = references_file.parent / entry["image"]
        if not source.is_file():
            raise InputReadError(source, f"the {modality} reference listed in {references_file} does not exist")
        registration = {}
        if config.get("registration"):
            parameters = registration_config(config, modality).replace(transforms=("Rigid",), reference=None)
            registration = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(parameters).items()}
        alignment[modality] = {"reference": f"{REFERENCES_FOLDER}/reference_{modality}.nii.gz", "source": source,
                               "registration": registration}
    return alignment


def write_training_record(
    models_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    source: str,
    target: str,
    settings: Mapping[str, Any],
    bundle_root: str | os.PathLike | None = None,
    image_size: int | Sequence[int] | None = None,
    neighbours: int = 0,
    argv: Sequence[str] | None = None,
) -> TrainingRecord:
    """Write ``<models_dir>/training_record.json`` and copy the cohort's references next to it.

    Called by every bundle's ``train.json`` once its datalist is ready, so a model saved at any
    epoch has its record.

    Args:
        models_dir: the bundle's ``models/`` folder.
        datalist: the cohort's ``dataset.json`` (its ``ct_window``, ``normalisation``,
            ``slice_axis``, ``references``; the preprocessing configuration from its provenance).
        source: the source modality (``"t1"``, ``"ct"``...); ``target`` likewise.
        settings: the inference config ids the network is built from, with their trained values.
        bundle_root: the bundle folder, for its name and version (``configs/metadata.json``).
        image_size: the network's slice size; default ``settings["image_size"]``.
        neighbours: the 2.5D half-width (input channels ``2N + 1``).
        argv: the command line (default ``sys.argv``) whose overrides are recorded.

    Returns:
        The record written.

    Raises:
        InputReadError: an unreadable datalist, provenance or references record, a missing reference.
    """
    from modality_translation.data.datalist import modality_of_key  # pair keys (t2_in_t1) -> modality

    datalist_path = Path(datalist)
    cohort = _read_json(datalist_path, "datalist")
    config = _cohort_config(datalist_path)
    modalities = {"source": modality_of_key(source), "target": modality_of_key(target)}
    intensity = {}
    for modality in dict.fromkeys(modalities.values()):
        mapping = IntensityMapping.from_preprocessing_config(modality, config or cohort)
        if config and cohort.get("ct_window"):
            mapping = dataclasses.replace(mapping, window=IntensityMapping.from_preprocessing_config(modality, cohort).window)
        intensity[modality] = {
            "modality": mapping.modality,
            "window": {"center": mapping.window.center, "width": mapping.window.width},
            "out_range": list(mapping.out_range),
            "normalization": dict(mapping.normalization),
            "head_mask": dict(mapping.head_mask),
        }
    size = settings.get("image_size") if image_size is None else image_size
    size = [int(size), int(size)] if isinstance(size, (int, float, str)) else [int(s) for s in size]
    bundle = {}
    if bundle_root is not None:
        metadata_path = Path(bundle_root) / "configs" / "metadata.json"
        if metadata_path.is_file():
            metadata = _read_json(metadata_path, "bundle metadata")
            bundle = {"name": metadata.get("name", Path(bundle_root).name), "version": metadata.get("version")}
        bundle.setdefault("folder", Path(bundle_root).name)
    folder = Path(models_dir)
    alignment = _alignment(datalist_path, cohort, config, list(dict.fromkeys(modalities.values())))
    for modality, entry in alignment.items():
        destination = folder / entry["reference"]
        destination.parent.mkdir(parents=True, exist_ok=True)
        source_file = entry.pop("source")
        atomic_write_with(destination, lambda tmp, src=source_file: shutil.copyfile(src, tmp))
    artefact = dict(config.get("artefact") or {}) if "ct" in modalities.values() else {}
    record = TrainingRecord(
        folder=folder,
        ct_artefact={key: artefact[key] for key in ("enabled", "options", "outside_hu") if key in artefact},
        settings=dict(settings),
        overrides=command_line_overrides(argv),
        modalities=modalities,
        intensity=intensity,
        slices={"axis": cohort.get("slice_axis", "axial"), "size": size, "neighbours": int(neighbours)},
        alignment=alignment,
        bundle=bundle,
        dataset={"name": cohort.get("name"), "config": cohort.get("config"), "config_sha256": cohort.get("config_sha256")},
    )
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / RECORD_FILE, record.to_json())
    return record


class TrainingRecordWriter:
    """Ignite handler writing the training record when the training starts (:func:`write_training_record`).

    At ``Events.STARTED``, not when the config is parsed: the datasets and their checks come first, so
    a training refused for its data leaves no ``models/`` folder behind.

    Args:
        kwargs: the arguments of :func:`write_training_record`.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def attach(self, engine: Any) -> None:
        """Write the record when ``engine`` starts."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Any = None) -> TrainingRecord:
        return write_training_record(**self.kwargs)
