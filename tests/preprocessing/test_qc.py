"""QC montages (preprocessing/qc.py)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from preprocessing.qc import (
    RegistrationView,
    artefact_montage,
    checkerboard,
    display_range,
    registration_montage,
    slice_strip,
)


def ball_image(shift_mm=(0.0, 0.0, 0.0), shape=(24, 32, 32), value=100.0) -> sitk.Image:
    z, y, x = np.indices(shape, dtype=float)
    spacing = (2.0, 2.0, 3.0)
    centre = [(n - 1) / 2 for n in shape]
    radius = np.sqrt(((x - centre[2]) * spacing[0] - shift_mm[0]) ** 2 + ((y - centre[1]) * spacing[1] - shift_mm[1]) ** 2
                     + ((z - centre[0]) * spacing[2] - shift_mm[2]) ** 2)
    array = np.where(radius < 22, value, 0.0) + np.where(radius < 10, value, 0.0)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    return image


def test_display_range_ignores_background():
    array = np.zeros((10, 10))
    array[2:8, 2:8] = np.linspace(100, 200, 36).reshape(6, 6)
    low, high = display_range(array)
    assert 100 <= low < high <= 200
    assert display_range(np.zeros((4, 4))) == (0.0, 1.0)


def test_checkerboard_alternates_tiles():
    a = np.tile(np.linspace(10.0, 20.0, 60), (60, 1))
    b = 500.0 - 3.0 * a.T
    scaled_a, scaled_b = checkerboard(a, a), checkerboard(b, b)
    board = checkerboard(a, b, tiles=6)
    tile_a = np.zeros((60, 60), dtype=bool)
    for row in range(6):
        for column in range(6):
            tile_a[10 * row : 10 * row + 10, 10 * column : 10 * column + 10] = (row + column) % 2 == 0
    np.testing.assert_array_equal(board[tile_a], scaled_a[tile_a])
    np.testing.assert_array_equal(board[~tile_a], scaled_b[~tile_a])
    assert 0.0 <= board.min() and board.max() <= 1.0 and scaled_a.max() > 0.9


def test_registration_montage_shows_the_reference_contour_off_before_and_on_after(tmp_path):
    reference = ball_image()
    before = ball_image(shift_mm=(12.0, 0.0, 0.0))
    path = registration_montage([RegistrationView("t1", reference, before, reference)], tmp_path / "reg.png", "sub-x")
    picture = imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 100
    # Red contour pixels are drawn in the "before" and "after" panels.
    red = (picture[..., 0] > 0.8) & (picture[..., 1] < 0.4) & (picture[..., 2] < 0.4)
    width = picture.shape[1]
    assert red[:, width // 4 : width // 2].sum() > 20 and red[:, width // 2 : 3 * width // 4].sum() > 20
    assert path.read_bytes() == registration_montage(
        [RegistrationView("t1", reference, before, reference)], tmp_path / "again.png", "sub-x").read_bytes()


def test_artefact_montage_and_slice_strip_write_pngs(tmp_path):
    ct = ball_image(value=500.0) - 1000.0
    mask = sitk.Cast(ball_image() > 50, sitk.sitkUInt8)
    masked = sitk.Mask(ct, mask, outsideValue=-1024)
    path = artefact_montage(ct, mask, masked, tmp_path / "qc" / "artefact.png", title="sub-x")
    picture = imread(path)
    yellow = (picture[..., 0] > 0.8) & (picture[..., 1] > 0.7) & (picture[..., 2] < 0.4)
    assert yellow.sum() > 20  # the mask outline
    strips = {"ct": [np.linspace(-1, 1, 64 * 64).reshape(64, 64)] * 10, "t1": [np.zeros((3, 64, 64))] * 3, "t2": []}
    strip = imread(slice_strip(strips, tmp_path / "strip.png", n_slices=4))
    assert strip.shape[1] > strip.shape[0]  # a wide strip: two rows of up to four slices
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.parametrize("n_slices", [1, 5])
def test_artefact_montage_slice_count(tmp_path, n_slices):
    ct = ball_image(value=500.0) - 1000.0
    mask = sitk.Cast(ball_image() > 50, sitk.sitkUInt8)
    picture = imread(artefact_montage(ct, mask, ct, tmp_path / "a.png", n_slices=n_slices))
    assert picture.shape[1] == pytest.approx(n_slices * 2.4 * 80, abs=2)
