"""Losses of the translation GANs: adversarial criteria and reconstruction terms.

Constructors take plain JSON values, so a MONAI bundle config can build them with ``_target_``.
"""

from modality_translation.losses.adversarial import ADVERSARIAL_MODES, AdversarialLoss
from modality_translation.losses.charbonnier import CharbonnierLoss, charbonnier
from modality_translation.losses.cycle import CycleConsistencyLoss
from modality_translation.losses.perceptual import PerceptualLoss

__all__ = [
    "ADVERSARIAL_MODES",
    "AdversarialLoss",
    "CharbonnierLoss",
    "CycleConsistencyLoss",
    "PerceptualLoss",
    "charbonnier",
]
