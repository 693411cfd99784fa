"""Image grids of a translation training: per row one sample, per column one stage (input, translation...).

:class:`TranslationGridHandler` is an Ignite handler that, every ``interval`` epochs, writes one grid
as a PNG file (matplotlib, written atomically) and to TensorBoard. Its rows are samples spread over
the whole epoch, not the samples of its last batch: a validation loader walks the subjects slice by
slice, so the last batch holds neighbouring slices of one subject, which look alike (a grid of them
shows the same anatomy on every row). The handler takes one sample from the middle iteration of each
of ``max_samples`` equal parts of the epoch (several samples of each batch only when the epoch has fewer
iterations than rows, spread over each batch), so the rows show different subjects or distant slices. The row kinds and
column titles are the trainer's (``grid_rows``, ``grid_columns`` of
:class:`~modality_translation.engines.gan_trainer.GANTrainer`: CycleGAN's input, translated and
cycle-reconstructed images of both domains) unless given; an evaluator's output
(``real_A, fake_B, rec_A``, ``label``) is shown with the default rows or the ones given. The CT<->MRI
study inspects such grids every 5 epochs.
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

from medgan_common.atomic import atomic_write_with

#: Rows of the grid when the engine declares none: (input, translated, reconstructed) of domain A,
#: then of domain B (CycleGAN's, also those of a ``TranslationEvaluator`` with a reverse generator).
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


def _row_planes(output: Any, rows: Sequence[Sequence[str]], samples: int | Sequence[int]) -> list[tuple[int, list[np.ndarray]]]:
    """``(row kind, planes of its columns)`` of the chosen samples of one output, row kinds in order.

    ``samples`` is a count (the first ones) or positions in the batch (those beyond it are skipped).
    """
    planes = []
    for kind, keys in enumerate(rows):
        batches = [_batch_of(output, key) for key in keys]
        if any(batch is None for batch in batches):
            continue
        size = batches[0].shape[0]
        positions = range(min(samples, size)) if isinstance(samples, int) else [p for p in samples if p < size]
        planes.extend((kind, [_display_plane(batch[p]) for batch in batches]) for p in positions)
    return planes


def _assemble(planes: Sequence[tuple[int, list[np.ndarray]]], rows: Sequence[Sequence[str]],
              max_samples: int | None = None) -> tuple[np.ndarray, list[str]]:
    """The grid of collected rows, grouped by row kind (at most ``max_samples`` each), from [-1, 1] to [0, 1]."""
    if not planes:
        raise ValueError(f"the engine output has none of the image rows {list(rows)}")
    ordered = sorted(planes, key=lambda row: row[0])  # stable: the samples keep their order within a kind
    if max_samples is not None:
        counts: dict[int, int] = {}
        kept = []
        for kind, columns in ordered:
            counts[kind] = counts.get(kind, 0) + 1
            if counts[kind] <= max_samples:
                kept.append((kind, columns))
        ordered = kept
    grid = np.clip((np.asarray([columns for _, columns in ordered], dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return grid, [" / ".join(rows[kind]) for kind, _ in ordered]


def translation_grid(output: Any, rows: Sequence[Sequence[str]] = DEFAULT_ROWS, max_samples: int = 4) -> tuple[np.ndarray, list[str]]:
    """Assemble the grid of one engine output (its first ``max_samples`` samples).

    Args:
        output: ``engine.state.output`` (a dict of batched images or a decollated list).
        rows: per row kind (a domain), the keys of its columns; kinds whose keys are absent are skipped.
        max_samples: samples shown per row kind.

    Returns:
        ``(grid, row_labels)``: ``grid`` is ``(rows, columns, H, W)`` in [0, 1] (from [-1, 1], clipped);
        ``row_labels`` names each row's keys.

    Raises:
        ValueError: if no row's images are in the output.
    """
    return _assemble(_row_planes(output, rows, max_samples), rows)


def spread(count: int, size: int) -> list[int]:
    """``count`` positions evenly spaced over ``range(size)``, first and last included (all of them if fewer)."""
    if count >= size:
        return list(range(size))
    if count == 1:
        return [0]
    return [round(j * (size - 1) / (count - 1)) for j in range(count)]


def grid_iterations(epoch_length: int, max_samples: int) -> dict[int, int]:
    """Which iterations of an epoch give the grid's rows of one kind, and how many samples each.

    Args:
        epoch_length: iterations of the epoch.
        max_samples: rows per kind.

    Returns:
        ``{0-based iteration in the epoch: samples}``: one sample from the middle iteration of each
        of ``max_samples`` equal parts of the epoch; with fewer iterations than rows, every
        iteration gives several samples (spread over its batch by the handler).
    """
    if epoch_length <= 0 or max_samples <= 0:
        return {}
    if epoch_length >= max_samples:
        # Middles of equal parts, not the first and last iterations: an ordered validation loader
        # starts every subject at the same place of a part, and its first slices are the end of a head.
        return {int((part + 0.5) * epoch_length / max_samples): 1 for part in range(max_samples)}
    per_iteration = -(-max_samples // epoch_length)
    return {iteration: per_iteration for iteration in range(epoch_length)}


def _batch_size(output: Any, rows: Sequence[Sequence[str]]) -> int:
    """Samples in an engine output (a decollated list or a dict of batched images)."""
    if isinstance(output, list):
        return len(output)
    batches = (_batch_of(output, key) for keys in rows for key in keys)
    return next((batch.shape[0] for batch in batches if batch is not None), 0)


def save_grid_png(grid: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str = "",
                  column_titles: Sequence[str] = COLUMN_TITLES) -> None:
    """Write a grid from :func:`translation_grid` as a PNG file, atomically, with a title over each column."""
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
                axis.set_title(column_titles[column] if column < len(column_titles) else "", fontsize=9)
            if column == 0:
                axis.set_ylabel(labels[row].split(" / ")[0], fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


class TranslationGridHandler:
    """Every ``interval`` epochs, write a grid of samples spread over the epoch as PNG and to TensorBoard.

    Args:
        output_dir: folder of the PNG files ``<prefix>_epoch=<epoch>.png`` (``None``: no PNG).
        interval: epochs between grids.
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (``None``: none unless ``log_dir``).
        log_dir: folder of a SummaryWriter created by the handler.
        tag: TensorBoard image tag.
        filename_prefix: PNG file name prefix.
        max_samples: rows per row kind, each from another part of the epoch (:func:`grid_iterations`,
            :func:`spread`).
        rows: keys of each row kind (default: the engine's ``grid_rows``, else :data:`DEFAULT_ROWS`).
        column_titles: titles of the columns (default: the engine's ``grid_columns``, else
            :data:`COLUMN_TITLES`).
        epoch_source: engine whose epoch numbers the grids (default: the attached engine; give the
            trainer when attaching to an evaluator run by ``ValidationHandler`` — the evaluator's own
            epoch is the trainer's, so this is only needed for other set-ups).

    Raises:
        ValueError: for an interval or ``max_samples`` below 1, or neither PNG folder nor TensorBoard output.
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
        rows: Sequence[Sequence[str]] | None = None,
        column_titles: Sequence[str] | None = None,
        epoch_source: Engine | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        if output_dir is None and summary_writer is None and log_dir is None:
            raise ValueError("give output_dir, summary_writer or log_dir: the grid must go somewhere")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.interval = int(interval)
        self._writer = summary_writer
        self._log_dir = log_dir
        self.tag = tag
        self.filename_prefix = filename_prefix
        self.max_samples = int(max_samples)
        self.rows = None if rows is None else tuple(tuple(r) for r in rows)
        self.column_titles = None if column_titles is None else tuple(column_titles)
        self.epoch_source = epoch_source
        self._planes: list[tuple[int, list[np.ndarray]]] = []

    @property
    def summary_writer(self) -> Any | None:
        """The TensorBoard writer (created on first use from ``log_dir``)."""
        if self._writer is None and self._log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self._log_dir))
        return self._writer

    def attach(self, engine: Engine) -> None:
        """Collect the rows during every ``interval``-th epoch of ``engine`` and write the grid at its end."""
        if self.rows is None:
            self.rows = tuple(getattr(engine, "grid_rows", ()) or DEFAULT_ROWS)
        if self.column_titles is None:
            self.column_titles = tuple(getattr(engine, "grid_columns", ()) or COLUMN_TITLES)
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def png_path(self, epoch: int) -> Path | None:
        """PNG file of ``epoch``'s grid."""
        return None if self.output_dir is None else self.output_dir / f"{self.filename_prefix}_epoch={epoch}.png"

    def _grid_epoch(self, engine: Engine) -> int | None:
        epoch = (self.epoch_source or engine).state.epoch
        return epoch if epoch % self.interval == 0 else None

    def _reset(self, engine: Engine) -> None:
        self._planes = []

    def collect(self, engine: Engine) -> None:
        """Keep the planes of this iteration's samples if it is one of the grid's iterations (CPU copies)."""
        if self._grid_epoch(engine) is None or engine.state.output is None:
            return
        epoch_length = engine.state.epoch_length or 1
        position = (engine.state.iteration - 1) % epoch_length
        samples = grid_iterations(epoch_length, self.max_samples).get(position)
        if samples:
            output = engine.state.output
            # Several samples of one batch: spread over it, not its first (neighbouring) ones.
            self._planes.extend(_row_planes(output, self.rows, spread(samples, _batch_size(output, self.rows))))

    def __call__(self, engine: Engine) -> None:
        """Write the grid of the rows collected over the epoch if the epoch is a multiple of the interval."""
        epoch = self._grid_epoch(engine)
        if epoch is None or not self._planes:
            return
        grid, labels = _assemble(self._planes, self.rows, self.max_samples)
        self._planes = []
        path = self.png_path(epoch)
        if path is not None:
            save_grid_png(grid, labels, path, title=f"epoch {epoch}", column_titles=self.column_titles)
        writer = self.summary_writer
        if writer is not None:
            n_rows, n_columns, height, width = grid.shape
            mosaic = grid.transpose(0, 2, 1, 3).reshape(n_rows * height, n_columns * width)
            writer.add_image(self.tag, mosaic[None], global_step=epoch, dataformats="CHW")
            writer.flush()
