"""Reconstruction penalties by name: L1 or the Charbonnier penalty (the "Modified UNIT" switch).

A trainer whose reconstruction terms can be switched between penalties takes the name from its
config (``"l1"``, ``"charbonnier"``) and builds the penalty with :func:`reconstruction_penalty`; an
unknown name fails with the allowed ones.
"""

from __future__ import annotations

from torch import nn

from modality_translation.losses.charbonnier import CharbonnierLoss

#: Names of the reconstruction penalties.
RECONSTRUCTION_PENALTIES = ("l1", "charbonnier")


def reconstruction_penalty(name: str, charbonnier_eps: float = 1e-3) -> nn.Module:
    """The mean penalty of an image difference: ``"l1"`` (mean absolute error) or ``"charbonnier"``.

    Args:
        name: ``"l1"`` or ``"charbonnier"`` (``mean(sqrt(d^2 + eps^2))``, :class:`CharbonnierLoss`).
        charbonnier_eps: the Charbonnier smoothing constant (intensity units).

    Returns:
        ``loss(input, target)``, a module returning a scalar.

    Raises:
        ValueError: for another name (naming the allowed ones) or a non-positive ``charbonnier_eps``.
    """
    if not isinstance(name, str) or name.lower() not in RECONSTRUCTION_PENALTIES:
        raise ValueError(f"reconstruction penalty must be one of {RECONSTRUCTION_PENALTIES}, got {name!r}")
    return nn.L1Loss() if name.lower() == "l1" else CharbonnierLoss(eps=charbonnier_eps)
