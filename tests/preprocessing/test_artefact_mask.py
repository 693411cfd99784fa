"""Tests of the CT head-holder mask on a synthetic 64^3 CT: a head on a holder plate and a couch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from preprocessing.artefact_mask import (
    ArtefactMaskd,
    apply_artefact_mask,
    build_artefact_mask,
    measure_artefact_removal,
)

SCALP_HU, SKULL_HU, BRAIN_HU = 40.0, 1200.0, 35.0
PLATE_HU, COUCH_HU, PAD_HU = 950.0, 700.0, 900.0
N = 64
HEAD_CENTRE = (N // 2, int(N * 0.4), N // 2)  # [z, y, x]; +y is posterior, towards the couch


def ct_phantom(with_holder: bool = True, noise_hu: float = 10.0, seed: int = 0, shape=(N, N, N)):
    """CT [z, y, x] in HU with truth masks of the head and of the holder (plate + pads + couch).

    The head is an ellipsoid (scalp, skull, brain). Behind it (+y) a curved plate, 3 voxels away
    and 2 voxels thick, spans the whole z range and rests on a 6-voxel couch slab; three small
    pads bridge the gap between scalp and plate. (``benchmarks/bench_registration.py`` times the
    mask on a 150x256x256 version.)
    """
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    cz, cy, cx = shape[0] / 2, shape[1] * 0.40, shape[2] / 2
    az, ay, ax = min(shape[0] * 0.45, shape[1] * 0.34), shape[1] * 0.31, shape[2] * 0.27
    radius = np.sqrt(((z - cz) / az) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2)
    head = radius < 1.0
    ct = np.full(shape, -1000.0)
    ct[head] = SCALP_HU
    ct[radius < 1 - 2.0 / ay] = SKULL_HU
    ct[radius < 1 - 4.5 / ay] = BRAIN_HU
    holder = np.zeros_like(head)
    if with_holder:
        gap, thickness = 3.0, 2.0
        around = np.sqrt(((y - cy) / (ay + gap)) ** 2 + ((x - cx) / (ax + gap)) ** 2)
        plate = (around >= 1.0) & (around < 1.0 + thickness / (ay + gap)) & (y > cy) & ~head
        couch_top = cy + ay + gap + thickness - 0.5
        couch = (y >= couch_top) & (y < couch_top + 6) & ~plate & ~head
        angle = np.degrees(np.arctan2(x - cx, y - cy))
        pads = np.zeros_like(head)
        for pad_angle, pad_z in zip((-35.0, 0.0, 35.0), (cz - 6, cz + 2, cz + 7)):
            pads |= (np.abs(angle - pad_angle) < 3.5) & (np.abs(z - pad_z) < 1.6) & (around < 1.0) & (y > cy) & ~head
        ct[couch], ct[plate], ct[pads] = COUCH_HU, PLATE_HU, PAD_HU
        holder = plate | couch | pads
        assert pads.sum() > 0 and (ndimage.binary_dilation(pads) & head).any(), "pads must touch the scalp"
    ct += np.random.default_rng(seed).normal(0.0, noise_hu, ct.shape)
    return ct.astype(np.float32), head, holder


def reference_mask(ct: np.ndarray, n: int, margin: int, threshold_hu: float = -300.0) -> np.ndarray:
    """The procedure written with scipy's iterated morphology, independently of the module."""
    body = ct > threshold_hu
    # border_value=1: the volume edge is not background (the couch continues beyond it).
    eroded = ndimage.binary_erosion(body, iterations=n, border_value=1) if n else body
    labels, _ = ndimage.label(eroded)
    head = labels == labels[HEAD_CENTRE]
    grown = ndimage.binary_dilation(head, iterations=n + margin) if n + margin else head
    return ndimage.binary_fill_holes(grown)


def smallest_separating_n(ct: np.ndarray, holder: np.ndarray, threshold_hu: float = -300.0) -> int:
    body = ct > threshold_hu
    for n in range(0, 20):
        eroded = ndimage.binary_erosion(body, iterations=n, border_value=1) if n else body
        labels, _ = ndimage.label(eroded)
        if not (labels == labels[HEAD_CENTRE])[holder].any():
            return n
    raise AssertionError("the phantom never separates")


@pytest.fixture(scope="module")
def phantom():
    return ct_phantom()


def test_phantom_holder_is_joined_to_head_at_soft_tissue_threshold(phantom):
    ct, head, holder = phantom
    labels, _ = ndimage.label(ct > -300)
    assert (labels == labels[HEAD_CENTRE])[holder].sum() == holder.sum()  # one object before erosion
    assert smallest_separating_n(ct, holder) >= 1


def test_automatic_mask_removes_holder_and_keeps_head(phantom):
    ct, head, holder = phantom
    mask, info = build_artefact_mask(ct)
    figures = measure_artefact_removal(mask, head, holder)
    assert figures["artefact_remaining_fraction"] < 0.01
    assert figures["head_lost_fraction"] < 0.005
    assert info["automatic"] is True
    assert info["mask_voxels"] == int(mask.sum())
    assert tuple(info["seed"]) != (0, 0, 0) and head[tuple(info["seed"])]


def test_automatic_n_is_smallest_that_separates(phantom):
    ct, head, holder = phantom
    expected = smallest_separating_n(ct, holder)
    _, info = build_artefact_mask(ct)
    assert info["n_erosions"] == expected
    # Every smaller n examined still had the holder in the head component, which was larger.
    sizes = info["component_voxels"]
    assert sizes[expected] == info["head_component_voxels"]
    assert all(sizes[n] > sizes[expected] for n in sizes if n < expected)


@pytest.mark.parametrize("n", [1, 3])
def test_given_n_is_honoured_and_matches_iterated_morphology(phantom, n):
    ct, _, _ = phantom
    mask, info = build_artefact_mask(ct, n_erosions=n, margin=2)
    assert info["n_erosions"] == n and info["automatic"] is False
    np.testing.assert_array_equal(mask, reference_mask(ct, n, margin=2))


def test_too_few_erosions_leave_the_holder(phantom):
    ct, head, holder = phantom
    n = smallest_separating_n(ct, holder) - 1
    mask, _ = build_artefact_mask(ct, n_erosions=n)
    assert measure_artefact_removal(mask, head, holder)["artefact_remaining_fraction"] > 0.3


def test_volume_without_holder_is_left_intact():
    ct, head, _ = ct_phantom(with_holder=False)
    mask, info = build_artefact_mask(ct)
    masked = apply_artefact_mask(ct, mask)
    assert info["n_erosions"] == 0 and info["artefact_voxels"] == 0
    assert mask[head].all()
    np.testing.assert_array_equal(masked[head], ct[head])
    # Only air (within the noise) was replaced.
    assert np.abs(ct[~mask] + 1000.0).max() < 100.0


def test_bone_threshold_loses_the_scalp_that_soft_tissue_threshold_keeps(phantom):
    """Why the default threshold is -300 HU: a bone threshold keeps only the skull shell."""
    ct, head, holder = phantom
    soft = measure_artefact_removal(build_artefact_mask(ct, threshold_hu=-300.0)[0], head, holder)
    bone_mask, bone_info = build_artefact_mask(ct, threshold_hu=300.0)
    bone = measure_artefact_removal(bone_mask, head, holder)
    assert bone_info["n_erosions"] == 0  # the skull never touches the holder: nothing to erode
    assert bone["head_lost_fraction"] > 0.02 > 0.005 > soft["head_lost_fraction"]


def test_slicewise_fill_closes_a_cavity_open_at_the_top(phantom):
    ct, head, holder = phantom
    ct = ct.copy()
    # A 9-voxel-wide air channel from the head centre out through the top of the head, wider
    # than the opening (2 erosions, 4 dilations) can close: open in 3D, enclosed in each slice.
    channel = np.zeros_like(head)
    channel[HEAD_CENTRE[0]:, HEAD_CENTRE[1] - 4:HEAD_CENTRE[1] + 5, HEAD_CENTRE[2] - 4:HEAD_CENTRE[2] + 5] = True
    ct[channel] = -1000.0
    core = np.zeros_like(head)
    # The channel's core, above its floor (which the dilation closes from below).
    core[HEAD_CENTRE[0] + 4:, HEAD_CENTRE[1] - 1:HEAD_CENTRE[1] + 2, HEAD_CENTRE[2] - 1:HEAD_CENTRE[2] + 2] = True
    deep = channel & core & (ndimage.distance_transform_edt(head) > 6)
    mask_3d, _ = build_artefact_mask(ct, n_erosions=2, fill="3d")
    mask_slices, _ = build_artefact_mask(ct, n_erosions=2, fill="slicewise", slice_axis=0)
    assert not mask_3d[deep].any()
    assert mask_slices[deep].all()


def test_apply_sets_outside_to_air_and_keeps_dtype():
    ct = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    mask = ct % 2 == 0
    out = apply_artefact_mask(ct, mask, outside_hu=-1024)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out[mask], ct[mask])
    assert (out[~mask] == -1024).all()
    with pytest.raises(ValueError, match="mask shape"):
        apply_artefact_mask(ct, mask[0])


def test_measure_artefact_removal_counts():
    head = np.zeros((4, 4, 4), bool)
    head[:2] = True
    holder = np.zeros_like(head)
    holder[3] = True
    mask = head.copy()
    mask[0, 0, 0] = False  # one head voxel lost
    mask[3, 0, :2] = True  # two holder voxels kept
    figures = measure_artefact_removal(mask, head, holder)
    assert figures == {
        "artefact_remaining_fraction": 2 / 16,
        "head_lost_fraction": 1 / 32,
        "artefact_voxels": 16,
        "artefact_remaining_voxels": 2,
        "head_voxels": 32,
        "head_lost_voxels": 1,
    }


def test_unseparable_holder_raises(phantom):
    ct, _, _ = phantom
    with pytest.raises(ValueError, match="still joined to the head after 1 erosions"):
        build_artefact_mask(ct, max_erosions=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"fill": "2d"}, "fill must be"),
    ({"structure": "ball"}, "structure must be"),
    ({"n_erosions": -1}, ">= 0"),
])
def test_bad_parameters_raise(phantom, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_artefact_mask(phantom[0], **kwargs)


def test_nothing_above_threshold_raises():
    with pytest.raises(ValueError, match="no voxel above the threshold"):
        build_artefact_mask(np.full((8, 8, 8), -1000.0))


def test_dictionary_transform_reference_mode_applies_one_mask_to_all_keys(phantom):
    ct, head, holder = phantom
    other = ct + 5.0  # a second registered CT
    data = {"ct_ref": MetaTensor(torch.from_numpy(ct[None])), "ct_b": other[None].copy()}
    out = ArtefactMaskd(keys=["ct_ref", "ct_b"], source_key="ct_ref", mask_key="holder_mask", slice_axis=0)(data)
    expected_mask, info = build_artefact_mask(ct)
    assert isinstance(out["ct_ref"], MetaTensor) and out["ct_ref"].shape == (1, N, N, N)
    assert isinstance(out["ct_b"], np.ndarray) and out["ct_b"].shape == (1, N, N, N)
    np.testing.assert_array_equal(out["holder_mask"][0], expected_mask.astype(np.uint8))
    assert out["holder_mask_info"]["n_erosions"] == info["n_erosions"]
    np.testing.assert_array_equal(out["ct_ref"][0].numpy(), apply_artefact_mask(ct, expected_mask))
    np.testing.assert_array_equal(out["ct_b"][0], apply_artefact_mask(other, expected_mask))


def test_dictionary_transform_uses_a_given_mask_and_per_image_mode(phantom):
    ct, head, holder = phantom
    given = np.zeros((1, N, N, N), np.uint8)
    given[0, :, :, : N // 2] = 1
    out = ArtefactMaskd(keys="ct", mask_key="m", outside_hu=-1024.0)({"ct": ct.copy(), "m": given})
    assert (out["ct"][:, :, N // 2:] == -1024.0).all()
    np.testing.assert_array_equal(out["ct"][:, :, : N // 2], ct[:, :, : N // 2])

    per_image = ArtefactMaskd(keys=["a", "b"], slice_axis=0)({"a": ct.copy(), "b": ct_phantom(with_holder=False)[0]})
    assert measure_artefact_removal(per_image["a"] > -1000.0, head, holder)["artefact_remaining_fraction"] < 0.01
    assert (per_image["b"][head] > -1000.0).mean() > 0.99
