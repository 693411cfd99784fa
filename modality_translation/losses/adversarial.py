"""GAN losses on discriminator logits: binary cross-entropy, least squares (LSGAN) and hinge.

One object gives both players' losses, so that a trainer takes a single ``AdversarialLoss`` from the
bundle config:

=================  =============================================  ==========================================
mode               discriminator (before ``discriminator_scale``)  generator
=================  =============================================  ==========================================
``bce``            BCE(r, 1) + BCE(f, 0)                           BCE(f, 1)   (non-saturating GAN)
``least_squares``  mean((r - 1)^2) + mean(f^2)                     mean((f - 1)^2)
``hinge``          mean(relu(1 - r)) + mean(relu(1 + f))           -mean(f)
=================  =============================================  ==========================================

where ``r`` and ``f`` are the logits for real and generated images. Least squares is MONAI's
:class:`monai.losses.PatchAdversarialLoss` with ``no_activation_leastsq=True`` (its default squashes the
logits with a LeakyReLU first, which is not LSGAN). The other two are not taken from it: its ``bce``
applies a sigmoid and then ``BCELoss``, which clamps the log at -100 and so loses the gradient of
confidently wrong logits (``binary_cross_entropy_with_logits`` is the numerically stable form); its
``hinge`` passes the logits through tanh first, which bounds the generator loss and is not the hinge
loss of Lim & Ye 2017 / SAGAN (Zhang et al. 2018).

The seed studies sum the real and fake terms (``discriminator_scale=1.0``, the default); the CycleGAN
paper halves the discriminator objective to slow the discriminator down (``discriminator_scale=0.5``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from torch import nn

ADVERSARIAL_MODES = ("bce", "least_squares", "hinge")

Logits = torch.Tensor | Sequence[torch.Tensor]


class AdversarialLoss(nn.Module):
    """Generator and discriminator losses of one GAN criterion.

    Logits may be a tensor or a list of tensors (a multi-scale discriminator); a list gives the mean
    of the per-scale losses.

    Args:
        mode: ``"bce"`` (the seeds and pix2pix), ``"least_squares"`` (CycleGAN paper) or ``"hinge"`` (SAGAN).
        discriminator_scale: factor on the discriminator loss (real + fake); 0.5 halves it as the
            CycleGAN paper does.

    Raises:
        ValueError: for an unknown mode or a non-positive scale.
    """

    def __init__(self, mode: str = "bce", discriminator_scale: float = 1.0) -> None:
        super().__init__()
        if mode not in ADVERSARIAL_MODES:
            raise ValueError(f"mode must be one of {ADVERSARIAL_MODES}, got {mode!r}")
        if not discriminator_scale > 0:
            raise ValueError(f"discriminator_scale must be > 0, got {discriminator_scale}")
        self.mode = mode
        self.discriminator_scale = float(discriminator_scale)
        self.least_squares = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)

    def _criterion(self, logits: torch.Tensor, as_real: bool, for_discriminator: bool) -> torch.Tensor:
        if self.mode == "bce":
            target = torch.full_like(logits, 1.0 if as_real else 0.0)
            return F.binary_cross_entropy_with_logits(logits, target)
        if self.mode == "least_squares":
            return self.least_squares(logits, target_is_real=as_real, for_discriminator=for_discriminator)
        if not for_discriminator:
            return -logits.mean()
        return F.relu(1.0 - logits).mean() if as_real else F.relu(1.0 + logits).mean()

    def _mean_over_scales(self, logits: Logits, as_real: bool, for_discriminator: bool) -> torch.Tensor:
        scales = [logits] if torch.is_tensor(logits) else list(logits)
        if not scales:
            raise ValueError("no discriminator logits given")
        return torch.stack([self._criterion(s, as_real, for_discriminator) for s in scales]).mean()

    def generator_loss(self, fake_logits: Logits) -> torch.Tensor:
        """Loss of the generator: the discriminator should call its images real.

        Args:
            fake_logits: discriminator logits for generated images.

        Returns:
            A scalar tensor.
        """
        return self._mean_over_scales(fake_logits, as_real=True, for_discriminator=False)

    def discriminator_loss(self, real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
        """Loss of the discriminator: ``discriminator_scale * (loss on real + loss on fake)``.

        Args:
            real_logits: discriminator logits for real images.
            fake_logits: discriminator logits for generated images (computed on detached images).

        Returns:
            A scalar tensor.
        """
        real = self._mean_over_scales(real_logits, as_real=True, for_discriminator=True)
        fake = self._mean_over_scales(fake_logits, as_real=False, for_discriminator=True)
        return self.discriminator_scale * (real + fake)
