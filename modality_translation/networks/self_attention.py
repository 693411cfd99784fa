"""The self-attention block of SAGAN (Zhang et al. 2018), in 2D or 3D: the "Modified UNIT" study's attention.

For feature maps ``x`` with ``C`` channels at ``N`` positions, three 1x1 convolutions project every
position: ``f(x)`` and ``g(x)`` to ``C / 8`` channels (the paper's reduction), ``h(x)`` to ``C``. The
attention map is

    beta[j, i] = exp(s[i, j]) / sum_i exp(s[i, j]),   s[i, j] = f(x_i) . g(x_j)

(how much position ``j`` attends to position ``i``, a softmax over ``i`` with no temperature), the
attended features are ``o_j = sum_i beta[j, i] h(x_i)``, and the block returns ``x + gamma * o`` with a
learned scalar ``gamma`` that starts at 0: at initialisation the block is the identity, and the
network learns how much non-local evidence to mix in. This is the formulation of the SAGAN paper's
first version, which the study cites (f, g, h and the residual weight); the published code later
added a fourth 1x1 projection of ``o`` and reduced ``h`` to ``C / 2``.

The map has ``N x N`` entries per image (4096 x 4096 at the 64 x 64 feature maps of a 256 x 256
UNIT network); it is computed with :func:`torch.nn.functional.scaled_dot_product_attention` at scale 1,
which does not keep the whole map in memory where a fused kernel is available.
:meth:`SelfAttention.attention_map` returns it explicitly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch import nn

#: SAGAN's channel reduction of the f and g projections.
SAGAN_REDUCTION = 8


class SelfAttention(nn.Module):
    """``x + gamma * o(x)``: SAGAN self-attention over all positions of a feature map.

    Args:
        spatial_dims: 2 or 3.
        channels: feature maps in (and out).
        reduction: channels of ``f`` and ``g`` are ``channels // reduction`` (at least 1).

    Raises:
        ValueError: for fewer than 1 channel or a reduction below 1.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = SAGAN_REDUCTION) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be >= 1, got {channels}, {reduction}")
        conv = Conv[Conv.CONV, spatial_dims]
        inner = max(1, channels // reduction)
        self.f = conv(channels, inner, kernel_size=1)
        self.g = conv(channels, inner, kernel_size=1)
        self.h = conv(channels, channels, kernel_size=1)
        # 0: the block starts as the identity (SAGAN initialises gamma to 0).
        self.gamma = nn.Parameter(torch.zeros(1))

    def _projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(queries g, keys f, values h)`` as ``(batch, positions, channels)``."""
        return tuple(projection(x).flatten(2).transpose(1, 2) for projection in (self.g, self.f, self.h))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """``beta``: ``(batch, N, N)``, row ``j`` the softmax weights of every position ``i`` for position ``j``."""
        queries, keys, _ = self._projections(x)
        return torch.softmax(queries @ keys.transpose(1, 2), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x + gamma * o``, the shape of ``x``."""
        queries, keys, values = self._projections(x)
        attended = F.scaled_dot_product_attention(queries, keys, values, scale=1.0)
        return x + self.gamma * attended.transpose(1, 2).reshape(x.shape)
