"""The translation's background outside the input's head: set to the target's air, beyond a margin in mm."""

import numpy as np
import pytest
import torch
from torch import nn

from modality_translation.inference import IntensityMapping, VolumeTranslator
from modality_translation.inference.background import FillOutsideHead, FillOutsideHeadd, fill_outside_head, widen_mask
from modality_translation.inference.intensity import CT_AIR_HU


def _ball(shape, centre, radius_voxels):
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius_voxels ** 2


def test_widen_mask_reaches_the_margin_in_millimetres_on_anisotropic_voxels():
    mask = np.zeros((9, 21, 21), bool)
    mask[4, 10, 10] = True
    widened = widen_mask(mask, (3.0, 1.0, 1.0), 4.0)
    # 4 mm: one slice (3 mm) above and below, four voxels (1 mm) in-plane.
    assert widened[:, 10, 10].nonzero()[0].tolist() == [3, 4, 5]
    assert widened[4, 10].nonzero()[0].tolist() == list(range(6, 15))
    assert widened[3, 10, 12] and not widened[3, 10, 13]  # sqrt(9 + 9) > 4 > sqrt(9 + 4)
    np.testing.assert_array_equal(widen_mask(mask, (3.0, 1.0, 1.0), 0.0), mask)


def test_fill_outside_head_keeps_the_head_and_the_margin_and_sets_the_rest_to_air():
    rng = np.random.default_rng(0)
    image = rng.uniform(-500, 500, (6, 24, 24)).astype(np.float32)
    head = np.broadcast_to(_ball((1, 24, 24), (0, 12, 12), 6), image.shape)
    filled = fill_outside_head(image, head, -1024.0, (2.0, 1.0, 1.0), margin_mm=2.0)
    near = widen_mask(head, (2.0, 1.0, 1.0), 2.0)
    np.testing.assert_array_equal(filled[near], image[near])
    assert np.all(filled[~near] == -1024.0) and (~near).sum() > 100
    assert filled.dtype == np.float32 and not np.shares_memory(filled, image)
    # without a margin exactly the mask is kept
    exact = fill_outside_head(image, head, -1.0)
    np.testing.assert_array_equal(exact[head], image[head])
    assert np.all(exact[~head] == -1.0)


def test_fill_outside_head_refuses_what_would_erase_or_misplace_the_translation():
    image = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="empty"):
        fill_outside_head(image, np.zeros_like(image, bool), -1024.0)
    with pytest.raises(ValueError, match="shape"):
        fill_outside_head(image, np.ones((2, 8, 7), bool), -1024.0)
    with pytest.raises(ValueError, match="spacing"):
        fill_outside_head(image, np.ones_like(image, bool), -1024.0, margin_mm=2.0)
    with pytest.raises(ValueError, match="margin_mm"):
        FillOutsideHead(-1024.0, margin_mm=-1.0)
    with pytest.raises(ValueError, match="spacing"):
        widen_mask(np.ones((2, 8, 8), bool), (1.0, 1.0), 1.0)


def test_dictionary_twin_fills_each_key_outside_the_mask_of_the_item():
    head = np.zeros((3, 10, 10), bool)
    head[:, 3:7, 3:7] = True
    item = {"pred": np.full((3, 10, 10), 5.0, np.float32), "other": np.ones((3, 10, 10), np.float32),
            "mask": head, "spacing": (1.0, 1.0, 1.0)}
    out = FillOutsideHeadd("pred", "mask", background=-1.0, margin_mm=1.0, spacing_key="spacing")(item)
    expected = np.where(widen_mask(head, (1.0, 1.0, 1.0), 1.0), 5.0, -1.0)
    np.testing.assert_array_equal(out["pred"], expected)
    np.testing.assert_array_equal(out["other"], item["other"])  # other keys untouched
    assert item["pred"].max() == 5.0 and item["pred"].min() == 5.0  # the input dict is not modified


class Constant(nn.Module):
    """Outputs a constant 0.5 on the network scale everywhere: texture in the air, as a generator may."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return torch.zeros_like(x[:, :1]) + self.bias


def _ct_head(shape=(6, 32, 32), radius=9):
    volume = np.full(shape, -1000.0, np.float32)
    head = np.broadcast_to(_ball((1,) + shape[1:], (0, shape[1] // 2, shape[2] // 2), radius), shape)
    volume[head] = 40.0
    return volume, head


@pytest.mark.parametrize("on_network_scale", [False, True])
def test_volume_translator_writes_air_beyond_the_inputs_head_only_when_asked(on_network_scale):
    hu, head = _ct_head()
    source = IntensityMapping("ct", window={"center": 500.0, "width": 3000.0}, on_network_scale=on_network_scale)
    volume = source.to_network(hu) if on_network_scale else hu
    kwargs = dict(slice_size=32, device="cpu", source_intensity=source,
                  target_intensity=IntensityMapping("t2"))
    spacing = (1.0, 1.0, 2.0)  # (x, y, z)
    plain = VolumeTranslator(Constant(), "ct", "t2", **kwargs).translate_array(volume, spacing)
    np.testing.assert_allclose(plain, 0.5, atol=1e-5)  # the generator's value everywhere, air included
    filled = VolumeTranslator(Constant(), "ct", "t2", background_outside_head=True, head_margin_mm=2.0,
                              **kwargs).translate_array(volume, spacing)
    near = widen_mask(head, (2.0, 1.0, 1.0), 2.0)
    np.testing.assert_allclose(filled[near], 0.5, atol=1e-5)
    assert np.all(filled[~near] == IntensityMapping("t2").air_value)


def test_volume_translator_fills_a_synthetic_ct_with_air_in_hounsfield_units_and_uses_a_given_mask():
    t2 = np.zeros((4, 32, 32), np.float32)
    head = np.broadcast_to(_ball((1, 32, 32), (0, 16, 16), 8), t2.shape)
    t2[head] = 0.3
    translator = VolumeTranslator(Constant(), "t2", "ct", slice_size=32, device="cpu",
                                  source_intensity={"on_network_scale": True},
                                  target_intensity={"window": {"center": 500.0, "width": 3000.0}},
                                  background_outside_head=True, head_margin_mm=0.0)
    given = np.zeros_like(head)
    given[:, 10:20, 10:20] = True  # a mask other than the input's own: it is the one used
    out = translator.translate_array(t2, (1.0, 1.0, 1.0), mask=given)
    assert np.all(out[~given] == CT_AIR_HU)
    np.testing.assert_allclose(out[given], 0.5 * 1500.0 + 500.0, atol=0.5)  # 0.5 on [-1, 1] of -1000..2000 HU
    with pytest.raises(ValueError, match="head_margin_mm"):
        VolumeTranslator(Constant(), "t2", "ct", device="cpu", head_margin_mm=-1.0)
