"""A trained bundle as one zip another site can use: MONAI's bundle layout, its weights, TorchScript and hashes.

``package_bundle(bundles/<name>, out)`` writes ``out/<name>_v<version>.zip`` holding one folder::

    <name>/
      configs/          every .json / .conf / .yaml of the bundle's configs/ (metadata.json completed,
                        inference.json with the trained settings as its defaults)
      docs/             README.md (with a section on this package), model card, images, results
      LICENSE
      models/model.pt   the trained weights, as training saved them
      models/model.ts   TorchScript of the forward generator (model_reverse.ts: the reverse one, if any)
      models/training_record.json, models/references/*   when training wrote them
      large_files.yml   sha256 of every file under models/

``configs/metadata.json`` gets ``eval_metrics`` (mean and standard deviation of each metric of each
evaluated direction, with the summary file it comes from), ``trained_with`` (the training record's
settings and overrides) and this version's ``changelog`` entry completed with the packaging. The
packaged ``inference.json`` has the record's settings written in place of its defaults, so the
recipient runs it without overrides.

The zip is deterministic: entries sorted, fixed timestamps and permissions, so packaging the same
files twice gives the same bytes. The only date in it (the changelog's) is the UTC day of
``models/model.pt``'s modification time, or the one given. It is written under a temporary name and
renamed, so a failed packaging leaves no partial zip.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from medgan_common.atomic import atomic_path
from modality_translation.bundle.errors import BundleIntegrityError
from modality_translation.bundle.large_files import LARGE_FILES_NAME, file_sha256, large_files_yaml
from modality_translation.bundle.torchscript import TORCHSCRIPT_NAMES, generator_input_shapes, save_torchscript

__all__ = [
    "CONFIG_SUFFIXES",
    "RECORD_NAME",
    "ZIP_TIMESTAMP",
    "evaluation_summaries",
    "package_bundle",
    "package_name",
    "read_training_record",
]

#: Config files packaged from ``configs/``.
CONFIG_SUFFIXES = (".json", ".conf", ".yaml", ".yml")
#: The training record, under ``models/``.
RECORD_NAME = "training_record.json"
#: Timestamp of every zip entry (the earliest a zip can store): the bytes do not depend on when.
ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o644 << 16
_SUMMARY_NAME = "metrics_summary.json"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleIntegrityError(path, f"is missing; {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleIntegrityError(path, f"cannot be read as JSON ({type(exc).__name__}: {exc})") from exc


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=4) + "\n"


def package_name(bundle_dir: str | os.PathLike) -> str:
    """``<name>_v<version>.zip`` of a bundle folder: its folder name and ``configs/metadata.json``'s version."""
    bundle_dir = Path(bundle_dir)
    metadata = _read_json(bundle_dir / "configs" / "metadata.json", "it is not a bundle folder")
    version = metadata.get("version") if isinstance(metadata, Mapping) else None
    if not isinstance(version, str) or not version:
        raise BundleIntegrityError(bundle_dir / "configs" / "metadata.json", f"has no version string (found {version!r})")
    return f"{bundle_dir.resolve().name}_v{version}.zip"


def read_training_record(bundle_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``models/training_record.json`` of a bundle, or ``None`` when training wrote none.

    Raises:
        BundleIntegrityError: the file exists but is not a JSON object with mapping ``settings`` /
            ``overrides`` (when present).
    """
    path = Path(bundle_dir) / "models" / RECORD_NAME
    if not path.exists():
        return None
    record = _read_json(path, "")
    if not isinstance(record, dict):
        raise BundleIntegrityError(path, f"is a JSON {type(record).__name__}, not an object")
    for key in ("settings", "overrides"):
        if not isinstance(record.get(key, {}), Mapping):
            raise BundleIntegrityError(path, f"entry {key!r} is not an object of config ids and values")
    return record


def evaluation_summaries(bundle_dir: str | os.PathLike, record: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """The evaluation summaries of a bundle, by direction: the ``metrics_summary.json`` that ``configs/evaluate.json`` writes.

    The folders are those of ``evaluate.json``'s ``metrics`` entry (or its ``forward`` / ``reverse``
    entries), resolved with the bundle's root and the record's modalities; a direction not evaluated
    is left out.

    Raises:
        BundleIntegrityError: a summary older than ``models/model.pt`` (it evaluated an earlier training).
    """
    bundle_dir = Path(bundle_dir).resolve()
    config_file = bundle_dir / "configs" / "evaluate.json"
    if not config_file.is_file():
        return {}
    parser = ConfigParser()
    parser.read_config(str(config_file))
    overrides: dict[str, Any] = {"bundle_root": str(bundle_dir)}
    modalities = (record or {}).get("modalities")
    if isinstance(modalities, Mapping):
        overrides.update({key: modalities[key] for key in ("source", "target") if key in modalities and key in parser})
    parser.update(overrides)
    entries = ["metrics"] if "metrics#output_dir" in parser else [
        f"metrics#{direction}" for direction in ("forward", "reverse") if f"metrics#{direction}#output_dir" in parser
    ]
    model_time = (bundle_dir / "models" / "model.pt").stat().st_mtime
    summaries = {}
    for entry in entries:
        folder = Path(parser.get_parsed_content(f"{entry}#output_dir"))
        summary = folder / _SUMMARY_NAME
        if summary.is_file():
            if summary.stat().st_mtime < model_time:
                raise BundleIntegrityError(
                    summary, "is older than models/model.pt: it evaluated an earlier training; evaluate the bundle again "
                    "(python -m monai.bundle run evaluate --config_file configs/evaluate.json) before packaging"
                )
            summaries[folder.name] = summary
    return summaries


def _eval_metrics(bundle_dir: Path, summaries: Mapping[str, Path]) -> dict[str, Any]:
    """``{direction: {"file": ..., "split": ..., "n_subjects": ..., "metrics": {metric: {"mean", "std"}}}}``."""
    metrics = {}
    for direction, path in sorted(summaries.items()):
        summary = _read_json(path, "")
        if not isinstance(summary, Mapping):
            raise BundleIntegrityError(path, "is not a JSON object of metric statistics")
        values = {}
        for metric, stats in sorted(summary.items()):
            if isinstance(stats, Mapping) and isinstance(stats.get("mean"), (int, float)):
                values[metric] = {"mean": stats["mean"], "std": stats.get("std")}
            elif isinstance(stats, Mapping) and isinstance(stats.get("value"), (int, float)):
                values[metric] = {"value": stats["value"]}  # a dataset-level metric (FID)
        evaluation = summary.get("evaluation") if isinstance(summary.get("evaluation"), Mapping) else {}
        metrics[direction] = {
            "file": path.relative_to(bundle_dir).as_posix() if path.is_relative_to(bundle_dir) else str(path),
            **{key: evaluation[key] for key in ("split", "n_subjects", "units") if key in evaluation},
            "metrics": values,
        }
    return metrics


def _format_statistic(metric: str, stats: Mapping[str, Any]) -> str:
    """``"ssim 0.75 ± 0.02"``; the mean alone where one subject gives no spread; ``"fid 31.2"`` for a dataset value."""
    if "mean" not in stats:
        return f"{metric} {stats['value']:.4g}"
    if stats.get("std") is None:
        return f"{metric} {stats['mean']:.4g} (one subject)"
    return f"{metric} {stats['mean']:.4g} ± {stats['std']:.3g}"


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(values.items())) or "none"


def _packaged_metadata(
    metadata: dict[str, Any], record: Mapping[str, Any] | None, eval_metrics: dict[str, Any],
    input_shapes: Mapping[str, tuple[int, ...]], model_sha256: str, date: str,
) -> dict[str, Any]:
    metadata = copy.deepcopy(metadata)
    version = metadata["version"]
    settings = dict((record or {}).get("settings", {}))
    overrides = dict((record or {}).get("overrides", {}))
    if eval_metrics:
        metadata["eval_metrics"] = eval_metrics
    if record is not None:
        metadata["trained_with"] = {"settings": settings, "overrides": overrides, "record": f"models/{RECORD_NAME}"}
    # The network's data format describes the exported generator: the slice it was exported with.
    _, channels, *spatial = input_shapes["forward"]
    formats = metadata.get("network_data_format", {})
    for section, key in (("inputs", "image"), ("outputs", "pred")):
        entry = formats.get(section, {}).get(key)
        if isinstance(entry, dict):
            entry["spatial_shape"] = list(spatial)
            if section == "inputs":
                entry["num_channels"] = channels
    trained = (f"trained with settings {_describe(settings)}; training overrides {_describe(overrides)}"
               if record is not None else "no training record (models/training_record.json): trained with the configs' defaults")
    evaluated = ("; evaluation: " + ", ".join(f"{direction} ({entry['file']})" for direction, entry in eval_metrics.items())
                 if eval_metrics else "; not evaluated")
    torchscript = ", ".join(f"models/{TORCHSCRIPT_NAMES[direction]} ({direction})" for direction in input_shapes)
    note = f"packaged {date}: models/model.pt (sha256 {model_sha256[:12]}...) {trained}{evaluated}; TorchScript: {torchscript}"
    changelog = dict(metadata.get("changelog") or {})
    earlier = changelog.pop(version, "")
    # Newest version first, as the model zoo writes it.
    metadata["changelog"] = {version: f"{earlier}; {note}" if earlier else note, **changelog}
    return metadata


def _packaged_inference(config: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``inference.json`` with the trained settings as its literal defaults.

    A setting the config reads from the training record (``$@training_record.setting(...)``) or gives
    as a literal takes the trained value; other expressions and references are left alone.
    """
    config = copy.deepcopy(config)
    for key, value in settings.items():
        *parents, leaf = key.split("#")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            current = node[leaf]
            from_record = isinstance(current, str) and current.startswith("$@training_record.setting(")
            if from_record or not (isinstance(current, str) and current[:1] in ("$", "@", "%")):
                node[leaf] = value
    return config


def _readme_section(name: str, version: str, record: Mapping[str, Any] | None, eval_metrics: Mapping[str, Any],
                    exported: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["", "", f"## This package ({name} {version})", ""]
    if record is None:
        lines.append("Trained with the configs' defaults (no training record).")
    else:
        lines.append("Trained with these settings (written as the defaults of `configs/inference.json`; "
                     f"the full record is `models/{RECORD_NAME}`):")
        lines += [""] + [f"- `{key}`: `{json.dumps(value)}`" for key, value in sorted(record.get("settings", {}).items())]
        overrides = record.get("overrides", {})
        lines += ["", "Training overrides: " + (", ".join(f"`{k}={json.dumps(v)}`" for k, v in sorted(overrides.items())) or "none") + "."]
    lines += ["", "Evaluation (mean ± standard deviation over the test subjects; `eval_metrics` in `configs/metadata.json`):", ""]
    if not eval_metrics:
        lines.append("- not evaluated before packaging")
    for direction, entry in eval_metrics.items():
        values = ", ".join(_format_statistic(metric, stats) for metric, stats in entry["metrics"].items())
        lines.append(f"- {direction} (`{entry['file']}`): {values}")
    lines += ["", "TorchScript: " + ", ".join(
        f"`models/{TORCHSCRIPT_NAMES[direction]}` ({direction}, by torch.jit.{entry['method']} on "
        f"{'x'.join(map(str, entry['input_shape']))} slices)" for direction, entry in exported.items())
              + ". Check the files against `large_files.yml` with `python -m modality_translation.bundle verify <bundle>` "
              "(or `python -m monai.bundle download_large_files --bundle_path <bundle>`).", ""]
    return "\n".join(lines)


def _collect_files(folder: Path) -> list[Path]:
    """Files under ``folder``, sorted, without hidden files or folders and Python caches."""
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(folder).parts)
    )


def _write_zip(path: Path, entries: Mapping[str, Path | bytes]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIMESTAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _FILE_MODE
            info.create_system = 3  # Unix, whatever the packaging host: the permission bits above apply
            content = entries[name]
            if isinstance(content, bytes):
                archive.writestr(info, content)
            else:
                with open(content, "rb") as source, archive.open(info, "w", force_zip64=True) as target:
                    shutil.copyfileobj(source, target, 1 << 20)


def package_bundle(bundle_dir: str | os.PathLike, output_dir: str | os.PathLike, date: str | datetime.date | None = None) -> Path:
    """Package a trained bundle as ``<output_dir>/<name>_v<version>.zip`` (see the module's description).

    Args:
        bundle_dir: the bundle folder (``bundles/<name>``), trained (``models/model.pt``) and ideally evaluated.
        output_dir: where the zip goes (created if needed).
        date: the day written in the changelog (``YYYY-MM-DD``); default: the UTC day of ``models/model.pt``'s
            modification time, so packaging the same files again gives the same zip.

    Returns:
        The zip's path.

    Raises:
        BundleIntegrityError: naming the file: ``configs/metadata.json``, ``configs/inference.json`` or
            ``LICENSE`` missing or unreadable, ``models/model.pt`` missing (train the bundle first), an
            evaluation older than the model, a TorchScript export that differs from the eager network.
        WeightsFileError: ``models/model.pt`` does not hold the configured network's weights.
    """
    bundle_dir = Path(bundle_dir).resolve()
    if not bundle_dir.is_dir():
        raise BundleIntegrityError(bundle_dir, "is not a folder; give a bundle folder (bundles/<name>)")
    configs = bundle_dir / "configs"
    metadata = _read_json(configs / "metadata.json", "it is not a bundle folder")
    zip_name = package_name(bundle_dir)
    inference = _read_json(configs / "inference.json", "a packaged bundle needs its inference config")
    license_file = bundle_dir / "LICENSE"
    if not license_file.is_file():
        raise BundleIntegrityError(license_file, "is missing; a bundle shared with another site carries its licence")
    model = bundle_dir / "models" / "model.pt"
    if not model.is_file():
        raise BundleIntegrityError(model, "is missing: train the bundle first (python -m monai.bundle run training "
                                   "--config_file configs/train.json)")
    if date is None:
        date = datetime.datetime.fromtimestamp(model.stat().st_mtime, datetime.timezone.utc).date()
    date = date.isoformat() if isinstance(date, datetime.date) else str(date)

    record = read_training_record(bundle_dir)
    settings = dict((record or {}).get("settings", {}))
    eval_metrics = _eval_metrics(bundle_dir, evaluation_summaries(bundle_dir, record))
    input_shapes = generator_input_shapes(bundle_dir, settings)

    name = bundle_dir.name
    entries: dict[str, Path | bytes] = {}
    for path in sorted(configs.iterdir()):
        if path.is_file() and path.suffix in CONFIG_SUFFIXES and not path.name.startswith("."):
            entries[f"{name}/configs/{path.name}"] = path
    packaged_metadata = _packaged_metadata(metadata, record, eval_metrics, input_shapes, file_sha256(model), date)
    packaged_inference = _packaged_inference(inference, settings)
    entries[f"{name}/configs/metadata.json"] = _json_text(packaged_metadata).encode("utf-8")
    entries[f"{name}/configs/inference.json"] = _json_text(packaged_inference).encode("utf-8")
    if (bundle_dir / "docs").is_dir():
        for path in _collect_files(bundle_dir / "docs"):
            entries[f"{name}/{path.relative_to(bundle_dir).as_posix()}"] = path
    entries[f"{name}/LICENSE"] = license_file

    models: dict[str, Path] = {"model.pt": model}
    if record is not None:
        models[RECORD_NAME] = bundle_dir / "models" / RECORD_NAME
    references = bundle_dir / "models" / "references"
    if references.is_dir():
        models.update({path.relative_to(bundle_dir / "models").as_posix(): path for path in _collect_files(references)})
    with tempfile.TemporaryDirectory(prefix="bundle-torchscript-") as scratch:
        # MONAI's metadata.json inside the TorchScript archive, as ``ckpt_export`` stores it, so that
        # ``monai.data.load_net_with_metadata`` reads the package's description back.
        extra_files = {"metadata.json": json.dumps(packaged_metadata, sort_keys=True),
                       "inference.json": json.dumps(packaged_inference, sort_keys=True)}
        exported = save_torchscript(bundle_dir, scratch, settings, extra_files)
        models.update({TORCHSCRIPT_NAMES[direction]: Path(entry["file"]) for direction, entry in exported.items()})
        readme = bundle_dir / "docs" / "README.md"
        readme_text = readme.read_text(encoding="utf-8").rstrip("\n") if readme.is_file() else f"# {name}"
        section = _readme_section(name, metadata["version"], record, eval_metrics, exported)
        entries[f"{name}/docs/README.md"] = (readme_text + section).encode("utf-8")
        hashes = {}
        for relative, path in models.items():
            entries[f"{name}/models/{relative}"] = path
            hashes[f"models/{relative}"] = file_sha256(path)
        entries[f"{name}/{LARGE_FILES_NAME}"] = large_files_yaml(hashes).encode("utf-8")

        destination = Path(output_dir) / zip_name
        with atomic_path(destination) as tmp:
            _write_zip(tmp, entries)
    return destination
