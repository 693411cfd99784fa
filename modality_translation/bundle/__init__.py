"""A trained bundle as a thing that travels: what it records of its training, its package, its checks.

- :mod:`~modality_translation.bundle.record`: the training record (``models/training_record.json``):
  everything inference needs from the cohort a bundle was trained on; read by every bundle's
  ``inference.json``, so a bundle translates without its cohort.
- :mod:`~modality_translation.bundle.errors`: ``BundleIntegrityError``, a bundle or package that is
  not a bundle, incomplete or altered.
- :mod:`~modality_translation.bundle.large_files`: ``large_files.yml`` in MONAI's format (the sha256
  of the files under ``models/``), written and verified.
- :mod:`~modality_translation.bundle.torchscript`: the generators of a trained bundle as TorchScript,
  checked against the eager networks.
- :mod:`~modality_translation.bundle.package`: ``<name>_v<version>.zip``, a trained bundle in MONAI's
  layout with its weights, TorchScript, evaluation and training settings; deterministic.
- :mod:`~modality_translation.bundle.unpack`: a package extracted safely and checked.

``python -m modality_translation.bundle {package,unpack,verify}`` runs them.
"""
