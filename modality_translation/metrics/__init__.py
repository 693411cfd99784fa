"""Evaluation metrics: paired similarity (SSIM, PSNR, MAE, SynthRAD2023), FID, and report files."""

from modality_translation.metrics.fid import InceptionFeatureExtractor, fid_from_features, frechet_inception_distance
from modality_translation.metrics.image_similarity import (
    SYNTHRAD_HU_RANGE,
    mae,
    psnr,
    ssim,
    ssim_inside_mask,
    synthrad_metrics,
)
from modality_translation.metrics.report import summarize_metrics, write_metrics_report

__all__ = [
    "InceptionFeatureExtractor",
    "SYNTHRAD_HU_RANGE",
    "fid_from_features",
    "frechet_inception_distance",
    "mae",
    "psnr",
    "ssim",
    "summarize_metrics",
    "ssim_inside_mask",
    "synthrad_metrics",
    "write_metrics_report",
]
