"""What the bundle configs need besides networks, losses and engines: their root, their data, their resume point.

- :func:`bundle_root`: the folder of the bundle whose config is being run, so that
  ``python -m monai.bundle run --config_file bundles/<name>/configs/train.json`` from the repository
  root and ``--config_file configs/train.json`` from inside the bundle resolve the same paths.
  MONAI's model-zoo bundles write ``"bundle_root": "."`` and rely on being run from their folder (or
  on ``--bundle_root``); MONAI itself knows the config file's folder (``ConfigWorkflow`` derives the
  bundle root from it to extend ``sys.path``) but does not put it in the config, so it is taken
  here from the public command line (``--config_file``), never from MONAI's internals.
- :func:`prepare_datalist`: the cohort's ``dataset.json``, checked for the modalities and splits the
  bundle uses before any training starts; with ``build_demo`` a missing demo cohort is built
  (``python -m preprocessing demo``) and preprocessed (``python -m preprocessing run``) first, so
  that one command trains on a fresh clone.
- :func:`resume_checkpoint`: the checkpoint a training continues from (the latest one in its
  checkpoint folder), or none; it refuses to start from scratch over another run's checkpoints.
- :func:`require_modality`: a config's modality setting is of the kind the bundle translates (an
  MR -> CT bundle given ``--source ct`` stops at once, naming the setting).
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medgan_common import dataset_keys
from medgan_common.errors import PreprocessingError
from modality_translation.data.datalist import (
    MODALITY_ALIASES,
    DatalistError,
    load_translation_datalist,
    read_datalist,
    resolve_item_path,
    slices_key,
)
from modality_translation.engines.checkpoint import latest_checkpoint
from preprocessing.windowing import get_window

__all__ = ["DATALIST_NAME", "bundle_root", "config_file_from_argv", "prepare_datalist", "require_modality", "resume_checkpoint"]

#: File name of the datalist in a preprocessing output folder.
DATALIST_NAME = dataset_keys.DATALIST_FILE

#: Command-line options naming the config files of a ``python -m monai.bundle`` command (fire
#: accepts the hyphenated spelling too).
_CONFIG_FILE_OPTIONS = ("config_file", "config-file")


def _root_of_config_folder(folder: Path) -> Path:
    # The same rule as MONAI's ConfigWorkflow: <bundle>/configs/*.json -> <bundle>.
    return folder.parent if folder.name == "configs" else folder


def _first_config_file(value: str) -> str | None:
    """The first file of a ``--config_file`` value: one path, a list literal or comma-separated paths.

    ``python -m monai.bundle`` (fire) takes ``--config_file "['train.json', 'overlay.json']"`` as a
    list, and MONAI's ``ConfigParser.load_config_files`` splits a string with commas.
    """
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        try:
            files = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            # fire also takes a list of bare words: [train.json, overlay.json]
            files = [part.strip().strip("'\"") for part in value[1:-1].split(",")]
        files = [str(f).strip() for f in (files if isinstance(files, (list, tuple)) else [files])]
        files = [f for f in files if f]
        return files[0] if files else None
    if "," in value and not os.path.isfile(value):
        value = value.split(",")[0].strip()
    return value or None


def config_file_from_argv(argv: Sequence[str] | None = None) -> str | None:
    """The first config file given to the running command as ``--config_file X`` or ``--config_file=X``.

    Args:
        argv: the command line (default ``sys.argv``), e.g. that of
            ``python -m monai.bundle run training --config_file bundles/b/configs/train.json``.

    Returns:
        The first config file as written (a list value gives its first file), or ``None`` when the
        command line has no such option.
    """
    options = command_line_options(argv)
    value = next((options[name] for name in _CONFIG_FILE_OPTIONS if options.get(name) is not None), None)
    return None if value is None else _first_config_file(value)


def command_line_options(argv: Sequence[str] | None = None) -> dict[str, str | None]:
    """Every ``--name value`` / ``--name=value`` option of a command line, as typed (``None`` for a bare ``--name``).

    Args:
        argv: the command line (default ``sys.argv``); its first element, the program, is skipped.

    Returns:
        ``{name: value}``, the last value of a repeated option winning.
    """
    args = list(sys.argv if argv is None else argv)[1:]
    options: dict[str, str] = {}
    index = 0
    while index < len(args):
        argument = args[index]
        index += 1
        if not argument.startswith("--"):
            continue
        name, separator, value = argument[2:].partition("=")
        if not separator:
            if index < len(args) and not args[index].startswith("--"):
                value = args[index]
                index += 1
            else:
                value = None
        options[name] = value
    return options


def bundle_root(default: str | os.PathLike | None = None) -> str:
    """Absolute path of the bundle being run.

    Looks, in order, at the first config file on the command line (``--config_file`` of
    ``python -m monai.bundle run|verify_net_in_out|ckpt_export ...``: its ``configs`` folder's parent,
    or its folder when that is not named ``configs``; a relative path is taken from the working
    directory), at ``default``, and at the working directory when it holds a ``configs`` folder.
    Code that runs a bundle config in-process (``ConfigWorkflow``, ``monai.bundle.run`` from Python,
    ``ConfigParser``) has no such command line: it passes the ``bundle_root`` override instead, which
    replaces this call altogether.

    Args:
        default: the bundle folder to use when the command line names no config file.

    Returns:
        The absolute bundle folder.

    Raises:
        FileNotFoundError: none of these gives a bundle folder; pass ``--bundle_root`` then.
    """
    config_file = config_file_from_argv()
    if config_file is not None:
        return str(_root_of_config_folder(Path(config_file).resolve().parent))
    if default is not None:
        return str(Path(default).resolve())
    cwd = Path.cwd()
    if (cwd / "configs").is_dir():
        return str(cwd.resolve())
    raise FileNotFoundError(
        f"cannot tell which bundle is being run: the command line has no --config_file and {cwd} has no "
        "'configs' folder; give the bundle folder with --bundle_root <bundle folder> (in Python: the "
        "override bundle_root=<bundle folder>)"
    )


def _check_demo_manifest(demo_dir: Path, size: str, subjects: int, seed: int, anatomy: str) -> bool:
    """Whether ``demo_dir`` holds a finished demo cohort of these settings (the manifest is written last).

    Raises:
        PreprocessingError: a finished cohort of other settings is there.
    """
    manifest_path = demo_dir / "manifest.json"
    if not manifest_path.is_file():
        return False
    manifest = read_datalist(manifest_path)  # a JSON object, with errors naming the file
    # Cohorts built before the template anatomy existed record none: they are procedural.
    found = (manifest.get("size"), len(manifest.get("subjects", [])), manifest.get("seed"),
             manifest.get("anatomy", "procedural"))
    if found != (size, subjects, seed, anatomy):
        raise PreprocessingError(
            manifest_path,
            f"holds a demo cohort of size {found[0]!r}, {found[1]} subjects, seed {found[2]}, {found[3]} anatomy, "
            f"not the requested {size!r}, {subjects} subjects, seed {seed}, {anatomy} anatomy: delete the folder "
            "or choose another demo folder",
        )
    return True


def _build_demo(datalist: Path, demo_dir: Path, size: str, subjects: int, seed: int, anatomy: str,
                preprocessing_config: str | os.PathLike | Mapping[str, Any], workers: int | None, progress: bool) -> None:
    # Imported here: the demo generator and the cohort runner are only needed on this path.
    from preprocessing.cohort import STATUS_FAILED, run_cohort
    from preprocessing.demo import build_demo_cohort

    if not _check_demo_manifest(demo_dir, size, subjects, seed, anatomy):
        build_demo_cohort(demo_dir, subjects, size, seed, workers, progress=progress, anatomy_name=anatomy)
    report = run_cohort(preprocessing_config, demo_dir, datalist.parent, workers=workers, progress=progress)
    failed = [row for row in report["subjects"] if row["status"] == STATUS_FAILED]
    if failed:
        reasons = "; ".join(f"{row['subject']}: {row['reason']}" for row in failed)
        raise PreprocessingError(datalist.parent, f"{len(failed)} demo subject(s) failed preprocessing ({reasons})")
    if not datalist.is_file():
        raise DatalistError(datalist, "the preprocessing of the demo cohort finished without writing the datalist")


def _distributed_rank() -> int | None:
    """This process's rank when ``torch.distributed`` is initialised, else ``None``."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def prepare_datalist(
    datalist: str | os.PathLike,
    modalities: Sequence[str] = (),
    splits: Sequence[str] = (dataset_keys.TRAINING, dataset_keys.VALIDATION),
    build_demo: bool = False,
    demo_dir: str | os.PathLike | None = None,
    demo_size: str = "full",
    demo_subjects: int = 12,
    demo_seed: int = 0,
    demo_anatomy: str = "mni152",
    preprocessing_config: str | os.PathLike | Mapping[str, Any] = "demo",
    workers: int | None = None,
    require_slices: bool = True,
    slice_keys: Sequence[str] = (),
    progress: bool = True,
) -> str:
    """The checked datalist of a bundle; with ``build_demo``, the demo cohort is made first if missing.

    Args:
        datalist: the ``dataset.json`` written by ``python -m preprocessing run``.
        modalities: modalities every item of every split must have (``("t1", "t2")``).
        splits: splits checked (each must exist and not be empty).
        build_demo: when ``datalist`` does not exist, build the demo cohort in ``demo_dir`` (unless a
            finished one of the same settings is there) and preprocess it into ``datalist``'s folder.
        demo_dir: folder of the raw demo cohort (``python -m preprocessing demo --output``).
        demo_size: ``"small"`` (64-voxel grids, 64 x 64 slices) or ``"full"`` (1 mm, 256 x 256 slices).
        demo_subjects: subjects of the demo cohort (split 60/20/20 by the ``demo`` preprocessing).
        demo_seed: seed of the demo cohort.
        demo_anatomy: ``"mni152"`` (the template brain) or ``"procedural"`` (the phantom).
        preprocessing_config: the preprocessing configuration (shipped name, file or mapping).
        workers: processes of the demo build and preprocessing (default: one per core).
        require_slices: check the modalities' slice lists (training), or their volumes (inference).
        slice_keys: more slice lists every item must have, as ``"<key>_slices"``, beyond the
            declared modalities: a registered pair such as ``"t2_in_t1"``.
        progress: progress bars while building.

    Under ``torch.distributed`` (``multi_gpu_train.json``), every rank must call this: rank 0
    prepares the data, the others wait at a barrier, then every rank checks the datalist.

    Returns:
        The absolute path of the datalist.

    Raises:
        DatalistError: a missing datalist (without ``build_demo``), a missing or empty split, an item
            without a modality, a missing listed file; the file and the subject are named.
        ModalityMismatchError: a file listed under one modality is named after another.
        PreprocessingError: a demo cohort that could not be built or preprocessed.
        ValueError: ``build_demo`` without ``demo_dir``.
    """
    path = Path(datalist).resolve()
    rank = _distributed_rank()
    # Under torch.distributed every rank calls this: rank 0 builds, the others wait for it.
    if rank in (None, 0) and not path.is_file():
        if not build_demo:
            raise DatalistError(
                path, "datalist does not exist: preprocess a cohort into its folder first "
                "(python -m preprocessing run --config CONFIG --input DIR --output FOLDER) or point "
                "dataset_dir at a preprocessed cohort",
            )
        if demo_dir is None:
            raise ValueError("build_demo needs demo_dir, the folder of the raw demo cohort")
        _build_demo(path, Path(demo_dir), demo_size, int(demo_subjects), int(demo_seed), demo_anatomy,
                    preprocessing_config, workers, progress)
    if rank is not None:
        import torch.distributed as dist

        dist.barrier()
    if not path.is_file():
        raise DatalistError(path, "datalist does not exist (it was to be prepared by rank 0)")
    for split in splits:
        items = load_translation_datalist(path, split, modalities=modalities, require_slices=require_slices)
        for key in slice_keys:
            _check_slice_list(path, split, items, key)
    return str(path)


def _check_slice_list(datalist: Path, split: str, items: Sequence[Mapping[str, Any]], key: str) -> None:
    """Every item of ``split`` lists ``<key>_slices`` files that exist (a pair key: not a declared modality)."""
    list_key = slices_key(key)
    for item in items:
        subject = item.get(dataset_keys.SUBJECT)
        files = item.get(list_key)
        if not isinstance(files, list) or not files:
            raise DatalistError(
                datalist, f"subject {subject!r} in split {split!r} has no {list_key!r} (a non-empty list of slice files)"
            )
        for file in files:
            resolve_item_path({list_key: file}, list_key, None, f"{key} slice file", subject, datalist)


def resume_checkpoint(ckpt_dir: str | os.PathLike, resume: bool | str | os.PathLike = True,
                      filename_prefix: str = "checkpoint") -> str | None:
    """The training checkpoint to continue from.

    Args:
        ckpt_dir: the training's checkpoint folder.
        resume: ``True``: the latest checkpoint in ``ckpt_dir`` (``None`` when there is none: a new
            training); ``False``: none, and ``ckpt_dir`` must hold no checkpoint (a new training would
            mix its checkpoints with the old ones); a path: that checkpoint file.
        filename_prefix: prefix of the checkpoint files (``TrainingCheckpointSaver``'s).

    Returns:
        The checkpoint path, or ``None`` to start from scratch.

    Raises:
        FileExistsError: ``resume`` is false and ``ckpt_dir`` already holds checkpoints.
        FileNotFoundError: ``resume`` names a file that does not exist.
    """
    if isinstance(resume, str) and resume.strip().lower() in ("true", "false"):
        resume = resume.strip().lower() == "true"
    if isinstance(resume, bool):
        latest = latest_checkpoint(ckpt_dir, filename_prefix)
        if resume or latest is None:
            return latest
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints of a training (latest: {Path(latest).name}); resume it "
            "(resume true), or give another checkpoint folder (--ckpt_dir) to start a new one"
        )
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from does not exist: {path}")
    return str(path)


#: The modality kinds :func:`require_modality` knows: CT, and every MR contrast the datalist knows.
MODALITY_KINDS = {"ct": ("ct",), "mr": tuple(m for m in MODALITY_ALIASES if m != "ct")}


def require_modality(modality: str, kind: str, setting: str = "source") -> str:
    """The modality of a config setting, checked to be of the kind the bundle translates.

    Args:
        modality: the configured modality (``"t2"``).
        kind: ``"mr"`` (any MR contrast: t1, t2, pd, flair, mra) or ``"ct"``.
        setting: the config key, named in the error (``"source"``).

    Returns:
        The modality, lower case.

    Raises:
        ValueError: a modality of another kind, or one that is not known, naming the setting.
    """
    if kind not in MODALITY_KINDS:
        raise ValueError(f"unknown modality kind {kind!r}; use one of {sorted(MODALITY_KINDS)}")
    name = str(modality).strip().lower()
    allowed = MODALITY_KINDS[kind]
    if name not in allowed:
        raise ValueError(
            f"{setting}: {modality!r} is not {'an' if kind == 'mr' else 'a'} {kind.upper()} modality; this bundle needs one of {', '.join(allowed)} "
            f"as its {setting}"
        )
    return name


def check_ct_window(datalist: str | os.PathLike, window: Any, out_range: Sequence[float] = (-1.0, 1.0)) -> str:
    """The datalist, checked to record the CT window the bundle's configuration was made for.

    A CT bundle computes its network's CT channels (``modality_translation.networks.WindowedCTNetwork``)
    from the CT slices on the scale the preprocessing wrote them in (``ct_window`` of ``dataset.json``);
    slices windowed otherwise would give the network other values than those it was designed (or
    trained) for, and the synthetic CT would go back to HU through the wrong inverse.

    Args:
        datalist: the cohort's ``dataset.json``.
        window: the bundle's ``ct_window`` (preset name, ``{"center", "width"}`` or ``[center, width]``).
        out_range: the network scale the window maps to.

    Returns:
        ``datalist``, as a string.

    Raises:
        DatalistError: a datalist without CT window, or with another window or range (both named,
            with the override that would match it).
    """
    path = Path(datalist)
    recorded = read_datalist(path).get(dataset_keys.CT_WINDOW)
    expected = get_window(window)
    expected_range = [float(v) for v in out_range]
    if not isinstance(recorded, Mapping) or "center" not in recorded or "width" not in recorded:
        raise DatalistError(path, f"records no CT window ({dataset_keys.CT_WINDOW!r}): it was not preprocessed with CT")
    recorded_range = [float(v) for v in (recorded.get("out_range") or expected_range)]
    same = (abs(float(recorded["center"]) - expected.center) < 1e-6 and abs(float(recorded["width"]) - expected.width) < 1e-6
            and recorded_range == expected_range)
    if not same:
        raise DatalistError(
            path, f"records its CT slices windowed with centre {float(recorded['center']):g} HU, width "
            f"{float(recorded['width']):g} HU onto {recorded_range}, but the bundle's ct_window is centre {expected.center:g}, "
            f"width {expected.width:g} onto {expected_range}: the network's CT channels would be computed from other values. "
            f"Preprocess the cohort with the bundle's window, or train for this one (--ct_window#center "
            f"{float(recorded['center']):g} --ct_window#width {float(recorded['width']):g}; the channel windows must lie inside it)")
    return str(path)
