"""Optimisers and learning-rate schedules of the GAN trainings.

- :func:`adam_optimizer`: one Adam optimiser over the parameters of several networks (CycleGAN keeps one
  for both generators and one for both discriminators), with the GAN betas (0.5, 0.999) of
  Radford et al. 2016 that CycleGAN, pix2pix and UNIT use, and PyTorch's fused Adam kernel where the
  parameters allow it: on CPU the default per-parameter loop takes 0.85 s per step for the two
  U-Net-256 generators (109 M parameters), the fused kernel 0.1 s; channels-last parameters are
  stepped on dense views (:class:`~modality_translation.engines.dense_adam.Adam`).
- :class:`LinearDecay` / :func:`linear_decay_scheduler`: CycleGAN's schedule, a constant rate for
  ``n_epochs_constant`` epochs, then a linear decay towards 0 over ``n_epochs_decay`` epochs. It is
  :class:`torch.optim.lr_scheduler.LambdaLR` with the multiplier of the reference implementation
  (``networks.get_scheduler``, ``lr_policy="linear"``), stepped once per epoch by MONAI's
  ``LrScheduleHandler(epoch_level=True)``: the multiplier of epoch ``e`` (1-based) is
  ``1 - max(0, e - n_epochs_constant) / (n_epochs_decay + 1)``, so the last epoch trains at
  ``1 / (n_epochs_decay + 1)`` of the base rate and the line reaches 0 just after it: no epoch is
  spent at a rate of exactly 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from modality_translation.engines.dense_adam import Adam


def adam_optimizer(
    networks: nn.Module | Sequence[nn.Module],
    lr: float = 2e-4,
    betas: Sequence[float] = (0.5, 0.999),
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.Adam:
    """Adam over the parameters of one or several networks.

    Create it after moving the networks to their device (the fused kernel is chosen by device).

    Args:
        networks: a network or a list of networks (e.g. both generators).
        lr: learning rate (CycleGAN: 2e-4; the CT<->MRI study: 1e-4 for G, 1e-3 for D).
        betas: Adam's moment decay rates.
        weight_decay: L2 penalty.
        fused: use the fused Adam kernel; ``None``: when every parameter is a floating-point tensor
            on CPU or CUDA. Same update as the default implementation, up to rounding.

    Returns:
        The optimiser.

    Raises:
        ValueError: for a non-positive learning rate or no parameters.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    modules = [networks] if isinstance(networks, nn.Module) else list(networks)
    parameters = list(itertools.chain.from_iterable(module.parameters() for module in modules))
    if not parameters:
        raise ValueError("the networks have no parameters to optimise")
    if fused is None:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    return Adam(
        parameters, lr=lr, betas=tuple(float(b) for b in betas), weight_decay=weight_decay, fused=bool(fused)
    )


class LinearDecay:
    """LR multiplier: 1 for ``n_epochs_constant`` epochs, then linear decay over ``n_epochs_decay`` epochs.

    A callable object rather than a lambda, so that ``LambdaLR.state_dict`` stores its settings.

    Args:
        n_epochs_constant: epochs at the base rate (CycleGAN: 100).
        n_epochs_decay: epochs of linear decay after them (CycleGAN: 100).

    Raises:
        ValueError: for negative epoch counts.
    """

    def __init__(self, n_epochs_constant: int, n_epochs_decay: int) -> None:
        if n_epochs_constant < 0 or n_epochs_decay < 0:
            raise ValueError(f"epoch counts must be >= 0, got {n_epochs_constant}, {n_epochs_decay}")
        self.n_epochs_constant = int(n_epochs_constant)
        self.n_epochs_decay = int(n_epochs_decay)

    def __call__(self, completed_epochs: int) -> float:
        """Multiplier of the epoch that follows ``completed_epochs`` scheduler steps (``LambdaLR``'s argument)."""
        epoch = completed_epochs + 1
        return max(0.0, 1.0 - max(0, epoch - self.n_epochs_constant) / (self.n_epochs_decay + 1))


def linear_decay_scheduler(
    optimizer: torch.optim.Optimizer, n_epochs_constant: int = 100, n_epochs_decay: int = 100
) -> torch.optim.lr_scheduler.LambdaLR:
    """CycleGAN's linear-decay schedule for ``optimizer``, to be stepped once per epoch.

    Args:
        optimizer: the optimiser whose learning rates are scaled.
        n_epochs_constant: epochs at the base rate.
        n_epochs_decay: epochs of linear decay towards 0 after them.

    Returns:
        A ``LambdaLR`` with :class:`LinearDecay`; give it to ``monai.handlers.LrScheduleHandler``.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=LinearDecay(n_epochs_constant, n_epochs_decay))
