import math

import numpy as np
import pytest
import torch

from modality_translation.metrics import mae, psnr, ssim, ssim_inside_mask, synthrad_metrics


def test_psnr_of_a_known_mse_per_image_2d_and_3d():
    target = torch.rand(2, 1, 16, 16) * 2 - 1
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01
    pred[1] -= 0.2  # MSE 0.04
    values = psnr(pred, target, data_range=2.0)
    assert values.tolist() == pytest.approx([10 * math.log10(4 / 0.01), 10 * math.log10(4 / 0.04)], rel=1e-5)
    volume = torch.zeros(1, 1, 8, 8, 8)
    assert psnr(volume + 0.5, volume, data_range=1.0).item() == pytest.approx(10 * math.log10(1 / 0.25), rel=1e-5)


def test_ssim_is_one_for_identical_images_and_depends_on_the_stated_range():
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert ssim(x, x, data_range=2.0).tolist() == pytest.approx([1.0] * 3, abs=1e-5)
    a, b = torch.full((1, 1, 16, 16), 0.5), torch.full((1, 1, 16, 16), -0.5)
    for data_range in (2.0, 1.0):
        c1 = (0.01 * data_range) ** 2
        expected = (2 * 0.5 * -0.5 + c1) / (0.25 + 0.25 + c1)
        assert ssim(a, b, data_range=data_range).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_in_3d():
    x = torch.rand(2, 1, 16, 16, 16)
    values = ssim(x, x * 0.5, data_range=1.0, win_size=7)
    assert values.shape == (2,)
    assert (values < 1).all() and (values > 0).all()


def test_shape_checks():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9), data_range=2.0)
    with pytest.raises(ValueError, match="expected"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8), data_range=2.0)


def test_mae_inside_a_mask():
    pred = np.array([[0.0, 10.0], [20.0, 30.0]])
    target = np.array([[1.0, 10.0], [0.0, -30.0]])
    mask = np.array([[1, 1], [0, 1]])
    assert mae(pred, target, mask) == pytest.approx((1 + 0 + 60) / 3)
    assert mae(pred, target) == pytest.approx((1 + 0 + 20 + 60) / 4)
    with pytest.raises(ValueError, match="empty"):
        mae(pred, target, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="mask shape"):
        mae(pred, target, np.ones((2, 3)))


def _head_phantom(shape=(24, 28, 26), seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    radius2 = sum(((axis - size / 2) / (size / 2 - 2)) ** 2 for axis, size in zip((z, y, x), shape))
    mask = radius2 < 1
    target = np.where(mask, 40 + rng.normal(0, 20, shape), -1000.0)
    target[mask & (radius2 > 0.7)] = 1500.0
    return target, mask, rng


def test_synthrad_mae_is_unclipped_and_psnr_is_clipped_to_the_hu_range():
    target, mask, _ = _head_phantom()
    pred = target + 100.0 * mask
    inside = np.argwhere(mask)[0]
    pred[tuple(inside)] = 9000.0  # clipped to 3000 for PSNR, not for MAE
    errors = np.where(mask, np.abs(pred - target), 0)
    metrics = synthrad_metrics(pred, target, mask)
    assert metrics["mae"] == pytest.approx(errors.sum() / mask.sum())
    clipped_errors = np.where(mask, np.clip(pred, -1024, 3000) - np.clip(target, -1024, 3000), 0)
    expected_psnr = 10 * math.log10(4024**2 / ((clipped_errors**2).sum() / mask.sum()))
    assert metrics["psnr"] == pytest.approx(expected_psnr, rel=1e-6)


def test_synthrad_ssim_ignores_differences_outside_the_mask():
    target, mask, rng = _head_phantom()
    pred = np.where(mask, target, rng.normal(0, 500, target.shape))
    metrics = synthrad_metrics(pred, target, mask)
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["mae"] == 0.0 and math.isinf(metrics["psnr"])


def test_synthrad_ssim_agrees_with_the_scikit_image_reference_in_3d_and_2d():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    crop = pytest.importorskip("skimage.util").crop
    target, mask, rng = _head_phantom()
    pred = target + rng.normal(0, 80, target.shape)
    for t, p, m in ((target, pred, mask), (target[12], pred[12], mask[12])):
        t_in = np.where(m, np.clip(t, -1024, 3000), -1024) + 1024
        p_in = np.where(m, np.clip(p, -1024, 3000), -1024) + 1024
        _, ssim_map = skimage_metrics.structural_similarity(t_in, p_in, data_range=4024, full=True)
        reference = crop(ssim_map, 3)[crop(m, 3)].mean()
        assert synthrad_metrics(p, t, m)["ssim"] == pytest.approx(reference, abs=1e-4)


def test_synthrad_refuses_tiny_or_mismatched_inputs():
    with pytest.raises(ValueError, match=">= 7"):
        synthrad_metrics(np.zeros((4, 10, 10)), np.zeros((4, 10, 10)), np.ones((4, 10, 10)))
    with pytest.raises(ValueError, match="shapes differ"):
        synthrad_metrics(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), np.ones((8, 8, 8)))


def test_masked_ssim_agrees_with_the_scikit_image_gaussian_map_averaged_in_the_mask():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    crop = pytest.importorskip("skimage.util").crop
    rng = np.random.default_rng(3)
    target = rng.uniform(0.0, 2.0, (24, 28, 26))
    pred = np.clip(target + rng.normal(0, 0.2, target.shape), 0.0, 2.0)
    mask = np.zeros(target.shape, bool)
    mask[4:20, 6:22, 5:21] = True
    _, ssim_map = skimage_metrics.structural_similarity(
        target, pred, data_range=2.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True)
    reference = crop(ssim_map, 5)[crop(mask, 5)].mean()
    assert ssim_inside_mask(pred, target, mask, data_range=2.0) == pytest.approx(reference, abs=1e-4)


def test_masked_ssim_sees_a_bad_head_that_the_whole_volume_ssim_hides():
    # A small head in a large, equal background: the whole-volume SSIM is high, the head's is not.
    rng = np.random.default_rng(4)
    target = np.zeros((64, 64, 64))
    pred = np.zeros((64, 64, 64))
    mask = np.zeros(target.shape, bool)
    mask[20:44, 20:44, 20:44] = True
    target[mask] = rng.uniform(0.5, 1.5, mask.sum())
    pred[mask] = rng.uniform(0.5, 1.5, mask.sum())
    whole = float(ssim(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(target)[None, None].float(), 2.0)[0])
    masked = ssim_inside_mask(pred, target, mask, 2.0)
    # Windows at the head's edge share the edge itself, so even unrelated heads keep some similarity there.
    assert whole > 0.9 and masked < 0.5
    assert ssim_inside_mask(target, target, mask, 2.0) == pytest.approx(1.0, abs=1e-6)


def test_masked_ssim_refuses_an_empty_mask_and_a_tiny_image():
    with pytest.raises(ValueError, match="mask is empty"):
        ssim_inside_mask(np.ones((12, 12, 12)), np.ones((12, 12, 12)), np.zeros((12, 12, 12)), 2.0)
    with pytest.raises(ValueError, match=">= 11"):
        ssim_inside_mask(np.ones((8, 12, 12)), np.ones((8, 12, 12)), np.ones((8, 12, 12)), 2.0)
