"""Losses of the translation GANs: adversarial criteria, reconstruction terms, the cross-modality structure term and UNIT's latent KL term.

Constructors take plain JSON values, so a MONAI bundle config can build them with ``_target_``.
"""

from modality_translation.losses.adversarial import ADVERSARIAL_MODES, AdversarialLoss
from modality_translation.losses.charbonnier import CharbonnierLoss, charbonnier
from modality_translation.losses.cycle import CycleConsistencyLoss
from modality_translation.losses.kl import latent_kl
from modality_translation.losses.perceptual import PerceptualLoss
from modality_translation.losses.reconstruction import RECONSTRUCTION_PENALTIES, reconstruction_penalty
from modality_translation.losses.structure import MINDStructureLoss, mind_descriptors
from modality_translation.losses.transformed import TransformedLoss

__all__ = [
    "ADVERSARIAL_MODES",
    "AdversarialLoss",
    "CharbonnierLoss",
    "CycleConsistencyLoss",
    "MINDStructureLoss",
    "PerceptualLoss",
    "RECONSTRUCTION_PENALTIES",
    "TransformedLoss",
    "charbonnier",
    "latent_kl",
    "mind_descriptors",
    "reconstruction_penalty",
]
