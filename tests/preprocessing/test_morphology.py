"""Shared binary-mask helpers: the same results as the library operations they replace."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from scipy import ndimage

from preprocessing.morphology import bounding_box, dilate, erode, fill_holes, labels, reaching_edge, touching


def _random_masks(shape, count=6):
    rng = np.random.default_rng(3)
    for _ in range(count):
        # Smoothed noise gives blobs with enclosed holes and cavities open to the border.
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
        yield field > rng.uniform(-0.1, 0.1)


@pytest.mark.parametrize("shape", [(24, 30, 20), (40, 36)])
def test_fill_holes_matches_scipy(shape):
    for mask in _random_masks(shape):
        # scipy propagates face-connected background from the border, as fill_holes labels it.
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slicewise_fill_matches_each_slice_filled(axis):
    for mask in _random_masks((18, 22, 16)):
        expected = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)])
        assert np.array_equal(fill_holes(mask, slice_axis=axis), np.moveaxis(expected, 0, axis))


def test_fill_holes_fills_an_enclosed_cavity_only():
    shell = np.zeros((9, 9, 9), bool)
    shell[1:8, 1:8, 1:8] = True
    shell[3:6, 3:6, 3:6] = False          # enclosed cavity
    open_cup = shell.copy()
    open_cup[3:6, 3:6, 3:9] = False       # the same cavity opened through a face
    assert fill_holes(shell)[4, 4, 4] and fill_holes(shell).sum() == 7**3
    assert not fill_holes(open_cup)[4, 4, 4]
    # The opening runs along the last axis: slices across it close, slices along it do not.
    assert fill_holes(open_cup, slice_axis=2)[4, 4, 4]
    assert not fill_holes(open_cup, slice_axis=0)[4, 4, 4]


def test_touching_reaching_edge_and_bounding_box():
    mask = np.zeros((5, 6, 7), bool)
    mask[2, 3, 4] = True
    neighbours = touching(mask)
    assert neighbours.sum() == 6 and not neighbours[2, 3, 4] and neighbours[1, 3, 4] and neighbours[2, 3, 5]
    blobs = np.zeros((6, 6), bool)
    blobs[0:2, 0:2] = True   # touches the border
    blobs[3:5, 3:5] = True   # inside
    reach = reaching_edge(labels(blobs, fully_connected=False), (0, 1))
    assert reach[0, 0] and not reach[4, 4] and reach.sum() == 4
    assert bounding_box(mask, pad=1) == (slice(1, 4), slice(2, 5), slice(3, 6))
    assert bounding_box(mask, pad=9) == (slice(0, 5), slice(0, 6), slice(0, 7))


@pytest.mark.parametrize("fully_connected, metric", [(False, "taxicab"), (True, "chessboard")])
def test_erode_and_dilate_match_distance_maps(fully_connected, metric):
    """n erosions keep what lies deeper than n, n dilations reach n; the array's border neither erodes nor dilates."""
    rng = np.random.default_rng(4)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((19, 23, 17)) > 0.3)
        mask[:, :, 0] = True  # touching the border
        depth = ndimage.distance_transform_cdt(mask, metric=metric)
        reach = ndimage.distance_transform_cdt(~mask, metric=metric)
        for n in range(4):
            np.testing.assert_array_equal(erode(mask, n, fully_connected), depth > n)
            np.testing.assert_array_equal(dilate(mask, n, fully_connected), reach <= n)


def test_labels_are_a_read_only_view_that_keeps_its_image_alive():
    mask = np.zeros((4, 5, 6), bool)
    mask[0, 0, :2] = mask[3, 4, 4:] = True
    label_map = labels(mask, fully_connected=False)
    # Were the label image freed with the function's locals, these allocations could reuse its buffer.
    gc.collect()
    scratch = [np.full(mask.shape, 7, np.uint32) for _ in range(16)]
    assert not label_map.flags.writeable
    np.testing.assert_array_equal(label_map > 0, mask)
    assert label_map[0, 0, 0] == label_map[0, 0, 1] != label_map[3, 4, 4] == label_map[3, 4, 5]
    assert sorted(np.unique(label_map).tolist()) == [0, 1, 2] and len(scratch) == 16
