"""Evaluation metrics: paired similarity (SSIM, PSNR, MAE, SynthRAD2023), MAE per tissue class, FID, report files."""

from modality_translation.metrics.fid import InceptionFeatureExtractor, fid_from_features, frechet_inception_distance
from modality_translation.metrics.image_similarity import (
    SYNTHRAD_HU_RANGE,
    mae,
    psnr,
    sample_covariance_k2,
    ssim,
    ssim_inside_mask,
    synthrad_metrics,
)
from modality_translation.metrics.report import summarize_metrics, write_metrics_report
from modality_translation.metrics.tissue_classes import (
    DEMO_TISSUE_CLASSES,
    check_tissue_classes,
    mae_per_tissue_class,
)

__all__ = [
    "DEMO_TISSUE_CLASSES",
    "InceptionFeatureExtractor",
    "SYNTHRAD_HU_RANGE",
    "check_tissue_classes",
    "fid_from_features",
    "frechet_inception_distance",
    "mae",
    "mae_per_tissue_class",
    "psnr",
    "sample_covariance_k2",
    "ssim",
    "summarize_metrics",
    "ssim_inside_mask",
    "synthrad_metrics",
    "write_metrics_report",
]
