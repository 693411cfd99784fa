"""Training checkpoints that resume exactly: networks, optimisers, schedulers, image pools, RNG states.

A GAN training killed at epoch ``e`` must go on as if it had never stopped. Beyond the networks and
optimisers, that needs the learning-rate schedulers, the discriminators' image pools (content and
random generator), the AMP gradient scalers, the trainer's epoch and iteration, and the global random
generators (torch, CUDA, NumPy, Python), which decide the data order and the dropout masks. The
datasets of :mod:`modality_translation.data.unpaired` hold no random state of their own (their draws
are functions of seed, epoch and index), so nothing else is needed.

Usage in a bundle config (``train#handlers``)::

    {"_target_": "modality_translation.engines.TrainingCheckpointLoader",
     "load_path": "$modality_translation.engines.latest_checkpoint(@ckpt_dir)", "missing_ok": true,
     "extra_objects": {"g_scheduler": "@g_scheduler", "d_scheduler": "@d_scheduler"}},
    {"_target_": "modality_translation.engines.TrainingCheckpointSaver", "save_dir": "@ckpt_dir",
     "save_interval": 5, "extra_objects": {"g_scheduler": "@g_scheduler", "d_scheduler": "@d_scheduler"}}

Both handlers collect the trainer's objects when they are attached (:func:`training_objects`), so the
config need not refer to the trainer from inside its own handler list. Loading is MONAI's
:class:`monai.handlers.CheckpointLoader` (``Events.STARTED``, keeps the new ``max_epochs``). Saving is
Ignite's :class:`ignite.handlers.Checkpoint` with a save handler written here rather than MONAI's
``CheckpointSaver``, for two reasons: MONAI writes non-atomically (a kill during the write leaves a
truncated file under the final name), and its handler runs wherever it sits in the handler list,
so it may save an epoch's scheduler state before ``LrScheduleHandler`` has stepped it. Here the file
is written to a temporary name and renamed, and the saving is registered when the run starts, after
every other epoch-end handler (scheduler steps, validation), so a checkpoint is the complete state
after the epoch.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader

from medgan_common.atomic import atomic_write_with

CHECKPOINT_PATTERN = "{filename_prefix}_epoch={global_step}.{ext}"


class GlobalRNGState:
    """The global random generators (torch CPU and CUDA, NumPy legacy, Python) as a checkpointable object.

    ``state_dict`` captures them when called (at save time); ``load_state_dict`` restores them. The
    state holds only tensors and plain numbers, so it loads with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        """The current states."""
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": random.getstate(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the states (CUDA states only when CUDA is available and the device counts match)."""
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8))
        cuda_states = list(state.get("cuda", []))
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8) for s in cuda_states])
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                numpy_state["name"],
                np.asarray(numpy_state["keys"], dtype=np.int64).astype(np.uint32),
                int(numpy_state["position"]),
                int(numpy_state["has_gauss"]),
                float(numpy_state["cached_gaussian"]),
            )
        )
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


def training_objects(engine: Engine, extra_objects: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything a checkpoint of ``engine`` must hold, keyed by name.

    Args:
        engine: a trainer with a ``checkpoint_objects()`` method (e.g.
            :class:`~modality_translation.engines.CycleGANTrainer`); its own entries come first, then
            ``"trainer"`` (epoch and iteration) and ``"rng"`` (:class:`GlobalRNGState`).
        extra_objects: more objects with ``state_dict`` / ``load_state_dict``, typically the LR schedulers.

    Returns:
        ``{name: object}`` for Ignite's ``Checkpoint`` / MONAI's ``CheckpointLoader``.

    Raises:
        TypeError: the engine does not list its objects, or an object lacks ``state_dict``.
        ValueError: an extra object reuses a name.
    """
    if not hasattr(engine, "checkpoint_objects"):
        raise TypeError(f"{type(engine).__name__} has no checkpoint_objects(); list its objects in extra_objects")
    objects = {**engine.checkpoint_objects(), "trainer": engine, "rng": GlobalRNGState()}
    for name, obj in (extra_objects or {}).items():
        if name in objects:
            raise ValueError(f"extra checkpoint object {name!r} clashes with a trainer object of that name")
        objects[name] = obj
    for name, obj in objects.items():
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"checkpoint object {name!r} ({type(obj).__name__}) has no state_dict/load_state_dict")
    return objects


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler writing ``torch.save`` files atomically (temporary name, then rename).

    Args:
        save_dir: folder of the checkpoints (created if missing).
    """

    def __init__(self, save_dir: str | os.PathLike) -> None:
        self.save_dir = Path(save_dir)
        self.save_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` to ``save_dir / filename``."""

        atomic_write_with(self.save_dir / filename, lambda tmp: torch.save(checkpoint, tmp))

    def remove(self, filename: str) -> None:
        """Delete a checkpoint that dropped out of the ``n_saved`` most recent ones."""
        (self.save_dir / filename).unlink(missing_ok=True)


def checkpoint_path(save_dir: str | os.PathLike, epoch: int, filename_prefix: str = "checkpoint") -> Path:
    """Path of the checkpoint :class:`TrainingCheckpointSaver` writes after ``epoch``."""
    name = CHECKPOINT_PATTERN.format(filename_prefix=filename_prefix, global_step=epoch, ext="pt")
    return Path(save_dir) / name


def latest_checkpoint(save_dir: str | os.PathLike, filename_prefix: str = "checkpoint") -> str | None:
    """The checkpoint of the highest epoch in ``save_dir``, or ``None`` when there is none (or no folder)."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return None
    pattern = re.compile(rf"{re.escape(filename_prefix)}_epoch=(\d+)\.pt")
    found = [(int(m.group(1)), p) for p in save_dir.iterdir() if (m := pattern.fullmatch(p.name))]
    return str(max(found)[1]) if found else None


class TrainingCheckpointSaver:
    """Save the complete training state every ``save_interval`` epochs (and after the last epoch).

    Args:
        save_dir: folder of the checkpoints, named ``<filename_prefix>_epoch=<epoch>.pt``.
        save_interval: epochs between checkpoints.
        n_saved: most recent checkpoints kept (``None``: all).
        extra_objects: objects saved besides the trainer's (the LR schedulers).
        filename_prefix: file name prefix.
        save_final: also save when the run completes on an epoch that is not a multiple of the interval.

    Raises:
        ValueError: for a ``save_interval`` below 1.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_interval: int = 1,
        n_saved: int | None = None,
        extra_objects: Mapping[str, Any] | None = None,
        filename_prefix: str = "checkpoint",
        save_final: bool = True,
    ) -> None:
        if save_interval < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}")
        self.save_dir = Path(save_dir)
        self.save_interval = int(save_interval)
        self.n_saved = n_saved
        self.extra_objects = dict(extra_objects or {})
        self.filename_prefix = filename_prefix
        self.save_final = save_final
        self.checkpoint: Checkpoint | None = None

    def attach(self, engine: Engine) -> None:
        """Collect the engine's objects now; register the saving when the run starts (after other handlers)."""
        objects = training_objects(engine, self.extra_objects)
        self.checkpoint = Checkpoint(
            objects,
            AtomicDiskSaver(self.save_dir),
            filename_prefix=self.filename_prefix,
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.epoch,
            filename_pattern=CHECKPOINT_PATTERN,
        )
        engine.add_event_handler(Events.STARTED, self._register_saving)

    def _register_saving(self, engine: Engine) -> None:
        if engine.has_event_handler(self._save, Events.EPOCH_COMPLETED):
            return  # a second run() of the same engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        if self.save_final:
            engine.add_event_handler(Events.COMPLETED, self._save_final)

    def _save(self, engine: Engine) -> None:
        if engine.state.epoch % self.save_interval == 0:
            self.checkpoint(engine)

    def _save_final(self, engine: Engine) -> None:
        if engine.state.epoch % self.save_interval != 0:
            self.checkpoint(engine)


class TrainingCheckpointLoader:
    """Restore the complete training state from a checkpoint when the run starts.

    Args:
        load_path: the checkpoint file (e.g. :func:`latest_checkpoint`); ``None`` allowed with ``missing_ok``.
        extra_objects: the objects saved besides the trainer's (same names as when saving).
        map_location: ``torch.load``'s ``map_location`` (e.g. ``"cpu"`` to resume a GPU run on CPU).
        strict: require the checkpoint's network keys to match exactly.
        missing_ok: start from scratch, with a log message, when ``load_path`` is ``None`` or absent.

    Raises:
        FileNotFoundError: (on attach) ``load_path`` is missing and ``missing_ok`` is false.
    """

    def __init__(
        self,
        load_path: str | os.PathLike | None,
        extra_objects: Mapping[str, Any] | None = None,
        map_location: Any = None,
        strict: bool = True,
        missing_ok: bool = False,
    ) -> None:
        self.load_path = None if load_path is None else Path(load_path)
        self.extra_objects = dict(extra_objects or {})
        self.map_location = map_location
        self.strict = strict
        self.missing_ok = missing_ok
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        """Attach MONAI's ``CheckpointLoader`` for the engine's objects (a no-op for an allowed missing file)."""
        if self.load_path is None or not self.load_path.is_file():
            if self.missing_ok:
                self.logger.info(f"no checkpoint at {self.load_path}: training starts from scratch")
                return
            raise FileNotFoundError(f"{self.load_path}: checkpoint file does not exist")
        loader = CheckpointLoader(
            load_path=str(self.load_path),
            load_dict=training_objects(engine, self.extra_objects),
            map_location=self.map_location,
            strict=self.strict,
        )
        loader.attach(engine)
