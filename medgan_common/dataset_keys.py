"""The key names of the cohort datalist (``dataset.json``), defined once for its writer and its readers.

The preprocessing runner writes ``dataset.json`` (``preprocessing.runner.reports`` for the top level,
the steps of ``preprocessing.runner.steps`` for the items); the translation library reads it to
train, translate and evaluate (``modality_translation.data.datalist``, ``bundle_support``,
``inference.intensity``). Both spell every key through this module, so a renamed key cannot leave a
reader behind. Bundle configs (JSON) name item keys literally (``"t2_in_t1"``): the builders below
say what those names mean.

Top level::

    {"name", "description", "config", "config_sha256",
     "modalities": ["ct", "t1", "t2"],                 # MODALITIES
     "pairs": {"t2_in_t1": ["t2", "t1"]},               # PAIRS: pair_key(moving, fixed) -> [moving, fixed]
     "ct_window": {...}, "normalisation": {...},        # CT_WINDOW, NORMALISATION
     "slice_axis": "axial", "slice_size": {"t1": [64, 64]},
     "references": {"t1": {"kind", "subject", "file"}},
     "numTraining", "numValidation", "numTest",         # SPLIT_COUNTS
     "training": [item, ...], "validation": [...], "test": [...]}   # SPLITS

An item, for a subject with a T1 and a T2 registered into the T1's space::

    {"subject": "sub-001",                               # SUBJECT
     "t1": ..., "t1_mask": ..., "t1_transforms": ...,    # modality, mask_key, transforms_key
     "t1_slices": [...], "t1_slice_index": ...,          # slices_key, slice_index_key
     "t2_in_t1": ..., "t2_in_t1_mask": ...,              # pair_key("t2", "t1")
     "ct_hu": ..., "ct_in_t2_hu": ...,                   # hu_key
     "truth_t2_in_t1": ..., "truth_labels_in_t1": ...}   # truth_key, truth_labels_key (demo cohorts)

Values that are files are paths relative to the datalist's folder.
"""

from __future__ import annotations

__all__ = [
    "CONFIG", "CONFIG_SHA256", "CT_WINDOW", "DATALIST_FILE", "DESCRIPTION", "HU_SUFFIX", "MASK_SUFFIX",
    "MODALITIES", "NAME", "NORMALISATION", "PAIRS", "REFERENCES", "REFERENCE_FIELDS", "SLICES_SUFFIX",
    "SLICE_AXIS", "SLICE_INDEX_SUFFIX", "SLICE_SIZE", "SPACE_SEPARATOR", "SPLITS", "SPLIT_COUNTS", "SUBJECT",
    "TEST", "TOP_LEVEL_KEYS", "TRAINING", "TRANSFORMS_SUFFIX", "TRUTH_LABELS", "TRUTH_PREFIX", "VALIDATION",
    "hu_key", "mask_key", "pair_key", "slice_index_key", "slice_index_owner", "slices_key", "transforms_key",
    "truth_key", "truth_labels_key",
]

#: File name of the datalist in a preprocessing output folder.
DATALIST_FILE = "dataset.json"

# Top-level keys.
NAME = "name"
DESCRIPTION = "description"
#: Name of the preprocessing configuration, and the SHA-256 of the configuration as run.
CONFIG = "config"
CONFIG_SHA256 = "config_sha256"
#: The modalities of the cohort, CT first.
MODALITIES = "modalities"
#: ``{pair_key(moving, fixed): [moving, fixed]}`` of the registered pairs.
PAIRS = "pairs"
#: The CT window (``WindowSpec.to_dict()`` plus ``out_range``), ``None`` without CT.
CT_WINDOW = "ct_window"
#: The MR normalisation of the configuration (``method``, ``out_range``...).
NORMALISATION = "normalisation"
SLICE_AXIS = "slice_axis"
#: ``{key: [rows, columns]}`` of the slices of each sliced key.
SLICE_SIZE = "slice_size"
#: ``{modality: {REFERENCE_FIELDS}}`` of the registration references.
REFERENCES = "references"
REFERENCE_FIELDS = ("kind", "subject", "file")

# Splits (lists of items) and their counts.
TRAINING = "training"
VALIDATION = "validation"
TEST = "test"
SPLITS = (TRAINING, VALIDATION, TEST)
SPLIT_COUNTS = {TRAINING: "numTraining", VALIDATION: "numValidation", TEST: "numTest"}

#: Every top-level key the preprocessing runner writes.
TOP_LEVEL_KEYS = (NAME, DESCRIPTION, CONFIG, CONFIG_SHA256, MODALITIES, PAIRS, CT_WINDOW, NORMALISATION, SLICE_AXIS,
                  SLICE_SIZE, REFERENCES, *SPLIT_COUNTS.values(), *SPLITS)

# Item keys. A volume's key is its modality (``"t1"``) or a pair key (``"t2_in_t1"``); the keys of its
# companions are built from it.
#: The subject's name (a pseudonym in a preprocessed cohort).
SUBJECT = "subject"
#: Separator of the key of a volume resampled into another modality's space.
SPACE_SEPARATOR = "_in_"
#: Prefix of the keys of a demo cohort's ground truth.
TRUTH_PREFIX = "truth_"
#: The image name of the demo truth's tissue label map.
TRUTH_LABELS = "labels"
HU_SUFFIX = "_hu"
MASK_SUFFIX = "_mask"
TRANSFORMS_SUFFIX = "_transforms"
SLICES_SUFFIX = "_slices"
SLICE_INDEX_SUFFIX = "_slice_index"


def pair_key(moving: str, fixed: str) -> str:
    """Key of the volume ``moving`` resampled onto its subject's ``fixed`` grid (``("t2", "t1")`` -> ``"t2_in_t1"``)."""
    return f"{moving}{SPACE_SEPARATOR}{fixed}"


def hu_key(key: str) -> str:
    """Key of a CT volume kept in Hounsfield units beside the windowed one (``"ct_in_t2"`` -> ``"ct_in_t2_hu"``)."""
    return f"{key}{HU_SUFFIX}"


def mask_key(key: str) -> str:
    """Key of a volume's head mask (``"t1"`` -> ``"t1_mask"``)."""
    return f"{key}{MASK_SUFFIX}"


def transforms_key(key: str) -> str:
    """Key of the transform manifest that registered a volume (``"t1"`` -> ``"t1_transforms"``)."""
    return f"{key}{TRANSFORMS_SUFFIX}"


def slices_key(key: str) -> str:
    """Key of a volume's slice list (``"t1"`` -> ``"t1_slices"``)."""
    return f"{key}{SLICES_SUFFIX}"


def slice_index_key(key: str) -> str:
    """Key of a volume's slice index, the geometry of its slices (``"t1"`` -> ``"t1_slice_index"``)."""
    return f"{key}{SLICE_INDEX_SUFFIX}"


def slice_index_owner(key: str) -> str | None:
    """The volume key whose slice index ``key`` is (``"t1_slice_index"`` -> ``"t1"``), else ``None``."""
    return key[: -len(SLICE_INDEX_SUFFIX)] if key.endswith(SLICE_INDEX_SUFFIX) else None


def truth_key(image: str, space: str) -> str:
    """Key of the demo truth of ``image`` on the ``space`` volume's grid (``("t2", "t1")`` -> ``"truth_t2_in_t1"``)."""
    return f"{TRUTH_PREFIX}{pair_key(image, space)}"


def truth_labels_key(space: str) -> str:
    """Key of the demo truth's tissue labels on the ``space`` volume's grid (``"t2"`` -> ``"truth_labels_in_t2"``)."""
    return truth_key(TRUTH_LABELS, space)
