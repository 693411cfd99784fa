"""Datasets of slice pairs for translation GANs: unpaired (CycleGAN, UNIT) and paired (pix2pix, validation).

:class:`UnpairedDataset` follows the reference CycleGAN ``UnalignedDataset``: its length is the
larger of the two domains, sample ``i`` takes slice ``i mod len(A)`` of domain A and a slice of
domain B drawn uniformly at random, and each domain is augmented independently.
:class:`PairedDataset` yields the two slices of the same subject and position, augmented with the
same crop and flip.

Every random choice (the B slice, the crop, the flip) is a function of ``(seed, epoch, index)``
only: the dataset holds no random state that advances. The trainer sets the epoch at the start of
each epoch (:meth:`EpochSeededDataset.set_epoch`; the epoch lives in shared memory, so data-loader
workers, persistent ones included, see it), so a run gives the same samples whatever the number of
workers, and a training resumed from a checkpoint at epoch ``e`` draws exactly what the
uninterrupted one drew; the shuffling order comes from the global torch generator, whose state the
checkpoint restores.

The loading and the deterministic transforms are cached by :class:`monai.data.CacheDataset`; the
random transforms run per sample, re-seeded from the sample's seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset

from medgan_common.dataset_keys import SUBJECT, slice_index_key, slices_key
from modality_translation.data.datalist import (
    DatalistError,
    flatten_slices,
    load_translation_datalist,
    pair_slices,
)
from modality_translation.data.level_matching import level_matched_candidates, slice_levels
from modality_translation.data.matched_slices import check_paired_slices
from modality_translation.data.pair_coverage import covered_pairs
from modality_translation.data.transforms import (
    CYCLEGAN_JITTER_SCALE,
    translation_eval_transforms,
    translation_train_transforms,
)

Items = Sequence[dict[str, Any]]


class EpochSeededDataset(torch.utils.data.Dataset):
    """Base of the datasets whose random draws depend only on ``(seed, epoch, index)``.

    Args:
        seed: base seed of all draws.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        # Shared memory: a change made in the main process reaches data-loader worker processes.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch whose samples are drawn."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the samples of ``epoch`` from now on (called by the trainer when an epoch starts)."""
        self._epoch.fill_(int(epoch))

    def sample_rng(self, index: int) -> np.random.Generator:
        """The random generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])


def fetch_seeded(dataset: Dataset, index: int, seed: int) -> Any:
    """``dataset[index]`` with the random transforms of ``dataset.transform`` seeded by ``seed``."""
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(seed=int(seed))
    return dataset[int(index)]


def _seeds(rng: np.random.Generator, count: int) -> list[int]:
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=count)]


class UnpairedDataset(EpochSeededDataset):
    """``{"A": sample of domain A, "B": random sample of domain B}``, the length of the larger domain.

    Args:
        dataset_a: domain A samples (a MONAI dataset whose items are dicts holding ``image_key``).
        dataset_b: domain B samples.
        seed: base seed of the B draws and of the augmentations.
        image_key: key of the image in the items of ``dataset_a`` and ``dataset_b``.
        keys: output keys of the A and B images.
        b_candidates: for each A sample, the B indices its partner is drawn from (uniformly);
            ``None``: all of B (the reference CycleGAN's draw). See
            :mod:`modality_translation.data.level_matching`.

    Raises:
        ValueError: if a domain is empty, or ``b_candidates`` does not give every A sample a
            non-empty list of valid B indices.
    """

    def __init__(
        self,
        dataset_a: Dataset,
        dataset_b: Dataset,
        seed: int = 0,
        image_key: str = "image",
        keys: tuple[str, str] = ("A", "B"),
        b_candidates: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(seed)
        if len(dataset_a) == 0 or len(dataset_b) == 0:
            raise ValueError(f"both domains need samples, got {len(dataset_a)} (A) and {len(dataset_b)} (B)")
        if b_candidates is not None:
            b_candidates = [np.asarray(c, dtype=np.int64) for c in b_candidates]
            if len(b_candidates) != len(dataset_a):
                raise ValueError(f"b_candidates needs one list per A sample ({len(dataset_a)}), got {len(b_candidates)}")
            if any(c.size == 0 or c.min() < 0 or c.max() >= len(dataset_b) for c in b_candidates):
                raise ValueError(f"every A sample needs B candidates among 0..{len(dataset_b) - 1}")
        self.dataset_a = dataset_a
        self.dataset_b = dataset_b
        self.image_key = image_key
        self.keys = tuple(keys)
        self.b_candidates = b_candidates

    def __len__(self) -> int:
        return max(len(self.dataset_a), len(self.dataset_b))

    def sample_indices(self, index: int) -> tuple[int, int]:
        """Indices of the A and B samples that make sample ``index`` of the current epoch."""
        return self._draw(index)[:2]

    def _draw(self, index: int) -> tuple[int, int, int, int]:
        rng = self.sample_rng(index)
        a_index = index % len(self.dataset_a)
        if self.b_candidates is None:
            b_index = int(rng.integers(len(self.dataset_b)))
        else:
            pool = self.b_candidates[a_index]
            b_index = int(pool[rng.integers(len(pool))])
        seed_a, seed_b = _seeds(rng, 2)
        return a_index, b_index, seed_a, seed_b

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        a_index, b_index, seed_a, seed_b = self._draw(index)
        return {
            self.keys[0]: fetch_seeded(self.dataset_a, a_index, seed_a)[self.image_key],
            self.keys[1]: fetch_seeded(self.dataset_b, b_index, seed_b)[self.image_key],
        }


class PairedDataset(EpochSeededDataset):
    """Items of a MONAI dataset of paired records, with augmentations seeded by ``(seed, epoch, index)``.

    Args:
        dataset: a MONAI dataset whose transform treats both keys of a pair together.
        seed: base seed of the augmentations.
        keys: keys kept in the output (``None``: the whole item).
        centre_channel_keys: keys whose images keep only their centre channel after augmentation
            (a 2.5D target: the generator predicts the centre slice of its input's channels).
    """

    def __init__(self, dataset: Dataset, seed: int = 0, keys: Sequence[str] | None = ("A", "B"),
                 centre_channel_keys: Sequence[str] = ()) -> None:
        super().__init__(seed)
        self.dataset = dataset
        self.keys = None if keys is None else tuple(keys)
        self.centre_channel_keys = tuple(centre_channel_keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        item = fetch_seeded(self.dataset, index, _seeds(self.sample_rng(index), 1)[0])
        item = dict(item) if self.keys is None else {key: item[key] for key in self.keys}
        for key in self.centre_channel_keys:
            centre = item[key].shape[0] // 2
            item[key] = item[key][centre: centre + 1]
        return item


def _slice_dataset(
    records: list[dict[str, Any]],
    keys: str | Sequence[str],
    train: bool,
    crop_size: Sequence[int],
    jitter_scale: float,
    flip_prob: float,
    flip_axis: int | Sequence[int] | None,
    slice_channels: int,
    cache_rate: float,
    num_workers: int | None,
    slice_size: Sequence[int] | None = None,
) -> Dataset:
    """A MONAI dataset of slice records: ``keys`` loaded and augmented (or their deterministic twin), cached.

    The one loading path of both builders, so that unpaired training, paired training and
    validation slices are read, resized and cropped alike. The deterministic twin returns whole
    slices of ``slice_size`` (default ``crop_size``), as inference translates them.
    """
    if train:
        transform = translation_train_transforms(keys, crop_size, jitter_scale, flip_prob, flip_axis, slice_channels,
                                                 slice_size)
    else:
        transform = translation_eval_transforms(keys, crop_size if slice_size is None else slice_size, slice_channels)
    if cache_rate <= 0:
        return Dataset(records, transform=transform)
    return CacheDataset(records, transform=transform, cache_rate=cache_rate, num_workers=num_workers, progress=False)


def _items(datalist: str | os.PathLike | Items, split: str, modalities: Sequence[str], slice_channels: int) -> Items:
    if isinstance(datalist, (str, os.PathLike)):
        return load_translation_datalist(datalist, split, modalities=modalities, slice_channels=slice_channels)
    return datalist


def unpaired_slice_dataset(
    datalist: str | os.PathLike | Items,
    source: str,
    target: str,
    split: str = "training",
    train: bool = True,
    crop_size: Sequence[int] = (256, 256),
    jitter_scale: float = CYCLEGAN_JITTER_SCALE,
    flip_prob: float = 0.5,
    flip_axis: int | Sequence[int] | None = 1,
    slice_channels: int = 1,
    seed: int = 0,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
    level_window_mm: float | None = None,
    slice_size: Sequence[int] | None = None,
) -> UnpairedDataset:
    """The CycleGAN training set of a datalist: all slices of ``source`` against all slices of ``target``.

    Args:
        datalist: the ``dataset.json`` path (checked with :func:`load_translation_datalist`) or its items.
        source: modality of domain A (``"t1"``, ``"ct"``, ...).
        target: modality of domain B.
        split: datalist split.
        train: random jitter and flip (:func:`translation_train_transforms`) or the deterministic twin.
        crop_size: training size (H, W).
        jitter_scale: resize factor before the random crop.
        flip_prob: probability of a flip.
        flip_axis: spatial axis flipped.
        slice_channels: channels per slice (1 for 2D).
        seed: base seed of the B draws and the augmentations.
        cache_rate: fraction of the slices whose loading is cached in memory (0: no cache).
        num_workers: threads filling the cache.
        level_window_mm: draw each B slice among the slices of *other* subjects whose level along
            the slice axis is within this many millimetres of the A slice's
            (:mod:`~modality_translation.data.level_matching`; for cohorts in one common space);
            ``None``: uniformly from all B slices (the reference CycleGAN).
        slice_size: size whole slices are resized to before a random ``crop_size`` patch is taken
            (patch training, :func:`translation_train_transforms`); default ``crop_size``.

    Returns:
        An :class:`UnpairedDataset` yielding ``{"A": (C, H, W), "B": (C, H, W)}``.

    Raises:
        DatalistError: with ``level_window_mm``, a subject without slice index.
        GeometryError: with ``level_window_mm``, subjects sliced along different directions.
    """
    items = _items(datalist, split, (source, target), slice_channels)
    records = {modality: flatten_slices(items, modality) for modality in (source, target)}
    b_candidates = None
    if level_window_mm is not None:
        base = Path(datalist).resolve().parent if isinstance(datalist, (str, os.PathLike)) else None
        b_candidates = level_matched_candidates(
            slice_levels(items, source, base), [r[SUBJECT] for r in records[source]],
            slice_levels(items, target, base), [r[SUBJECT] for r in records[target]], level_window_mm,
        )
    # One dataset, hence one transform object, per domain: each is re-seeded independently per sample.
    domain_a, domain_b = (
        _slice_dataset(records[modality], "image", train, crop_size, jitter_scale, flip_prob, flip_axis,
                       slice_channels, cache_rate, num_workers, slice_size)
        for modality in (source, target)
    )
    return UnpairedDataset(domain_a, domain_b, seed=seed, b_candidates=b_candidates)


def paired_slice_dataset(
    datalist: str | os.PathLike | Items,
    source: str,
    target: str,
    split: str = "validation",
    target_key: str | None = None,
    train: bool = False,
    crop_size: Sequence[int] = (256, 256),
    jitter_scale: float = CYCLEGAN_JITTER_SCALE,
    flip_prob: float = 0.5,
    flip_axis: int | Sequence[int] | None = 1,
    slice_channels: int = 1,
    seed: int = 0,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
    target_centre_channel: bool = False,
    check_grid: bool | None = None,
    min_target_coverage: float | None = None,
    slice_size: Sequence[int] | None = None,
) -> PairedDataset:
    """Paired slices of one split: pix2pix training (``train=True``) or validation against a paired truth.

    Args:
        datalist: the ``dataset.json`` path or its items.
        source: modality of the input (domain A).
        target: modality of the paired target (domain B).
        split: datalist split.
        target_key: item key of the target slices (default ``"<target>_slices"``; e.g.
            ``"truth_t2_in_t1_slices"`` for a demo cohort's ground truth).
        train: same random jitter and flip on both images, or the deterministic twin.
        crop_size, jitter_scale, flip_prob, flip_axis, slice_channels, slice_size: as
            :func:`unpaired_slice_dataset` (with ``slice_size`` larger than ``crop_size``, both images of
            a pair get the same random patch).
        seed: base seed of the augmentations.
        cache_rate: fraction of the pairs cached in memory.
        num_workers: threads filling the cache.
        target_centre_channel: return only the centre channel of 2.5D targets (pix2pix training:
            ``2N + 1`` source channels in, the centre target slice out), after the shared augmentation.
        check_grid: check before any loading that every pair was cut at the same place of one grid
            (:func:`~modality_translation.data.matched_slices.check_paired_slices`, from the
            ``<source>_slice_index`` and ``<target>_slice_index`` files the preprocessing writes):
            ``True`` requires both indexes, ``None`` checks when both are listed, ``False`` never.
        min_target_coverage: leave out the pairs whose target holds data on less than this fraction
            of the source's head pixels (a target scan whose field of view stops short of the
            source's; :mod:`~modality_translation.data.pair_coverage`), logging each subject's count;
            ``None``: keep every pair.

    Returns:
        A :class:`PairedDataset` yielding ``{"A": (C, H, W), "B": (C, H, W)}`` (``B``: ``(1, H, W)`` with
        ``target_centre_channel``).

    Raises:
        DatalistError: from the datalist checks, if the two slice lists of a subject differ in length,
            (``check_grid=True``) a subject without a slice index, or no pair covered enough.
        GeometryError: a pair cut from different grids or at different places.
    """
    # The target's own slices are checked with the source's; another key (a truth) is checked below.
    items = _items(datalist, split, (source,) if target_key else (source, target), slice_channels)
    target_key = target_key or slices_key(target)
    keys = ("A", "B")
    records = pair_slices(items, slices_key(source), target_key, names=keys)
    for record in records:
        if not os.path.isfile(record["B"]):
            raise DatalistError(record["B"], f"{target_key} file of subject {record['subject']!r} does not exist")
    if check_grid is not False:
        base = Path(datalist).resolve().parent if isinstance(datalist, (str, os.PathLike)) else None
        _check_pair_grids(items, source, target, target_key, base, required=bool(check_grid))
    if min_target_coverage is not None:
        records = covered_pairs(records, min_target_coverage, keys)
    dataset = _slice_dataset(records, keys, train, crop_size, jitter_scale, flip_prob, flip_axis, slice_channels,
                             cache_rate, num_workers, slice_size)
    return PairedDataset(dataset, seed=seed, keys=keys, centre_channel_keys=("B",) if target_centre_channel else ())


def _check_pair_grids(items: Items, source: str, target: str, target_key: str, base: Path | None, required: bool) -> None:
    """Check every subject's pairs with the slice indexes (listed relative to the datalist's folder)."""
    index_keys = (slice_index_key(source), slice_index_key(target))
    for item in items:
        subject = item.get(SUBJECT)
        if not all(isinstance(item.get(key), str) for key in index_keys):
            if required:
                missing = [key for key in index_keys if not isinstance(item.get(key), str)]
                raise DatalistError(base, f"subject {subject!r} has no {missing} to check its pairs' grids with")
            continue
        source_index, target_index = (
            Path(item[key]) if base is None or Path(item[key]).is_absolute() else base / item[key] for key in index_keys
        )
        check_paired_slices(source_index, target_index, item[slices_key(source)], item[target_key], subject)
