"""A trained bundle as a thing that travels: what it records of its training, its package, its checks.

- :mod:`~modality_translation.bundle.record`: the training record (``models/training_record.json``):
  everything inference needs from the cohort a bundle was trained on; read by every bundle's
  ``inference.json``, so a bundle translates without its cohort.
"""
