"""Training and validation engines of the translation GANs, on MONAI / Ignite.

Bundle configs build them with ``_target_`` (e.g. ``"modality_translation.engines.CycleGANTrainer"``;
``Pix2PixTrainer``, ``UNITTrainer``; all on the trainer base ``GANTrainer``) and attach MONAI handlers (``StatsHandler``, ``TensorBoardStatsHandler``, ``LrScheduleHandler``,
``ValidationHandler``) unchanged, plus this package's checkpoint and image-grid handlers.
"""

from medgan_common.host_memory import retain_freed_host_memory
from modality_translation.engines.checkpoint import (
    AtomicDiskSaver,
    GlobalRNGState,
    TrainingCheckpointLoader,
    TrainingCheckpointSaver,
    checkpoint_path,
    latest_checkpoint,
    training_objects,
)
from modality_translation.engines.cyclegan_trainer import IMAGE_KEYS, LOSS_KEYS, CycleGANTrainer
from modality_translation.engines.gan_trainer import (
    GANTrainer,
    SourceTargetBatch,
    compile_in_place,
    frozen,
    has_batch_norm,
    losses_from_output,
    paired_forward,
    resolve_amp_dtype,
)
from modality_translation.engines.evaluator import UNIT_RANGE_SPAN, TranslationEvaluator, translation_metrics
from modality_translation.engines.image_grid import (
    DEFAULT_ROWS,
    TranslationGridHandler,
    save_grid_png,
    translation_grid,
)
from modality_translation.engines.image_pool import ImagePool
from modality_translation.engines.pix2pix_trainer import PIX2PIX_LAMBDA_L1, Pix2PixTrainer, conditional_pair
from modality_translation.engines.schedules import LinearDecay, adam_optimizer, linear_decay_scheduler
from modality_translation.engines.unit_trainer import UNIT_LOSS_WEIGHTS, UNITTrainer
from modality_translation.engines.weight_average import GeneratorAverage, GeneratorAverageHandler

__all__ = [
    "AtomicDiskSaver",
    "CycleGANTrainer",
    "DEFAULT_ROWS",
    "GANTrainer",
    "GeneratorAverage",
    "GeneratorAverageHandler",
    "GlobalRNGState",
    "IMAGE_KEYS",
    "ImagePool",
    "LOSS_KEYS",
    "LinearDecay",
    "PIX2PIX_LAMBDA_L1",
    "Pix2PixTrainer",
    "TrainingCheckpointLoader",
    "TrainingCheckpointSaver",
    "TranslationEvaluator",
    "TranslationGridHandler",
    "UNIT_LOSS_WEIGHTS",
    "UNIT_RANGE_SPAN",
    "UNITTrainer",
    "SourceTargetBatch",
    "adam_optimizer",
    "checkpoint_path",
    "compile_in_place",
    "conditional_pair",
    "frozen",
    "has_batch_norm",
    "latest_checkpoint",
    "linear_decay_scheduler",
    "losses_from_output",
    "paired_forward",
    "resolve_amp_dtype",
    "retain_freed_host_memory",
    "save_grid_png",
    "training_objects",
    "translation_grid",
    "translation_metrics",
]
