"""Shared GAN library for medical modality translation, imported by the MONAI bundles.

Networks, losses, training engines, data pipelines, inference and metrics used by every bundle
under ``bundles/``; no bundle copies code that another bundle also needs.
"""

__version__ = "0.1.0"
