"""Exponential moving average of the generators' weights: what is validated and exported instead of the last step.

A GAN's generator weights oscillate from one update to the next as generator and discriminators chase
each other; the image of any one step carries that step's adversarial texture. An exponential moving
average (EMA) of the weights over the last few thousand steps (Yazici et al. 2019, "The unusual
effectiveness of averaging in GAN training"; the generator EMA of StyleGAN and its successors) smooths
it away at no cost to training: the averaged copy never enters a loss. PyTorch's
:class:`torch.optim.swa_utils.AveragedModel` with :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`
does the averaging; this module attaches it to a trainer, keeps it in the training checkpoint (so that
a resumed run averages as an uninterrupted one) and hands the bundle config the networks to validate
and export.

Usage in a bundle config::

    "generator_average": {"_target_": "modality_translation.engines.GeneratorAverage",
                          "networks": {"g_ab": "@g_ab", "g_ba": "@g_ba"},
                          "decay": "@generator_average_decay"},
    "g_ab_export": "$@generator_average.network('g_ab')",

with ``{"_target_": "modality_translation.engines.GeneratorAverageHandler", "average": "@generator_average"}``
among ``train#handlers`` (on every rank under ``torch.distributed``) and ``@generator_average`` among
the checkpoint handlers' ``extra_objects``; the validators and the final ``model.pt`` use
``@g_ab_export``. With ``decay`` 0 nothing is averaged and
:meth:`GeneratorAverage.network` returns the trained network itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def _unwrapped(net: nn.Module) -> nn.Module:
    # A DistributedDataParallel wrapper holds the network as .module; the average is of the network.
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


class GeneratorAverage:
    """Exponential moving averages of named networks' weights, updated after every training iteration.

    After iteration ``t`` each averaged weight is ``decay * average + (1 - decay) * weight`` (the first
    iteration copies the weights); buffers are copied as they are. The averages follow the networks'
    device and memory layout (channels-last included) and never require gradients.

    Args:
        networks: ``{name: network}`` to average (a ``DistributedDataParallel`` wrapper is averaged as
            the network it wraps).
        decay: weight of the running average per iteration, in [0, 1); ``1 / (1 - decay)`` iterations
            is the average's memory (0.999: about 1000). 0: no averaging.

    Raises:
        ValueError: ``decay`` outside [0, 1), or no networks.
    """

    def __init__(self, networks: Mapping[str, nn.Module], decay: float = 0.0) -> None:
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"generator average decay must be in [0, 1), got {decay}")
        if not networks:
            raise ValueError("generator average needs at least one network")
        self.decay = decay
        self.networks = dict(networks)
        self.averages: dict[str, AveragedModel] = {}
        if decay > 0.0:
            for name, net in self.networks.items():
                average = AveragedModel(_unwrapped(net), multi_avg_fn=get_ema_multi_avg_fn(decay))
                average.requires_grad_(False)
                self.averages[name] = average

    @property
    def enabled(self) -> bool:
        """Whether weights are averaged (``decay`` > 0)."""
        return bool(self.averages)

    def network(self, name: str) -> nn.Module:
        """The network to validate and export under ``name``: its average, or the network itself when off.

        Raises:
            KeyError: ``name`` is not one of the networks.
        """
        if name not in self.networks:
            raise KeyError(f"generator average has no network {name!r} (it has {sorted(self.networks)})")
        return self.averages[name].module if self.enabled else self.networks[name]

    def attach(self, engine: Engine) -> None:
        """Update the averages after every iteration of ``engine`` (nothing to do when off)."""
        if not self.enabled:
            return
        for name, average in self.averages.items():
            # The trainer may have put its networks in channels-last layout after this copy was made;
            # the copy follows, so that validation runs in the layout the trainer chose.
            params = [p for p in _unwrapped(self.networks[name]).parameters() if p.ndim == 4]
            if params and params[0].is_contiguous(memory_format=torch.channels_last) and not params[0].is_contiguous():
                average.module.to(memory_format=torch.channels_last)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    def update(self, engine: Engine | None = None) -> None:
        """Fold the networks' current weights into the averages."""
        for name, average in self.averages.items():
            average.update_parameters(_unwrapped(self.networks[name]))

    def state_dict(self) -> dict[str, Any]:
        """The averages (weights and number of updates) by network name; empty when off."""
        return {name: average.state_dict() for name, average in self.averages.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the averages of :meth:`state_dict`.

        Raises:
            ValueError: the saved averages are not those of these networks (a checkpoint of a run with
                another ``decay`` setting: averaging switched on or off between the runs).
        """
        if set(state) != set(self.averages):
            raise ValueError(
                f"checkpoint holds weight averages of {sorted(state) or 'no network'} but this training "
                f"averages {sorted(self.averages) or 'no network'} (generator average decay {self.decay}): "
                "resume with the decay setting of the run that wrote it, or start a new run")
        for name, average in self.averages.items():
            average.load_state_dict(state[name])


class GeneratorAverageHandler:
    """The handler that updates a :class:`GeneratorAverage` after every iteration of the engine it is attached to.

    A separate object so that a bundle's ``train#handlers`` list holds a handler definition (MONAI's
    property checks read each entry's ``_target_``) while the average itself, referred to by the
    validators and the exported model, is defined once.

    Args:
        average: the weight average to update.
    """

    def __init__(self, average: GeneratorAverage) -> None:
        self.average = average

    def attach(self, engine: Engine) -> None:
        """See :meth:`GeneratorAverage.attach`."""
        self.average.attach(engine)
