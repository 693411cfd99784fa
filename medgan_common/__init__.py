"""General utilities shared by ``preprocessing`` and ``modality_translation``.

What belongs here: code with no imaging-domain knowledge that both packages import, so that
neither imports the other for it:

- :mod:`medgan_common.atomic`: atomic file output (temporary name, then rename);
- :mod:`medgan_common.errors`: the error types that name the file and the problem;
- :mod:`medgan_common.host_memory`: freed host memory kept for reuse (the CPU trainer and the
  preprocessing workers);
- :mod:`medgan_common.dataset_keys`: the key names of the cohort's ``dataset.json``, the only
  contract between the preprocessing runner that writes it and the readers that train, translate
  and evaluate from it.

This package imports neither ``preprocessing`` nor ``modality_translation``.
"""
