"""Tests for head masks and intensity normalisation (preprocessing/normalization.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medgan_common.errors import PreprocessingError
from preprocessing.normalization import (
    MRHeadMask,
    MRHeadMaskd,
    PercentileNormalize,
    PercentileNormalized,
    ZScoreNormalize,
    ZScoreNormalized,
    head_mask_ct,
    head_mask_mr,
    noise_threshold,
    percentile_normalize,
    zscore_normalize,
)

SHAPE = (40, 56, 48)  # [z, y, x]
NOISE_SIGMA = 8.0


def ellipsoid_distance(shape=SHAPE, center=None, radii=(15.0, 22.0, 18.0)):
    """Normalised ellipsoid radius of every voxel (<= 1 inside)."""
    center = np.array(shape) / 2 - 0.5 if center is None else np.asarray(center)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return np.sqrt(((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2)


def synthetic_mr_head(seed=0, center=None):
    """Ellipsoid "head": bright scalp, dark skull, brain, dark ventricles; bias field and Rician noise.

    Returns the magnitude image and the true head (ellipsoid) mask.
    """
    rng = np.random.default_rng(seed)
    r = ellipsoid_distance(center=center)
    signal = np.zeros(SHAPE)
    signal[r <= 1.0] = 110.0  # scalp and fat
    signal[r <= 0.9] = 12.0  # cortical bone: almost no MR signal
    signal[r <= 0.8] = 70.0  # brain
    signal[r <= 0.3] = 25.0  # ventricles
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    bias = np.exp(0.35 * x - 0.2 * z + 0.1 * y)  # smooth multiplicative field, ~0.6 to ~1.9
    signal *= bias
    real = signal + rng.normal(0, NOISE_SIGMA, SHAPE)
    imaginary = rng.normal(0, NOISE_SIGMA, SHAPE)
    return np.sqrt(real**2 + imaginary**2).astype(np.float32), r <= 1.0


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("method", ["otsu", "noise"])
@pytest.mark.parametrize("closing_radius", [0, 2])
def test_mr_head_mask_matches_the_true_head(method, closing_radius):
    volume, truth = synthetic_mr_head()
    mask = head_mask_mr(volume, method=method, closing_radius=closing_radius)
    assert mask.dtype == bool and mask.shape == SHAPE
    assert dice(mask, truth) > 0.95
    # the dark skull and ventricles are inside the head: hole filling must have kept them
    r = ellipsoid_distance()
    assert mask[(r > 0.82) & (r < 0.88)].mean() > 0.99
    assert mask[r < 0.3].all()


def test_noise_threshold_sits_just_above_the_background_noise():
    volume, truth = synthetic_mr_head(seed=1)
    threshold = noise_threshold(volume, quantile=0.999)
    expected = NOISE_SIGMA * np.sqrt(-2 * np.log(1e-3))  # Rayleigh 99.9th percentile
    assert expected * 0.85 < threshold < expected * 1.15
    background = volume[ellipsoid_distance() > 1.1]
    assert (background > threshold).mean() < 0.005
    zero_filled = np.where(truth, volume, 0.0)
    assert noise_threshold(zero_filled) == 0.0


def test_slice_wise_filling_closes_cavities_open_through_the_volume_border():
    # head cut by the bottom of the field of view: the dark interior touches the z = 0 face
    center = (2.0, 27.5, 23.5)
    volume, truth = synthetic_mr_head(seed=2, center=center)
    ventricles_at_border = (ellipsoid_distance(center=center) < 0.3)[:3]
    assert ventricles_at_border[0].any()
    mask_3d_only = head_mask_mr(volume, slice_fill_axis=None)
    mask_slice_wise = head_mask_mr(volume, slice_fill_axis=0)
    assert mask_3d_only[:3][ventricles_at_border].mean() < 0.1
    assert mask_slice_wise[:3][ventricles_at_border].all()
    assert dice(mask_slice_wise, truth) > 0.95


def test_ct_body_mask_keeps_the_head_and_drops_separate_objects():
    r = ellipsoid_distance()
    volume = np.full(SHAPE, -1000.0, dtype=np.float32)
    volume[r <= 1.0] = 1000.0  # skull
    volume[r <= 0.85] = 35.0  # brain
    volume[r <= 0.3] = 5.0  # CSF
    volume[:, 52:, :] = 700.0  # couch below the head, not touching it
    volume[:, :, :2] = -2000.0  # padding outside the reconstruction field of view
    mask = head_mask_ct(volume)
    np.testing.assert_array_equal(mask, r <= 1.0)


def test_head_masks_raise_for_images_without_a_head():
    with pytest.raises(PreprocessingError, match="no body found"):
        head_mask_ct(np.full(SHAPE, -1000.0))
    with pytest.raises(PreprocessingError, match="NaN"):
        head_mask_mr(np.full(SHAPE, np.nan))
    with pytest.raises(ValueError, match="unknown head mask method"):
        head_mask_mr(synthetic_mr_head()[0], method="kmeans")


def test_zscore_gives_zero_mean_unit_std_inside_the_mask():
    volume, truth = synthetic_mr_head()
    out = zscore_normalize(volume, truth, outside_value=-5.0)
    assert out.dtype == np.float32
    assert abs(out[truth].mean()) < 1e-5
    assert abs(out[truth].std() - 1.0) < 1e-5
    assert (out[~truth] == -5.0).all()
    # a linear map: the order and relative distances of the voxels are kept
    expected = (volume[truth] - volume[truth].mean()) / volume[truth].std()
    np.testing.assert_allclose(out[truth], expected, atol=1e-4)


def test_normalisation_errors_name_the_problem():
    volume, truth = synthetic_mr_head()
    with pytest.raises(PreprocessingError, match="mask is empty"):
        zscore_normalize(volume, np.zeros(SHAPE, bool))
    with pytest.raises(PreprocessingError, match="mask is empty"):
        percentile_normalize(volume, np.zeros(SHAPE, bool))
    with pytest.raises(PreprocessingError, match="constant"):
        zscore_normalize(np.ones(SHAPE), truth)
    with pytest.raises(PreprocessingError, match="differs from the volume shape"):
        zscore_normalize(volume, truth[:-1])
    with pytest.raises(PreprocessingError, match="are equal"):
        percentile_normalize(np.ones(SHAPE))
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        percentile_normalize(volume, lower=60, upper=40)


@pytest.mark.parametrize("out_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_percentile_normalisation_range_and_clipping(out_range):
    volume, truth = synthetic_mr_head()
    out = percentile_normalize(volume, truth, lower=1.0, upper=99.0, out_range=out_range)
    low, high = np.percentile(volume[truth], [1.0, 99.0])
    assert out.min() == out_range[0] and out.max() == out_range[1]
    inside = out[truth]
    assert 0.005 < (inside == out_range[0]).mean() <= 0.011  # ~1% clipped at each end
    assert 0.005 < (inside == out_range[1]).mean() <= 0.011
    between = truth & (volume > low) & (volume < high)
    expected = out_range[0] + (volume[between] - low) / (high - low) * (out_range[1] - out_range[0])
    np.testing.assert_allclose(out[between], expected, atol=1e-5)
    with_background = percentile_normalize(volume, truth, out_range=out_range, outside_value=out_range[0])
    assert (with_background[~truth] == out_range[0]).all()


def test_dictionary_chain_equals_the_functions_and_keeps_metatensors():
    volume, _ = synthetic_mr_head()
    image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    data = MRHeadMaskd("t1", method="noise")({"t1": image})
    mask = data["t1_head_mask"]
    assert isinstance(mask, MetaTensor) and mask.dtype == torch.uint8 and mask.shape == (1, *SHAPE)
    np.testing.assert_array_equal(mask[0].numpy().astype(bool), head_mask_mr(volume, method="noise"))
    np.testing.assert_array_equal(mask.numpy(), MRHeadMask(method="noise")(image).numpy())

    zscored = ZScoreNormalized("t1")(dict(data))["t1"]
    assert isinstance(zscored, MetaTensor) and torch.equal(zscored.affine, image.affine)
    np.testing.assert_allclose(zscored[0].numpy(), zscore_normalize(volume, mask[0].numpy()), atol=1e-6)
    np.testing.assert_allclose(zscored.numpy(), ZScoreNormalize()(image, mask).numpy(), atol=1e-6)

    scaled = PercentileNormalized("t1", mask_keys="t1_head_mask", outside_value=-1.0)(dict(data))["t1"]
    np.testing.assert_allclose(
        scaled.numpy(), PercentileNormalize(outside_value=-1.0)(image, mask[0]).numpy(), atol=1e-6
    )
    unmasked = PercentileNormalized("t1")({"t1": volume[None]})["t1"]
    assert isinstance(unmasked, np.ndarray)
    np.testing.assert_allclose(unmasked[0], percentile_normalize(volume), atol=1e-6)
    with pytest.raises(KeyError, match="mask key 'brain' for image 't1' is missing"):
        ZScoreNormalized("t1", mask_keys="brain")({"t1": image})
