"""The KL term of UNIT's VAEs: ``KL(N(mu, I) || N(0, I))``, the encoders' unit-variance posterior against the prior.

UNIT's encoders output only the mean ``mu`` of ``q(z | x) = N(mu, I)``; the prior is ``N(0, I)``. For
two Gaussians of equal (unit) covariance the divergence is ``||mu||^2 / 2``. :func:`latent_kl` returns
it per latent element, averaged over elements and batch: ``mean(mu^2) / 2``, on the same footing as the
reconstruction terms, which are means over pixels. The authors' public code computes ``mean(mu^2)``
without the 1/2 (twice this value); the paper's divergence has it.
"""

from __future__ import annotations

import torch


def latent_kl(mu: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, I) || N(0, I))`` per latent element: ``0.5 * mean(mu ** 2)`` (a scalar; 0 for ``mu = 0``).

    Args:
        mu: latent means, any shape (``(batch, channels, *spatial)`` for UNIT's codes).
    """
    return 0.5 * mu.pow(2).mean()
