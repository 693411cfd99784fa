"""Image grids of a translation training: input, translation and cycle reconstruction of both domains.

:class:`TranslationGridHandler` is an Ignite handler that, every ``interval`` epochs, takes the images
of the engine's last output (the trainer's ``real_A, fake_B, rec_A, real_B, fake_A, rec_B``, or an
evaluator's ``real_A, fake_B, rec_A``) and writes one grid, a row per sample and domain and a column
per stage, as a PNG file (matplotlib, written atomically) and to TensorBoard. The CT<->MRI study
inspects exactly these grids every 5 epochs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from matplotlib.figure import Figure

from preprocessing.atomic import atomic_write_with

#: Rows of the grid: (input, translated, reconstructed) of domain A, then of domain B.
DEFAULT_ROWS = (("real_A", "fake_B", "rec_A"), ("real_B", "fake_A", "rec_B"))
COLUMN_TITLES = ("input", "translated", "cycle-reconstructed")


def _batch_of(output: Any, key: str) -> torch.Tensor | None:
    """``(batch, C, *spatial)`` images of ``key`` from an output dict or its decollated list."""
    if isinstance(output, list):
        if not output or key not in output[0]:
            return None
        return torch.stack([torch.as_tensor(item[key]) for item in output])
    if isinstance(output, dict) and key in output:
        return torch.as_tensor(output[key])
    return None


def _display_plane(image: torch.Tensor) -> np.ndarray:
    """A 2D array of one image ``(C, *spatial)``: the middle channel (2.5D) and, for 3D, the middle slice."""
    image = image.detach().float().cpu()
    plane = image[image.shape[0] // 2]
    while plane.ndim > 2:
        plane = plane[..., plane.shape[-1] // 2]
    return plane.numpy()


def translation_grid(output: Any, rows: Sequence[Sequence[str]] = DEFAULT_ROWS, max_samples: int = 4) -> tuple[np.ndarray, list[str]]:
    """Assemble the grid of an engine output.

    Args:
        output: ``engine.state.output`` (a dict of batched images or a decollated list).
        rows: per domain, the keys of its columns; domains whose keys are absent are skipped.
        max_samples: samples shown per domain.

    Returns:
        ``(grid, row_labels)``: ``grid`` is ``(rows, columns, H, W)`` in [0, 1] (from [-1, 1], clipped);
        ``row_labels`` names each row's keys.

    Raises:
        ValueError: if no row's images are in the output.
    """
    planes, labels = [], []
    for keys in rows:
        batches = [_batch_of(output, key) for key in keys]
        if any(batch is None for batch in batches):
            continue
        for sample in range(min(max_samples, batches[0].shape[0])):
            planes.append([_display_plane(batch[sample]) for batch in batches])
            labels.append(" / ".join(keys))
    if not planes:
        raise ValueError(f"the engine output has none of the image rows {list(rows)}")
    grid = np.clip((np.asarray(planes, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return grid, labels


def save_grid_png(grid: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Write a grid from :func:`translation_grid` as a PNG file, atomically."""
    n_rows, n_columns = grid.shape[:2]
    # A bare Figure (no pyplot): no global backend state, nothing to close, safe in any thread.
    figure = Figure(figsize=(2.2 * n_columns, 2.2 * n_rows))
    axes = figure.subplots(n_rows, n_columns, squeeze=False)
    for row in range(n_rows):
        for column in range(n_columns):
            axis = axes[row, column]
            axis.imshow(grid[row, column], cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(COLUMN_TITLES[column] if column < len(COLUMN_TITLES) else "", fontsize=9)
            if column == 0:
                axis.set_ylabel(labels[row].split(" / ")[0], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


class TranslationGridHandler:
    """Every ``interval`` epochs, write the grid of the last iteration's images as PNG and to TensorBoard.

    Args:
        output_dir: folder of the PNG files ``<prefix>_epoch=<epoch>.png`` (``None``: no PNG).
        interval: epochs between grids.
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (``None``: none unless ``log_dir``).
        log_dir: folder of a SummaryWriter created by the handler.
        tag: TensorBoard image tag.
        filename_prefix: PNG file name prefix.
        max_samples: samples shown per domain.
        rows: keys of each domain's row (default :data:`DEFAULT_ROWS`).
        epoch_source: engine whose epoch numbers the grids (default: the attached engine; give the
            trainer when attaching to an evaluator run by ``ValidationHandler`` — the evaluator's own
            epoch is the trainer's, so this is only needed for other set-ups).

    Raises:
        ValueError: for an interval below 1, or neither PNG folder nor TensorBoard output.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        interval: int = 1,
        summary_writer: Any | None = None,
        log_dir: str | os.PathLike | None = None,
        tag: str = "translation",
        filename_prefix: str = "translation",
        max_samples: int = 4,
        rows: Sequence[Sequence[str]] = DEFAULT_ROWS,
        epoch_source: Engine | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if output_dir is None and summary_writer is None and log_dir is None:
            raise ValueError("give output_dir, summary_writer or log_dir: the grid must go somewhere")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.interval = int(interval)
        self._writer = summary_writer
        self._log_dir = log_dir
        self.tag = tag
        self.filename_prefix = filename_prefix
        self.max_samples = int(max_samples)
        self.rows = tuple(tuple(r) for r in rows)
        self.epoch_source = epoch_source

    @property
    def summary_writer(self) -> Any | None:
        """The TensorBoard writer (created on first use from ``log_dir``)."""
        if self._writer is None and self._log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self._log_dir))
        return self._writer

    def attach(self, engine: Engine) -> None:
        """Write a grid at the end of every ``interval``-th epoch of ``engine``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def png_path(self, epoch: int) -> Path | None:
        """PNG file of ``epoch``'s grid."""
        return None if self.output_dir is None else self.output_dir / f"{self.filename_prefix}_epoch={epoch}.png"

    def __call__(self, engine: Engine) -> None:
        """Write the grid of ``engine.state.output`` if the epoch is a multiple of the interval."""
        epoch = (self.epoch_source or engine).state.epoch
        if epoch % self.interval != 0 or engine.state.output is None:
            return
        grid, labels = translation_grid(engine.state.output, self.rows, self.max_samples)
        path = self.png_path(epoch)
        if path is not None:
            save_grid_png(grid, labels, path, title=f"epoch {epoch}")
        writer = self.summary_writer
        if writer is not None:
            n_rows, n_columns, height, width = grid.shape
            mosaic = grid.transpose(0, 2, 1, 3).reshape(n_rows * height, n_columns * width)
            writer.add_image(self.tag, mosaic[None], global_step=epoch, dataformats="CHW")
            writer.flush()
