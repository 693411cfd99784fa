"""One direction of a UNIT network as an image-to-image module, sharing the network's weights.

A :class:`~modality_translation.networks.unit_network.UNITNetwork` translates both ways; what takes a
generator (``TranslationEvaluator``, ``VolumeTranslator``, image grids) wants a module of one
direction. :class:`UNITTranslation` is that module: it calls the network it wraps, so it sees the
weights as they train, and it works as well on a ``DistributedDataParallel`` wrapper of the network
(the call goes through the wrapper's ``forward``). Its own state dict holds the network's under the
prefix ``network.``: load weights into the network, not into the view.
"""

from __future__ import annotations

import torch
from torch import nn

from modality_translation.networks.unit_network import check_direction


class UNITTranslation(nn.Module):
    """``network(x, direction=direction)``: the translation of a UNIT network in one direction.

    Args:
        network: a :class:`~modality_translation.networks.unit_network.UNITNetwork` (or a wrapper of
            one whose ``forward`` takes the same arguments, e.g. ``DistributedDataParallel``).
        direction: ``"a_to_b"`` or ``"b_to_a"``.

    Raises:
        ValueError: for an unknown direction.
    """

    def __init__(self, network: nn.Module, direction: str) -> None:
        super().__init__()
        self.network = network
        self.direction = check_direction(direction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate ``x`` (source-domain images, spatial sizes multiples of 4) through the latent mean."""
        return self.network(x, direction=self.direction)
