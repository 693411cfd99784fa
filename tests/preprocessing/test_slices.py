"""Tests for slice extraction and its inverse (preprocessing/slices.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medgan_common.errors import InputReadError, PreprocessingError
from preprocessing.slices import (
    SliceGeometry,
    SliceSelection,
    extract_slices,
    paste_slices,
    read_slice_index,
    resolve_axis,
    restore_slice,
    save_slices,
    select_slices,
    selection_record,
    slice_index_path,
    slice_loader,
)

SHAPE = (30, 40, 48)  # [z, y, x]


def smooth_volume(shape=SHAPE):
    """Gaussian blobs fading to 0 at the borders (like a head in its field of view): smooth
    enough that resampling errors stay small, and equal to the padding value at the edges."""
    grids = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    volume = np.zeros(shape)
    for center, width, amplitude in [((15, 20, 24), 3.5, 1.0), ((13, 17, 28), 3.0, 0.6), ((17, 23, 19), 2.5, -0.5)]:
        volume += amplitude * np.exp(-sum((g - c) ** 2 for g, c in zip(grids, center)) / (2 * width**2))
    return volume.astype(np.float32)


def disk(shape, center, radii):
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return ((rows - center[0]) / radii[0]) ** 2 + ((columns - center[1]) / radii[1]) ** 2 <= 1.0


def test_axis_names_and_numbers():
    assert [resolve_axis(a) for a in ("axial", "coronal", "sagittal", 0, 1, 2)] == [0, 1, 2, 0, 1, 2]
    # A volume stored sagittal-first: array axis 0 (SimpleITK axis z) runs along patient Left.
    sagittal_first = (0, 0, 1, 0, 1, 0, 1, 0, 0)
    assert resolve_axis("sagittal", sagittal_first) == 0
    assert resolve_axis("axial", sagittal_first) == 2
    with pytest.raises(ValueError, match="unknown slice axis 'oblique'"):
        resolve_axis("oblique")
    with pytest.raises(ValueError, match="must be 0, 1 or 2"):
        resolve_axis(3)


def test_selection_modes_give_the_expected_indices():
    shape = (10, 4, 4)
    assert select_slices(shape, 0) == list(range(10))
    assert select_slices(shape, 0, {"mode": "indices", "indices": [7, 2, 2]}) == [2, 7]
    assert select_slices(shape, 0, {"mode": "middle", "count": 4}) == [3, 4, 5, 6]
    assert select_slices(shape, 0, {"mode": "middle", "count": 3}) == [3, 4, 5]
    assert select_slices(shape, 0, {"mode": "range", "start": 2, "stop": 5}) == [2, 3, 4]
    assert select_slices(shape, 0, {"mode": "range", "start": 7}) == [7, 8, 9]
    assert select_slices((4, 6, 4), 1, SliceSelection("middle", count=2)) == [2, 3]


def test_middle_slices_by_first_and_last_keep_that_range_whole():
    """The seed's pix2pix data: of each 150-slice T1 the middle slices 90 to 109 (20 slices)."""
    assert select_slices((150, 8, 8), 0, {"mode": "middle", "first": 90, "last": 109}) == list(range(90, 110))
    assert select_slices((4, 6, 10), 2, SliceSelection("middle", first=9, last=9)) == [9]
    assert select_slices((10, 4, 4), 0, {"mode": "middle"}) == [4]  # count 1 when neither is given
    with pytest.raises(PreprocessingError, match="middle slices 90 to 109 asked, the volume has 100 along axis 0"):
        select_slices((100, 8, 8), 0, {"mode": "middle", "first": 90, "last": 109})
    for rule, message in (({"first": 90}, "needs both first and last"),
                          ({"first": 9, "last": 3}, "0 <= first <= last"),
                          ({"first": 1, "last": 3, "count": 3}, "count, or first and last, not both"),
                          ({"count": 0}, "count >= 1")):
        with pytest.raises(ValueError, match=message):
            SliceSelection.from_config({"mode": "middle", **rule})


def test_the_slice_index_records_the_selection_and_the_range_it_chose(tmp_path):
    rule = {"mode": "middle", "first": 10, "last": 14}
    slices, geometries = extract_slices(smooth_volume(), "axial", rule, output_shape=(32, 32))
    record = selection_record({**rule, "fraction": 0.6}, geometries)  # a field "middle" does not use is left out
    assert record == {"rule": rule, "first": 10, "last": 14, "count": 5, "slices_along_axis": SHAPE[0]}
    assert SliceSelection.from_config({"mode": "middle"}).to_config() == {"mode": "middle", "count": 1}
    paths = save_slices(slices, geometries, tmp_path, "sub-01", selection=record)
    assert json.loads(paths[-1].read_text())["selection"] == record
    assert [g.index for _, g in read_slice_index(paths[-1])] == [10, 11, 12, 13, 14]
    _, fraction = extract_slices(smooth_volume(), 0, {"mode": "head_fraction", "fraction": 0.5},
                                 smooth_volume() > 0.05, output_shape=(32, 32))
    chosen = selection_record(SliceSelection("head_fraction", fraction=0.5), fraction)
    assert chosen["rule"] == {"mode": "head_fraction", "fraction": 0.5}  # the fields its mode uses
    assert (chosen["first"], chosen["last"]) == (fraction[0].index, fraction[-1].index) and chosen["count"] == len(fraction)


def test_head_fraction_keeps_the_central_part_of_the_head_extent():
    mask = np.zeros((40, 8, 8), dtype=bool)
    mask[10:30, 3:5, 3:5] = True  # head in slices 10..29 (20 slices)
    mask[20, 0, 0] = True
    assert select_slices(mask.shape, 0, {"mode": "head_fraction", "fraction": 0.6}, mask) == list(range(14, 26))
    assert select_slices(mask.shape, 0, {"mode": "head_fraction", "fraction": 1.0}, mask) == list(range(10, 30))
    assert select_slices(mask.shape, 1, {"mode": "head_fraction", "fraction": 0.5}, mask) == [1, 2, 3]


def test_selection_errors_say_what_is_wrong():
    with pytest.raises(PreprocessingError, match=r"slice indices \[12\] lie outside the 10 slices"):
        select_slices((10, 4, 4), 0, {"mode": "indices", "indices": [3, 12]})
    with pytest.raises(PreprocessingError, match="12 middle slices asked, the volume has 10"):
        select_slices((10, 4, 4), 0, {"mode": "middle", "count": 12})
    with pytest.raises(PreprocessingError, match="does not fit"):
        select_slices((10, 4, 4), 0, {"mode": "range", "start": 5, "stop": 11})
    with pytest.raises(PreprocessingError, match="needs a head mask"):
        select_slices((10, 4, 4), 0, {"mode": "head_fraction"})
    with pytest.raises(PreprocessingError, match="head mask is empty"):
        select_slices((10, 4, 4), 0, {"mode": "head_fraction"}, np.zeros((10, 4, 4), bool))
    with pytest.raises(ValueError, match="unknown slice selection option"):
        SliceSelection.from_config({"mode": "middle", "n": 3})
    with pytest.raises(ValueError, match="unknown slice selection mode"):
        SliceSelection("random")


def test_aspect_ratio_is_kept_a_disk_stays_a_disk():
    # one axial slice of 40 rows x 64 columns holding a disk of radius 12 pixels
    volume = np.zeros((3, 40, 64), dtype=np.float32)
    volume[1][disk((40, 64), (20, 40), (12, 12))] = 1.0
    slices, geometries = extract_slices(volume, 0, {"mode": "indices", "indices": [1]}, output_shape=(128, 128))
    geometry = geometries[0]
    assert geometry.padding == ((12, 12), (0, 0)) and geometry.scale == (2.0, 2.0)
    resized = slices[0] > 0.5
    rows, columns = np.nonzero(resized)
    height, width = rows.max() - rows.min() + 1, columns.max() - columns.min() + 1
    assert abs(height - width) <= 1 and abs(height - 48) <= 2
    assert abs(resized.sum() - np.pi * 24**2) / (np.pi * 24**2) < 0.03
    # centre moves by the padding, then scales
    assert abs(rows.mean() - ((20 + 12 + 0.5) * 2 - 0.5)) < 0.5 and abs(columns.mean() - (40.5 * 2 - 0.5)) < 0.5


def test_anisotropic_pixels_are_padded_and_resized_in_millimetres():
    # rows 2 mm apart, columns 1 mm: an ellipse of 6 x 12 pixels is a 24 mm disk
    volume = np.zeros((40, 2, 48), dtype=np.float32)  # coronal slices: (z, x) = 40 x 48 pixels = 80 x 48 mm
    volume[:, 1, :][disk((40, 48), (20, 24), (6, 12))] = 1.0
    slices, geometries = extract_slices(
        volume, "coronal", {"mode": "indices", "indices": [1]}, output_shape=(64, 64), spacing=(1.0, 1.0, 2.0)
    )
    assert geometries[0].padded_shape == (40, 80)
    rows, columns = np.nonzero(slices[0] > 0.5)
    assert abs((rows.max() - rows.min()) - (columns.max() - columns.min())) <= 1


def test_neighbour_channels_equal_the_neighbouring_slices_with_replicated_edges():
    volume = smooth_volume()
    slices, geometries = extract_slices(volume, "sagittal", {"mode": "indices", "indices": [0, 20, 47]}, neighbours=2, output_shape=(40, 40))
    assert [s.shape for s in slices] == [(5, 40, 40)] * 3
    # 30 x 40 sagittal slices are padded to 40 x 40 without resizing: channels are the raw slices
    (top, _), _ = geometries[0].padding
    assert geometries[0].scale == (1.0, 1.0) and top == 5
    for stack, centre in zip(slices, [0, 20, 47]):
        for channel, offset in enumerate(range(-2, 3)):
            neighbour = min(max(centre + offset, 0), 47)
            np.testing.assert_array_equal(stack[channel, 5:35, :], volume[:, :, neighbour])
    # with resizing, every channel equals the resized plain slice of that neighbour
    resized, _ = extract_slices(volume, 0, {"mode": "indices", "indices": [10]}, neighbours=1, output_shape=(64, 64))
    plain, _ = extract_slices(volume, 0, {"mode": "indices", "indices": [9, 10, 11]}, output_shape=(64, 64))
    np.testing.assert_allclose(resized[0], np.stack(plain), atol=1e-6)


def test_intensity_scaling_and_default_pad_value():
    volume = np.linspace(-1500, 2500, 30 * 20 * 40, dtype=np.float32).reshape(30, 20, 40)
    slices, geometries = extract_slices(volume, 0, {"mode": "indices", "indices": [15]}, output_shape=(40, 40), intensity_range=(-1000, 2000))
    image = slices[0]
    assert geometries[0].pad_value == -1.0 and (image[:10] == -1.0).all() and (image[30:] == -1.0).all()
    expected = np.clip((volume[15] + 1000) / 3000 * 2 - 1, -1, 1)
    np.testing.assert_allclose(image[10:30], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("axes", "output_shape", "interpolation", "tolerance"),
    [
        ((0,), (48, 48), "bilinear", 1e-6),  # 40 x 48 slices: padding only, exact
        ((0, 1, 2), (128, 128), "bilinear", 0.02),  # enlarged ~3x, restored by shrinking
        ((0, 1, 2), (128, 128), "bicubic", 0.005),
        ((0, 1, 2), (32, 32), "bicubic", 0.04),  # shrunk: detail below the output grid is lost
    ],
)
def test_restore_inverts_extraction_within_the_interpolation_error(axes, output_shape, interpolation, tolerance):
    volume = smooth_volume()  # values in about [-0.5, 1]
    for axis in axes:
        slices, geometries = extract_slices(
            volume, axis, {"mode": "middle", "count": 2}, output_shape=output_shape, interpolation=interpolation
        )
        for slice2d, geometry in zip(slices, geometries):
            restored = restore_slice(slice2d, geometry)
            original = np.take(volume, geometry.index, axis=axis)
            assert restored.shape == original.shape
            assert np.abs(restored - original).max() < tolerance


def test_paste_slices_rebuilds_the_volume_and_its_geometry():
    volume = smooth_volume()
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-10.0, 20.0, 5.0))
    slices, geometries = extract_slices(image, "coronal", output_shape=(96, 96))
    pasted = paste_slices(slices, geometries, as_image=True)
    assert pasted.GetSpacing() == image.GetSpacing() and pasted.GetOrigin() == image.GetOrigin()
    restored = np.stack([restore_slice(s, g) for s, g in zip(slices, geometries)], axis=1)
    np.testing.assert_allclose(sitk.GetArrayFromImage(pasted), restored, atol=1e-6)
    assert np.abs(restored - volume).max() < 0.03  # bilinear, enlarged 2x and shrunk back
    partial = paste_slices(slices[5:7], geometries[5:7], fill_value=-7.0)
    assert (partial[:, :5] == -7.0).all() and (partial[:, 7:] == -7.0).all()
    np.testing.assert_array_equal(partial[:, 5:7], restored[:, 5:7])
    with pytest.raises(ValueError, match="recorded output shape"):
        restore_slice(np.zeros((10, 10)), geometries[0])


def test_geometry_is_json_serialisable_and_maps_pixels_to_patient_space():
    image = sitk.GetImageFromArray(smooth_volume())
    image.SetSpacing((0.8, 1.2, 2.0))
    image.SetOrigin((12.0, -30.0, 40.0))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # a rotated acquisition
    _, geometries = extract_slices(image, 0, {"mode": "indices", "indices": [7]}, neighbours=1, output_shape=(96, 96))
    geometry = geometries[0]
    assert SliceGeometry.from_dict(json.loads(json.dumps(geometry.to_dict()))) == geometry
    # output pixel (u, v) of channel 1 samples padded pixel (u + 0.5) / scale - 0.5 of slice 7
    (top, _), (left, _) = geometry.padding
    matrix = geometry.index_to_physical()
    for u, v in [(0, 0), (50, 20), (95, 95)]:
        row = (u + 0.5) / geometry.scale[0] - 0.5 - top
        column = (v + 0.5) / geometry.scale[1] - 0.5 - left
        expected = image.TransformContinuousIndexToPhysicalPoint((column, row, 7.0))
        np.testing.assert_allclose((matrix @ [u, v, 1, 1])[:3], expected, atol=1e-9)


@pytest.mark.parametrize("neighbours", [0, 1])
def test_saved_slices_load_back_with_monai_to_the_same_values_and_shape(tmp_path, neighbours):
    volume = smooth_volume()
    slices, geometries = extract_slices(volume, "axial", {"mode": "middle", "count": 3}, neighbours=neighbours, output_shape=(64, 64))
    paths = save_slices(slices, geometries, tmp_path / "out", "sub-01")
    assert paths[-1] == slice_index_path(tmp_path / "out", "sub-01")
    assert [p.name for p in paths[:-1]] == [f"sub-01_axial_{i:04d}.nii.gz" for i in (13, 14, 15)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)  # no temporary files left
    loader = slice_loader(neighbours)
    for path, slice_array, geometry in zip(paths, slices, geometries):
        loaded = loader(str(path))
        expected = slice_array if neighbours else slice_array[None]
        assert tuple(loaded.shape) == expected.shape == (2 * neighbours + 1, 64, 64)
        np.testing.assert_array_equal(loaded.numpy(), expected)
        np.testing.assert_allclose(loaded.affine.numpy(), geometry.nifti_affine(), atol=1e-6)
    entries = read_slice_index(paths[-1])
    assert [(p, g) for p, g in entries] == list(zip(paths[:-1], geometries))
    restored = paste_slices([loader(str(p)) for p, _ in entries], [g for _, g in entries])
    np.testing.assert_allclose(restored[13:16], volume[13:16], atol=0.03)
    assert (restored[:13] == 0).all() and (restored[16:] == 0).all()


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(PreprocessingError, match="3D"):
        extract_slices(np.zeros((4, 4)))
    with pytest.raises(PreprocessingError, match="NaN"):
        extract_slices(np.full((4, 4, 4), np.nan))
    (tmp_path / "broken_slices.json").write_text("{")
    with pytest.raises(InputReadError, match="cannot read the slice index"):
        read_slice_index(tmp_path / "broken_slices.json")
    slices, geometries = extract_slices(smooth_volume(), 0, {"mode": "middle", "count": 1}, output_shape=(32, 32))
    with pytest.raises(ValueError, match="differs from the recorded"):
        save_slices([np.zeros((16, 16))], geometries, tmp_path, "x")
