"""Configuration of the cohort runner: defaults, shipped configurations, loading, merging, checking.

A configuration is a nested mapping (YAML or JSON). Every key has a default here
(:data:`DEFAULT_CONFIG`); a configuration file only states what differs. The shipped
configurations (``demo``, ``ixi``, ``cq500``, ``synthrad2023`` in ``preprocessing/configs/``) are selected by name,
and a user file can start from one of them with ``extends: <name or path>``.

Checking is strict: an unknown key anywhere is an error naming its dotted path, so that a typo
does not silently fall back to a default. The values of each step are checked by the step's own
parser (``RegistrationConfig.from_dict``, ``get_window``, ``SliceSelection.from_config``...), so
the runner fails before any subject is processed rather than halfway through a cohort.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from preprocessing.dicom import DEFAULT_READ_CONFIG
from preprocessing.nifti import MR_MODALITIES
from preprocessing.registration import RegistrationConfig
from preprocessing.slices import SliceSelection, resolve_axis
from preprocessing.windowing import get_window

__all__ = [
    "DEFAULT_CONFIG",
    "SHIPPED_CONFIGS",
    "ConfigError",
    "config_sha256",
    "ct_pairing_config",
    "load_config",
    "merge_config",
    "output_min_spacing",
    "pairing_config",
    "read_config_file",
    "registration_config",
    "shipped_config_path",
    "to_common_space_config",
    "slice_size",
    "validate_config",
]

#: Names accepted by ``--config`` instead of a file path.
SHIPPED_CONFIGS = ("demo", "demo_paired", "ixi", "cq500", "synthrad2023")

#: Input layouts the runner recognises (see :func:`preprocessing.runner.discover_subjects`).
LAYOUTS = ("auto", "demo", "ixi", "cq500", "synthrad2023")
#: Layouts that deliver a head mask with each subject (the ``given`` artefact mode and head mask).
LAYOUTS_WITH_MASKS = ("synthrad2023",)
ARTEFACT_MODES = ("reference", "per_subject", "given")
NORMALIZATION_METHODS = ("zscore", "percentile")
HEAD_MASK_METHODS = ("otsu", "noise", "given")
#: Rule of ``input.keep_slice_counts`` that keeps a modality's most common slice count.
MOST_COMMON = "most_common"

# Keys whose value is a free-form mapping checked by another parser (or free by design); the
# strict unknown-key check stops at them.
_OPEN_SECTIONS = {
    ("input", "dicom"),
    ("input", "keep_slice_counts"),
    ("registration", "common"),
    ("registration", "ct"),
    ("registration", "mr"),
    ("artefact", "options"),
    ("slices", "selection"),
    ("pairing", "registration"),
    ("ct_pairing", "registration"),
    ("registration", "output_min_spacing_mm"),
    ("registration", "to_common_space"),
}

DEFAULT_CONFIG: dict[str, Any] = {
    # Name recorded in dataset.json and the provenance sidecars.
    "name": "custom",
    "description": "",
    # Seed of the split and of ANTs (ANTS_RANDOM_SEED); the registration's own sampling seed is
    # registration.common.random_seed.
    "seed": 0,
    "input": {
        # auto | demo | ixi | cq500 | synthrad2023 (see preprocessing.runner.discover_subjects).
        "layout": "auto",
        # Modalities to process (lower case: ct, t1, t2, pd, mra); null: every modality found.
        "modalities": None,
        # Overrides of preprocessing.dicom.DEFAULT_READ_CONFIG (series_rules, missing_slices...).
        "dicom": {},
        # Write the truth of the demo cohort (truth/ beside raw/) into each registered space.
        "truth": True,
        # Keep only volumes with these slice counts (the third axis as stored: NIfTI dim 3, the DICOM
        # series' slices), per modality: a list of counts, or "most_common" (the cohort's most
        # frequent count), e.g. {t1: [150], t2: most_common}. A subject with a volume that does not
        # match is not processed; the report lists it as excluded, with the reason.
        "keep_slice_counts": {},
    },
    "pseudonym": {
        "prefix": "sub-",
        # Key of the keyed hash. A shared salt makes IDs linkable across runs; keep it secret
        # (salt_env) when the source folder names are identifying.
        "salt": "medgan-translate",
        # Name of an environment variable holding the salt; overrides "salt" when set.
        "salt_env": None,
        "length": 12,
    },
    # Write pseudonym_map.json (source folder name -> pseudonym). Off by default: the map
    # re-identifies the subjects.
    "write_pseudonym_map": False,
    "registration": {
        "enabled": True,
        # Coarsest useful output grid: a reference finer than this (mm; a number, or per modality
        # {ct: 1.0}) is smoothed and resampled so that no voxel side is smaller. A 0.5 mm CT
        # registers and stores 3-4 times faster on a 1 mm grid, which is finer than MR anyway.
        "output_min_spacing_mm": None,
        # RegistrationConfig fields for every modality, then per group (ct / mr), then per MR
        # modality (t1, t2, ... as extra keys). "reference" is a source subject name or an image
        # file; null chooses the most similar volume after rigid alignment.
        "common": {},
        "ct": {"default_value": -1024.0},
        "mr": {},
        # Modality whose reference defines one space for all (e.g. t1): the other modalities'
        # references are registered onto it (rigid + SyN, Mattes MI), so that a subject's CT, T1
        # and T2 end up on one grid, aligned to one anatomy. null: each modality keeps its
        # reference's own space.
        "common_space": None,
        # RegistrationConfig fields of those reference-to-reference registrations, over the moving
        # modality's own parameters (the metric is Mattes MI unless given here).
        "to_common_space": {},
    },
    "pairing": {
        # Register each subject's T2 (and PD...) rigidly onto its own T1: paired volumes on one grid.
        "enabled": True,
        "fixed": "t1",
        "moving": ["t2"],
        # RegistrationConfig fields of the within-subject registration.
        "registration": {"transforms": ["Rigid"]},
    },
    "ct_pairing": {
        # The subject's CT onto its own MR (each modality of "fixed" the subject has), resampled into
        # that MR's output grid: paired MR -> CT data (synthetic CT). Needs the CT's own artefact
        # mask (artefact.mode per_subject or given) or no mask at all.
        "enabled": False,
        "fixed": ["t2"],
        # false: the CT and the MR are delivered on one grid (SynthRAD2023); that is checked, and the
        # CT is resampled with the MR's own transforms only.
        "register": True,
        # RegistrationConfig fields over the CT's (registration.common + registration.ct); the
        # metric is Mattes mutual information unless given here.
        "registration": {"transforms": ["Rigid"]},
    },
    "artefact": {
        "enabled": True,
        # per_subject: each CT's own mask, built on the CT as read (the scanner's resolution) and
        # carried with its transforms; reference: the CT study's one mask, built on the reference
        # CT and applied to every registered CT, which loses the head where a registered head
        # extends beyond the reference's (docs/preprocessing.md, step 4); given: the mask delivered
        # with the input (synthrad2023 layout), carried like a per_subject mask.
        "mode": "per_subject",
        # Keyword arguments of preprocessing.artefact_mask.build_artefact_mask (threshold_hu,
        # n_erosions, margin...); its defaults are chosen by that module.
        "options": {},
        # HU written outside the mask (air).
        "outside_hu": -1000.0,
    },
    "ct": {
        # Preset name, {center, width} in HU, or [center, width].
        "window": "brain",
        # Range the window is mapped to (the windowed volume and the CT slices).
        "out_range": [-1.0, 1.0],
    },
    "mr": {
        # method: otsu | noise (preprocessing.normalization.head_mask_mr) | given (the mask delivered
        # with the input, synthrad2023 layout, carried with the volume's transforms).
        "head_mask": {"method": "otsu", "closing_radius": 0},
        "normalization": {
            "method": "percentile",
            "lower": 0.5,
            "upper": 99.5,
            "out_range": [-1.0, 1.0],
        },
    },
    "slices": {
        "enabled": True,
        "axis": "axial",
        "selection": {"mode": "head_fraction", "fraction": 0.6},
        # Output size: an integer (square), [rows, columns], or "auto" (the smallest power of two
        # holding the reference's in-plane size, between 32 and 256).
        "size": 256,
        "neighbours": 0,
        "interpolation": "bilinear",
        "compress": True,
    },
    "split": {"training": 0.7, "validation": 0.15, "test": 0.15},
    "qc": {"enabled": True, "slices_in_strip": 8},
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key or file at fault."""


def shipped_config_path(name: str) -> Path:
    """Path of a shipped configuration (one of :data:`SHIPPED_CONFIGS`).

    Raises:
        ConfigError: ``name`` is not a shipped configuration.
    """
    if name not in SHIPPED_CONFIGS:
        raise ConfigError(f"unknown config {name!r}: not a file and not one of {', '.join(SHIPPED_CONFIGS)}")
    return Path(str(resources.files("preprocessing") / "configs" / f"{name}.yaml"))


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read one YAML (``.yaml``/``.yml``) or JSON (``.json``) configuration file, without merging.

    Raises:
        ConfigError: a missing or unparsable file, or one whose top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return dict(data)


def merge_config(base: Mapping[str, Any], overrides: Mapping[str, Any], _path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``; mappings merge, other values replace.

    Keys unknown to ``base`` are rejected except inside the free-form sections (step options
    checked by the step itself) and the per-modality registration sections.

    Raises:
        ConfigError: an unknown key (named by its dotted path) or a mapping replaced by a non-mapping.
    """
    merged = copy.deepcopy(dict(base))
    open_section = _path in _OPEN_SECTIONS or _path == ("registration",)
    for key, value in overrides.items():
        where = ".".join((*_path, str(key)))
        if key not in merged:
            if not open_section:
                raise ConfigError(f"unknown config key {where!r}; known keys here: {', '.join(sorted(merged)) or 'none'}")
            merged[key] = copy.deepcopy(value)
            continue
        if isinstance(merged[key], Mapping):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
            merged[key] = merge_config(merged[key], value, (*_path, str(key)))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve(spec: str | os.PathLike, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The merged configuration of a name or file, following ``extends`` chains."""
    if isinstance(spec, str) and spec in SHIPPED_CONFIGS and not Path(spec).is_file():
        path = shipped_config_path(spec)
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"unknown config {str(spec)!r}: not a file and not one of {', '.join(SHIPPED_CONFIGS)}")
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {str(path)!r} extends itself (chain: {' -> '.join(map(str, seen))})")
    data = read_config_file(path)
    parent = data.pop("extends", None)
    if parent is None:
        return merge_config(DEFAULT_CONFIG, data)
    if not isinstance(parent, str):
        raise ConfigError(f"'extends' in {str(path)!r} must be a config name or a path, got {parent!r}")
    # A relative parent path is relative to the file that names it.
    if parent not in SHIPPED_CONFIGS and not Path(parent).is_absolute():
        parent = str(path.parent / parent)
    return merge_config(_resolve(parent, (*seen, path)), data)


def load_config(spec: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load, merge with the defaults, and check a configuration.

    Args:
        spec: a shipped name (:data:`SHIPPED_CONFIGS`), a YAML/JSON file path, or a mapping
            (merged over the defaults; may hold ``extends``).

    Returns:
        The complete, checked configuration (plain dicts, lists and scalars).

    Raises:
        ConfigError: unknown name, missing or unreadable file, unknown key or invalid value.
    """
    if isinstance(spec, Mapping):
        data = dict(spec)
        parent = data.pop("extends", None)
        base = _resolve(parent, ()) if parent is not None else DEFAULT_CONFIG
        config = merge_config(base, data)
    else:
        config = _resolve(spec, ())
    return validate_config(config)


def registration_config(config: Mapping[str, Any], modality: str) -> RegistrationConfig:
    """The registration parameters of ``modality``: ``common``, then ``ct``/``mr``, then the modality's own section.

    Raises:
        ValueError: invalid registration options (from :meth:`RegistrationConfig.from_dict`).
    """
    sections = config["registration"]
    values = dict(sections.get("common") or {})
    values.update(sections.get("ct" if modality == "ct" else "mr") or {})
    if modality != "ct":
        values.update(sections.get(modality) or {})
    return RegistrationConfig.from_dict(values)


def to_common_space_config(config: Mapping[str, Any], modality: str) -> RegistrationConfig:
    """Parameters registering ``modality``'s reference onto the ``registration.common_space`` reference.

    The moving modality's own parameters, with Mattes mutual information (the two references
    differ in contrast) and no reference choice, then ``registration.to_common_space``.

    Raises:
        ValueError: invalid registration options.
    """
    values = dataclasses.asdict(registration_config(config, modality))
    values.update(metric="MI", syn_metric=None, histogram_matching=False, reference=None)
    values.update(config["registration"].get("to_common_space") or {})
    return RegistrationConfig.from_dict(values)


def output_min_spacing(config: Mapping[str, Any], modality: str) -> float | None:
    """``registration.output_min_spacing_mm`` of ``modality`` (``None``: the reference's own grid)."""
    value = config["registration"]["output_min_spacing_mm"]
    if isinstance(value, Mapping):
        value = value.get(modality)
    return None if value is None else float(value)


def pairing_config(config: Mapping[str, Any]) -> RegistrationConfig:
    """Registration parameters of the within-subject pairing (MR ``common`` + ``mr`` + ``pairing.registration``)."""
    values = dict(config["registration"].get("common") or {})
    values.update(config["registration"].get("mr") or {})
    values.pop("reference", None)
    values.update(config["pairing"].get("registration") or {})
    return RegistrationConfig.from_dict(values)


def ct_pairing_config(config: Mapping[str, Any]) -> RegistrationConfig:
    """Registration parameters of the CT onto its own MR (``ct_pairing``).

    The CT's own parameters (``registration.common`` + ``registration.ct``, so the CT's
    ``default_value``), with Mattes mutual information (CT and MR differ in contrast) and no
    reference, then ``ct_pairing.registration``.

    Raises:
        ValueError: invalid registration options.
    """
    values = dataclasses.asdict(registration_config(config, "ct"))
    values.update(metric="MI", syn_metric=None, histogram_matching=False, reference=None)
    values.update(config["ct_pairing"].get("registration") or {})
    return RegistrationConfig.from_dict(values)


def slice_size(config: Mapping[str, Any], in_plane_shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """Slice output size from ``slices.size``; ``"auto"`` needs the in-plane shape of the volume grid.

    ``auto`` takes the smallest power of two that holds the larger in-plane dimension, between 32
    and 256: a 64-voxel demo volume gives 64 x 64 slices instead of being blown up to 256.
    """
    size = config["slices"]["size"]
    if size == "auto":
        if in_plane_shape is None:
            raise ValueError("slices.size 'auto' needs the in-plane shape of the volume")
        side = 32
        while side < max(in_plane_shape) and side < 256:
            side *= 2
        return side, side
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"config key {key!r}: {message}")


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check the values of a merged configuration (see :data:`DEFAULT_CONFIG`).

    Returns:
        ``config`` itself, with ``input.modalities``, ``pairing.moving`` and ``ct_pairing.fixed``
        lower-cased and ``input.keep_slice_counts`` rules as sorted lists (or ``most_common``).

    Raises:
        ConfigError: the first invalid value found, naming its key.
    """
    if not isinstance(config.get("name"), str) or not config["name"]:
        raise _fail("name", "must be a non-empty string")
    if not isinstance(config["seed"], int) or isinstance(config["seed"], bool) or config["seed"] < 0:
        raise _fail("seed", f"must be a whole number >= 0, got {config['seed']!r}")

    source = config["input"]
    if source["layout"] not in LAYOUTS:
        raise _fail("input.layout", f"must be one of {', '.join(LAYOUTS)}, got {source['layout']!r}")
    if source["modalities"] is not None:
        if not isinstance(source["modalities"], list) or not source["modalities"]:
            raise _fail("input.modalities", "must be null or a non-empty list such as [ct, t1, t2]")
        source["modalities"] = [str(m).lower() for m in source["modalities"]]
    unknown = sorted(set(source["dicom"]) - set(DEFAULT_READ_CONFIG))
    if unknown:
        raise _fail("input.dicom", f"unknown DICOM read option(s) {unknown}; known: {sorted(DEFAULT_READ_CONFIG)}")
    source["keep_slice_counts"] = _checked_slice_counts(source["keep_slice_counts"])

    pseudonym = config["pseudonym"]
    if not isinstance(pseudonym["prefix"], str):
        raise _fail("pseudonym.prefix", "must be a string")
    if not isinstance(pseudonym["length"], int) or not 8 <= pseudonym["length"] <= 64:
        raise _fail("pseudonym.length", f"must be a whole number from 8 to 64, got {pseudonym['length']!r}")
    if not isinstance(pseudonym["salt"], str):
        raise _fail("pseudonym.salt", "must be a string")

    registration = config["registration"]
    modalities = [k for k in registration
                  if k not in ("enabled", "output_min_spacing_mm", "common", "ct", "mr", "common_space", "to_common_space")]
    for modality in modalities:
        if modality.upper().split("-")[0] not in MR_MODALITIES or modality != modality.lower():
            raise _fail(f"registration.{modality}", f"unknown section; per-modality sections are lower-case MR "
                        f"modalities ({', '.join(m.lower() for m in MR_MODALITIES)}), besides common, ct and mr")
    for modality in ["ct", "t1", *modalities]:
        try:
            registration_config(config, modality)
        except (TypeError, ValueError) as error:
            raise _fail(f"registration.{modality}", str(error)) from None
    space = registration["common_space"]
    if space is not None:
        if not isinstance(space, str) or (space != "ct" and space.upper().split("-")[0] not in MR_MODALITIES):
            raise _fail("registration.common_space", f"must be null or a modality (ct, t1, t2...), got {space!r}")
        registration["common_space"] = space.lower()
        wanted = config["input"]["modalities"]
        if wanted is not None and registration["common_space"] not in [str(m).lower() for m in wanted]:
            raise _fail("registration.common_space", f"{space!r} is not one of input.modalities {wanted}")
        try:
            to_common_space_config(config, "ct")
        except (TypeError, ValueError) as error:
            raise _fail("registration.to_common_space", str(error)) from None
    minimum = registration["output_min_spacing_mm"]
    values = list(minimum.values()) if isinstance(minimum, Mapping) else [minimum]
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0) for v in values):
        raise _fail("registration.output_min_spacing_mm", f"must be null, a positive number or {{modality: number}}, got {minimum!r}")
    pairing = config["pairing"]
    if isinstance(pairing["moving"], str):
        pairing["moving"] = [pairing["moving"]]
    pairing["moving"] = [str(m).lower() for m in pairing["moving"]]
    pairing["fixed"] = str(pairing["fixed"]).lower()
    if pairing["fixed"] in pairing["moving"] or pairing["fixed"] == "ct" or "ct" in pairing["moving"]:
        raise _fail("pairing", "pairs MR modalities of one subject: fixed (t1) must differ from moving (t2...) and not be ct")
    try:
        pairing_config(config)
    except (TypeError, ValueError) as error:
        raise _fail("pairing.registration", str(error)) from None
    _check_ct_pairing(config)

    from preprocessing.artefact_mask import build_artefact_mask

    known = set(inspect.signature(build_artefact_mask).parameters) - {"ct_hu"}
    unknown = sorted(set(config["artefact"]["options"]) - known)
    if unknown:
        raise _fail("artefact.options", f"unknown option(s) {unknown} of build_artefact_mask; known: {sorted(known)}")
    if config["artefact"]["mode"] not in ARTEFACT_MODES:
        raise _fail("artefact.mode", f"must be one of {', '.join(ARTEFACT_MODES)}, got {config['artefact']['mode']!r}")
    if config["artefact"]["mode"] == "reference" and not registration["enabled"] and config["artefact"]["enabled"]:
        raise _fail("artefact.mode", "'reference' needs registration (registration.enabled); use 'per_subject'")
    if config["artefact"]["mode"] == "given" and config["artefact"]["enabled"]:
        _check_masks_delivered(config, "artefact.mode")

    try:
        get_window(config["ct"]["window"])
    except (TypeError, ValueError) as error:
        raise _fail("ct.window", str(error)) from None
    _check_range(config["ct"]["out_range"], "ct.out_range")

    mr = config["mr"]
    if mr["head_mask"]["method"] not in HEAD_MASK_METHODS:
        raise _fail("mr.head_mask.method", f"must be one of {', '.join(HEAD_MASK_METHODS)}")
    if mr["head_mask"]["method"] == "given":
        _check_masks_delivered(config, "mr.head_mask.method")
    normalization = mr["normalization"]
    if normalization["method"] not in NORMALIZATION_METHODS:
        raise _fail("mr.normalization.method", f"must be one of {', '.join(NORMALIZATION_METHODS)}, got {normalization['method']!r}")
    if not 0 <= normalization["lower"] < normalization["upper"] <= 100:
        raise _fail("mr.normalization", f"needs 0 <= lower < upper <= 100, got {normalization['lower']}, {normalization['upper']}")
    _check_range(normalization["out_range"], "mr.normalization.out_range")

    slices = config["slices"]
    try:
        resolve_axis(slices["axis"])
        SliceSelection.from_config(slices["selection"])
    except (TypeError, ValueError) as error:
        raise _fail("slices", str(error)) from None
    size = slices["size"]
    valid_size = size == "auto" or (isinstance(size, int) and size > 0) or (
        isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size))
    if not valid_size:
        raise _fail("slices.size", f"must be 'auto', a positive whole number or [rows, columns], got {size!r}")
    if not isinstance(slices["neighbours"], int) or slices["neighbours"] < 0:
        raise _fail("slices.neighbours", f"must be a whole number >= 0, got {slices['neighbours']!r}")

    split = config["split"]
    fractions = [split[k] for k in ("training", "validation", "test")]
    if any(not isinstance(f, (int, float)) or f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise _fail("split", f"training, validation and test must be fractions >= 0 summing to 1, got {fractions}")
    if not isinstance(config["qc"]["slices_in_strip"], int) or config["qc"]["slices_in_strip"] < 1:
        raise _fail("qc.slices_in_strip", "must be a whole number >= 1")
    return config


def _checked_slice_counts(rules: Any) -> dict[str, list[int] | str]:
    """``input.keep_slice_counts`` with lower-case modality keys and each rule a list of counts or ``most_common``."""
    if not isinstance(rules, Mapping):
        raise _fail("input.keep_slice_counts", f"must be a mapping {{modality: [counts] or {MOST_COMMON}}}, got {rules!r}")
    checked: dict[str, list[int] | str] = {}
    for modality, rule in rules.items():
        key = f"input.keep_slice_counts.{modality}"
        name = str(modality).lower()
        if name != "ct" and name.upper() not in MR_MODALITIES:
            raise _fail(key, f"unknown modality; use ct or {', '.join(m.lower() for m in MR_MODALITIES)}")
        if rule == MOST_COMMON:
            checked[name] = MOST_COMMON
            continue
        if isinstance(rule, int) and not isinstance(rule, bool):
            rule = [rule]
        if not (isinstance(rule, list) and rule and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                         for n in rule)):
            raise _fail(key, f"must be a list of slice counts (whole numbers > 0) or {MOST_COMMON!r}, got {rule!r}")
        checked[name] = sorted(set(rule))
    return checked


def _check_masks_delivered(config: Mapping[str, Any], key: str) -> None:
    """A ``given`` mask needs an input layout that delivers one (or ``auto``, which may find one)."""
    layout = config["input"]["layout"]
    if layout not in ("auto", *LAYOUTS_WITH_MASKS):
        raise _fail(key, f"'given' uses the mask delivered with the input, which the {layout!r} layout has none of "
                    f"(layouts with masks: {', '.join(LAYOUTS_WITH_MASKS)})")


def _check_ct_pairing(config: dict[str, Any]) -> None:
    """``ct_pairing``: MR modalities to pair the CT with, and a CT mask that can follow the CT onto them."""
    section = config["ct_pairing"]
    fixed = section["fixed"]
    if isinstance(fixed, str):
        fixed = [fixed]
    if not isinstance(fixed, list) or not fixed:
        raise _fail("ct_pairing.fixed", f"must be a non-empty list of MR modalities such as [t2, t1], got {fixed!r}")
    section["fixed"] = [str(m).lower() for m in fixed]
    for modality in section["fixed"]:
        if modality.upper() not in MR_MODALITIES:
            raise _fail("ct_pairing.fixed", f"{modality!r} is not an MR modality "
                        f"({', '.join(m.lower() for m in MR_MODALITIES)}): the CT is paired with the subject's own MR")
    if len(set(section["fixed"])) != len(section["fixed"]):
        raise _fail("ct_pairing.fixed", f"names a modality twice: {section['fixed']}")
    if not isinstance(section["enabled"], bool) or not isinstance(section["register"], bool):
        raise _fail("ct_pairing", "enabled and register must be true or false")
    try:
        ct_pairing_config(config)
    except (TypeError, ValueError) as error:
        raise _fail("ct_pairing.registration", str(error)) from None
    artefact = config["artefact"]
    if section["enabled"] and artefact["enabled"] and artefact["mode"] == "reference":
        # The reference mask lies on the CT reference's grid; bringing it onto the subject's MR
        # would take the inverse of the CT's deformable registration. The CT's own mask follows
        # the CT's transforms instead.
        raise _fail("ct_pairing", "needs the CT's own artefact mask (artefact.mode per_subject or given), "
                    "not the reference's")


def _check_range(value: Any, key: str) -> None:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and float(value[0]) < float(value[1])):
        raise _fail(key, f"must be [low, high] with low < high, got {value!r}")


def config_sha256(config: Mapping[str, Any]) -> str:
    """SHA-256 of the configuration's canonical JSON (sorted keys): equal configs, equal hashes."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
