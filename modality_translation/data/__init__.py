"""Data pipelines of the translation GANs: datalist checks, slice transforms, unpaired and paired datasets.

Bundle configs build them with ``_target_``, e.g.
``{"_target_": "modality_translation.data.unpaired_slice_dataset", "datalist": "...", "source": "t1", "target": "t2"}``.
"""

from modality_translation.data.datalist import (
    MODALITY_ALIASES,
    SPLITS,
    DatalistError,
    ModalityMismatchError,
    check_modality_name,
    flatten_slices,
    load_translation_datalist,
    modality_named_in,
    pair_slices,
    read_datalist,
    slices_key,
)
from modality_translation.data.transforms import (
    CYCLEGAN_JITTER_SCALE,
    CheckModalityd,
    jitter_size,
    translation_eval_transforms,
    translation_train_transforms,
)
from modality_translation.data.unpaired import (
    EpochSeededDataset,
    PairedDataset,
    UnpairedDataset,
    fetch_seeded,
    paired_slice_dataset,
    unpaired_slice_dataset,
)

__all__ = [
    "CYCLEGAN_JITTER_SCALE",
    "CheckModalityd",
    "DatalistError",
    "EpochSeededDataset",
    "MODALITY_ALIASES",
    "ModalityMismatchError",
    "PairedDataset",
    "SPLITS",
    "UnpairedDataset",
    "check_modality_name",
    "fetch_seeded",
    "flatten_slices",
    "jitter_size",
    "load_translation_datalist",
    "modality_named_in",
    "pair_slices",
    "paired_slice_dataset",
    "read_datalist",
    "slices_key",
    "translation_eval_transforms",
    "translation_train_transforms",
    "unpaired_slice_dataset",
]
