"""The fast paths of volume translation agree with the float32 reference (modality_translation/inference/translate.py).

bfloat16 autocast, channels-last batches and batch sizes against float32, contiguous, one batch; the
batched slice resampling of ``preprocessing.slices`` against a slice-by-slice reference computation.
"""

import numpy as np
import pytest
import torch
from monai.transforms import Resize

from modality_translation.inference.translate import translate_slices, translate_stack
from modality_translation.networks import UNetGenerator
from preprocessing.slices import extract_slices, paste_slices

#: bfloat16 keeps 8 significant bits (relative step 2**-8 = 0.0039): on the [-1, 1] scale the U-Net-32's
#: outputs stay within these bounds of float32 (measured: 0.0044 max, 0.00045 mean at this size).
BF16_MAX_ABS = 0.03
BF16_MEAN_ABS = 0.005


def _generator(seed=0):
    """U-Net for 32 x 32 slices with the pix2pix bundle's layout at 8 base channels."""
    torch.manual_seed(seed)
    return UNetGenerator(spatial_dims=2, in_channels=1, out_channels=1, channels=[8, 16, 32, 64, 64],
                         norm="instance", dropout=0.5, dropout_levels=3).eval()


def _head_volume(shape=(9, 28, 24), seed=0):
    """[z, y, x] volume on the network scale: background -1, an ellipsoid with texture and noise."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.2) ** 2 < 1
    volume = np.where(head, 0.3 * np.sin(6 * x) * np.cos(5 * y) + rng.normal(0, 0.05, shape), -1.0)
    return volume.astype(np.float32)


def test_bf16_and_channels_last_agree_with_float32_within_the_stated_tolerance():
    network, volume, spacing = _generator(), _head_volume(), (1.0, 1.2, 2.0)
    reference = translate_slices(network, volume, spacing, slice_size=32, batch_size=len(volume))
    fast = translate_slices(network, volume, spacing, slice_size=32, batch_size=4, amp=True, channels_last=True)
    assert fast.shape == reference.shape == volume.shape and fast.dtype == np.float32
    difference = np.abs(fast - reference)
    assert difference.max() <= BF16_MAX_ABS and difference.mean() <= BF16_MEAN_ABS
    # The autocast is really on: bfloat16 rounding leaves a trace.
    assert difference.max() > 0
    # Channels-last and smaller batches alone change nothing beyond float32 round-off.
    layout = translate_slices(network, volume, spacing, slice_size=32, batch_size=2, channels_last=True)
    np.testing.assert_allclose(layout, reference, atol=1e-5, rtol=0)


def test_channels_last_leaves_the_callers_network_as_it_was():
    network = _generator()
    before = {name: (p.clone(), p.stride()) for name, p in network.named_parameters()}
    translate_stack(network, np.zeros((3, 1, 32, 32), np.float32), batch_size=2, amp=True, channels_last=True)
    for name, parameter in network.named_parameters():
        assert torch.equal(parameter, before[name][0]) and parameter.stride() == before[name][1]


def test_translate_stack_batches_like_one_pass_and_checks_its_inputs():
    network = _generator(seed=1)
    stack = np.random.default_rng(1).uniform(-1, 1, (5, 1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = network(torch.from_numpy(stack))[:, 0].numpy()
    for batch_size in (1, 2, 5, 8):
        outputs = translate_stack(network, stack, batch_size=batch_size)
        assert outputs.shape == (5, 32, 32) and outputs.dtype == np.float32
        np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="batch_size"):
        translate_stack(network, stack, batch_size=0)
    with pytest.raises(ValueError, match=r"\(N, C, rows, columns\)"):
        translate_stack(network, stack[:, 0])
    with pytest.raises(ValueError, match="expected"):
        translate_stack(lambda batch: batch[:, :, :16], stack)


def _per_slice_reference(volume, spacing, output_shape, pad_value):
    """Slice-by-slice extraction: pad each axial slice to the output's aspect ratio in mm, resize it alone."""
    rows_mm, columns_mm = spacing[1], spacing[0]
    rows, columns = volume.shape[1:]
    pixel_mm = max(rows * rows_mm / output_shape[0], columns * columns_mm / output_shape[1])
    padded_rows = max(rows, round(output_shape[0] * pixel_mm / rows_mm))
    padded_columns = max(columns, round(output_shape[1] * pixel_mm / columns_mm))
    top, left = (padded_rows - rows) // 2, (padded_columns - columns) // 2
    resize = Resize(output_shape, mode="bilinear", align_corners=False, anti_aliasing=True)
    restore = Resize((padded_rows, padded_columns), mode="bilinear", align_corners=False, anti_aliasing=False)
    slices, restored = [], []
    for plane in volume:
        padded = np.full((padded_rows, padded_columns), pad_value, np.float32)
        padded[top : top + rows, left : left + columns] = plane
        resized = np.asarray(resize(padded[None]))[0]
        slices.append(resized)
        restored.append(np.asarray(restore(resized[None]))[0, top : top + rows, left : left + columns])
    return np.stack(slices), np.stack(restored)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 1.3, 2.5)])
def test_batched_extraction_and_pasting_equal_the_per_slice_computation(spacing):
    volume = _head_volume(shape=(6, 40, 34), seed=2)
    slices, geometries = extract_slices(volume, axis="axial", output_shape=(32, 32), pad_value=-1.0, spacing=spacing)
    expected_slices, expected_volume = _per_slice_reference(volume, spacing, (32, 32), -1.0)
    np.testing.assert_allclose(np.stack(slices), expected_slices, atol=1e-5, rtol=0)
    pasted = paste_slices(slices, geometries)
    np.testing.assert_allclose(pasted, expected_volume, atol=1e-5, rtol=0)
