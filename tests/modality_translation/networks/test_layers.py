"""Tests of the shared layer helpers: dtype-preserving padded convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modality_translation.networks.layers import PaddedConv2d, PaddedConv3d, padded_conv


@pytest.mark.parametrize("spatial_dims, mode", [(2, "reflect"), (2, "replicate"), (3, "reflect"), (2, "zeros")])
def test_padded_conv_gives_the_torch_convolution_in_float32_and_under_bfloat16_autocast(spatial_dims, mode):
    torch.manual_seed(0)
    reference = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(3, 4, kernel_size=3, padding=1, padding_mode=mode)
    padded = padded_conv(spatial_dims)(3, 4, kernel_size=3, padding=1, padding_mode=mode)
    padded.load_state_dict(reference.state_dict())  # same parameters, same state-dict keys
    x = torch.randn(2, 3, *([6] * spatial_dims))
    torch.testing.assert_close(padded(x), reference(x), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, result = reference(x), padded(x)
    assert result.dtype == torch.bfloat16
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


def test_padding_stays_in_the_activation_dtype_under_autocast(monkeypatch):
    """The padded activation handed to the convolution is bfloat16, not widened to float32."""
    seen = []
    original = F.conv2d

    def spy(input, *args, **kwargs):
        seen.append(input.dtype)
        return original(input, *args, **kwargs)

    monkeypatch.setattr(PaddedConv2d, "_convolve", staticmethod(spy))
    conv = PaddedConv2d(2, 2, kernel_size=3, padding=1, padding_mode="reflect")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(torch.randn(1, 2, 5, 5).bfloat16()).float().sum().backward()
    assert seen == [torch.bfloat16]
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32


def test_padded_conv_rejects_other_dimensions():
    assert padded_conv(3) is PaddedConv3d
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        padded_conv(1)
