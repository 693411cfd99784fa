"""Synthetic demo cohort with paired ground truth: ``python -m preprocessing demo --output DIR``."""

from preprocessing.demo.cohort import (
    ANATOMIES,
    SIZES,
    build_demo_cohort,
    build_subject,
    check_anatomy,
    cohort_geometry,
    subject_name,
)

__all__ = ["ANATOMIES", "SIZES", "build_demo_cohort", "build_subject", "check_anatomy", "cohort_geometry",
           "subject_name"]
