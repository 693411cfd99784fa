"""Tests for CT windowing (preprocessing/windowing.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from preprocessing.windowing import (
    WINDOW_PRESETS,
    CTWindow,
    CTWindowd,
    InverseCTWindow,
    InverseCTWindowd,
    WindowPreset,
    get_window,
    hu_to_window,
    hu_to_windows,
    window_to_hu,
)

EXPECTED_PRESETS = {
    "brain": (40, 80),
    "subdural": (80, 200),
    "stroke": (40, 40),
    "bone": (600, 2800),
    "soft_tissue": (40, 400),
}


def test_presets_have_the_standard_levels_and_widths():
    assert {name: (p.center, p.width) for name, p in WINDOW_PRESETS.items()} == EXPECTED_PRESETS


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
@pytest.mark.parametrize("out_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_window_edges_map_to_the_range_ends_and_outside_is_clipped(name, out_range):
    center, width = EXPECTED_PRESETS[name]
    low, high = center - width / 2, center + width / 2
    hu = np.array([low - 1000, low, center, high, high + 1000], dtype=np.float32)
    out = hu_to_window(hu, name, out_range)
    middle = (out_range[0] + out_range[1]) / 2
    np.testing.assert_allclose(out, [out_range[0], out_range[0], middle, out_range[1], out_range[1]], atol=1e-6)


def test_brain_window_of_known_values():
    hu = np.array([-1000, 0, 20, 40, 60, 80, 2000], dtype=np.int16)
    np.testing.assert_allclose(hu_to_window(hu, "brain"), [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)


def test_custom_window_from_mapping_and_pair():
    assert get_window({"center": 50, "width": 350}) == WindowPreset("custom", 50.0, 350.0)
    assert get_window({"name": "liver", "center": 60, "width": 160}).lower == -20
    assert get_window((300, 1500)).upper == 1050
    assert get_window("Soft Tissue") is WINDOW_PRESETS["soft_tissue"]


def test_unknown_or_invalid_windows_raise_clear_errors():
    with pytest.raises(ValueError, match=r"unknown CT window preset 'lung'.*brain"):
        get_window("lung")
    with pytest.raises(ValueError, match="lacks width"):
        get_window({"center": 40})
    with pytest.raises(ValueError, match="positive"):
        get_window({"center": 40, "width": 0})


def test_torch_input_stays_torch_on_its_device_and_matches_numpy():
    hu = np.linspace(-1500, 2500, 101, dtype=np.float32)
    out_t = hu_to_window(torch.from_numpy(hu), "subdural", (-1, 1))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_t.numpy(), hu_to_window(hu, "subdural", (-1, 1)), atol=1e-6)


@pytest.mark.parametrize("out_range", [(0.0, 1.0), (-1.0, 1.0)])
def test_round_trip_is_exact_inside_the_window_and_clips_outside(out_range):
    rng = np.random.default_rng(0)
    hu = rng.uniform(-100, 300, size=(8, 9, 10))  # float64: exact to 1e-9 HU
    window = "subdural"  # -20 .. 180 HU
    back = window_to_hu(hu_to_window(hu, window, out_range), window, out_range)
    inside = (hu >= -20) & (hu <= 180)
    assert inside.any() and (~inside).any()
    np.testing.assert_allclose(back[inside], hu[inside], atol=1e-9)
    np.testing.assert_allclose(back[~inside], np.clip(hu[~inside], -20, 180), atol=1e-9)
    # a network output overshooting the range maps to the window edges
    np.testing.assert_allclose(window_to_hu(np.array([out_range[0] - 0.5, out_range[1] + 0.5]), window, out_range), [-20, 180])


def test_multi_window_stack_has_the_given_channel_order():
    hu = np.random.default_rng(1).uniform(-1200, 2500, size=(6, 7)).astype(np.float32)
    windows = ["bone", "brain", {"center": 80, "width": 200}]
    stack = hu_to_windows(hu, windows, (-1, 1))
    assert stack.shape == (3, 6, 7)
    for channel, window in enumerate(windows):
        np.testing.assert_array_equal(stack[channel], hu_to_window(hu, window, (-1, 1)))


def test_ct_window_transform_stacks_channels_and_inverse_transform_restores_hu():
    hu = np.random.default_rng(2).uniform(-10, 90, size=(1, 5, 6, 7)).astype(np.float32)
    forward = CTWindow(["brain", "stroke", "bone"], out_range=(-1, 1))
    stack = forward(hu)
    assert stack.shape == (3, 5, 6, 7)
    np.testing.assert_array_equal(stack[1], hu_to_window(hu[0], "stroke", (-1, 1)))
    back = InverseCTWindow(["brain", "stroke", "bone"], in_range=(-1, 1))(stack)
    np.testing.assert_allclose(back[0], np.clip(hu[0], 0, 80), atol=1e-4)
    np.testing.assert_allclose(back[1], np.clip(hu[0], 20, 60), atol=1e-4)
    np.testing.assert_allclose(back[2], hu[0], atol=2e-3)  # bone window: 2800 HU over [-1, 1] in float32
    with pytest.raises(ValueError, match="single-channel"):
        forward(np.zeros((2, 4, 4), dtype=np.float32))


def test_dictionary_twins_equal_the_array_transforms():
    hu = torch.from_numpy(np.random.default_rng(3).uniform(-1100, 1800, size=(1, 4, 5, 6)).astype(np.float32))
    windows = ["subdural", "soft_tissue"]
    out = CTWindowd(["ct", "other"], windows, (0, 1))({"ct": hu, "other": hu * 0.5, "label": 7})
    assert out["label"] == 7
    torch.testing.assert_close(out["ct"], CTWindow(windows, (0, 1))(hu))
    torch.testing.assert_close(out["other"], CTWindow(windows, (0, 1))(hu * 0.5))
    back = InverseCTWindowd("ct", windows, (0, 1))(out)
    torch.testing.assert_close(back["ct"], InverseCTWindow(windows, (0, 1))(out["ct"]))


def test_invertd_maps_a_prediction_back_to_hu_through_the_recorded_windows():
    hu = MetaTensor(torch.linspace(0, 80, 24).reshape(1, 2, 3, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    preprocessing = Compose([CTWindowd("image", "brain", (-1, 1))])
    data = preprocessing({"image": hu})
    assert data["image"].min() == -1 and data["image"].max() == 1
    data["pred"] = data["image"].clone()  # a prediction inherits the image's trace
    restored = Invertd("pred", preprocessing, orig_keys="image")(data)["pred"]
    torch.testing.assert_close(restored.as_tensor(), hu.as_tensor(), atol=1e-4, rtol=0)
    torch.testing.assert_close(restored.affine, hu.affine)
