"""Hospital-style preprocessing for medical image translation.

Reads CT DICOM series and MRI NIfTI, windows CT, registers volumes with ANTs, removes the CT
head-holder artefact, normalises MR and extracts 2D slices over whole cohorts. Also builds a
synthetic demo cohort with paired ground truth (``python -m preprocessing demo``).
"""

__version__ = "0.1.0"
