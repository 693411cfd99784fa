"""Synthetic demo cohort with paired ground truth: ``python -m preprocessing demo --output DIR``."""

from preprocessing.demo.cohort import SIZES, build_demo_cohort, build_subject, cohort_geometry, subject_name

__all__ = ["SIZES", "build_demo_cohort", "build_subject", "cohort_geometry", "subject_name"]
