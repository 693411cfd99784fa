"""Evaluation of translated volumes against paired targets: per-subject metrics, summary, optional FID."""

from modality_translation.evaluation.evaluate import FID_SKIPPED_NOTE, evaluate_translation, mr_metrics

__all__ = ["FID_SKIPPED_NOTE", "evaluate_translation", "mr_metrics"]
