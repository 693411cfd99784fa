"""Test-time flip averaging: each slice translated as it is and flipped left-right, the two averaged."""

import numpy as np
import torch
from torch import nn

from modality_translation.inference import VolumeTranslator
from modality_translation.inference.translate import translate_stack


class ColumnRamp(nn.Module):
    """Not flip-equivariant: the centre channel plus each column's index times 0.01."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        ramp = torch.arange(x.shape[-1], dtype=x.dtype) * 0.01
        return x[:, x.shape[1] // 2 :][:, :1] * self.scale + ramp


def test_flip_average_averages_the_translation_of_the_slice_and_of_its_mirror_image():
    rng = np.random.default_rng(0)
    stack = rng.uniform(-1, 1, (5, 1, 6, 8)).astype(np.float32)
    plain = translate_stack(ColumnRamp(), stack, batch_size=2)
    np.testing.assert_allclose(plain, stack[:, 0] + np.arange(8) * 0.01, atol=1e-6)
    averaged = translate_stack(ColumnRamp(), stack, batch_size=2, flip_average=True)
    # The image itself comes back unchanged (flipped twice); the ramp and its mirror average to their mean.
    np.testing.assert_allclose(averaged, stack[:, 0] + 7 * 0.01 / 2, atol=1e-6)


def test_volume_translator_passes_flip_averaging_through():
    volume = np.random.default_rng(1).uniform(-1, 1, (4, 16, 16)).astype(np.float32)
    translators = {
        flip: VolumeTranslator(ColumnRamp(), "t1", "t2", slice_size=16, device="cpu", flip_average=flip,
                               source_intensity={"on_network_scale": True})
        for flip in (False, True)
    }
    plain = translators[False].translate_array(volume, (1.0, 1.0, 1.0))
    averaged = translators[True].translate_array(volume, (1.0, 1.0, 1.0))
    # The canonical [z, y, x] volume's columns are its x axis: the ramp runs along it, or is flattened.
    assert np.ptp(np.mean(plain - volume, axis=(0, 1))) > 0.1
    np.testing.assert_allclose(averaged - volume, 15 * 0.01 / 2, atol=1e-5)
