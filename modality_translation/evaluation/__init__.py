"""Evaluation of translated volumes against paired targets: per-subject metrics, summary, optional FID."""

from modality_translation.evaluation.evaluate import FID_SKIPPED_NOTE, evaluate_translation, mr_metrics
from modality_translation.evaluation.worst_subject import worst_subject_grid

__all__ = ["FID_SKIPPED_NOTE", "evaluate_translation", "mr_metrics", "worst_subject_grid"]
