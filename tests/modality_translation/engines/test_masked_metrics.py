"""SSIM and PSNR inside a head mask, as Ignite metrics of a validation engine."""

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import from_engine
from monai.metrics import SSIMMetric

from modality_translation.engines.masked_metrics import MaskedMAE, MaskedPSNR, MaskedSSIM
from modality_translation.metrics import synthrad_metrics


def images(seed=0, batch=2, size=32):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 1, size, size), generator=generator) * 2.0


def centre_mask(batch=2, size=32, half=8):
    mask = torch.zeros((batch, 1, size, size))
    mask[:, :, size // 2 - half : size // 2 + half, size // 2 - half : size // 2 + half] = 1.0
    return mask


def measure(metric, *outputs):
    metric.reset()
    for output in outputs:
        metric.update(output)
    return metric.compute()


def test_ssim_with_a_full_mask_is_monais_ssim():
    pred, label = images(1), images(2)
    expected = SSIMMetric(spatial_dims=2, data_range=2.0, win_size=11)(pred, label).mean().item()
    assert measure(MaskedSSIM(data_range=2.0), (pred, label, torch.ones_like(pred))) == pytest.approx(expected, abs=1e-6)


def test_only_the_inside_of_the_mask_counts():
    label, mask = images(3, size=64), centre_mask(size=64, half=8)
    # Right inside the mask and within half a window (5 pixels) of it, noise further out.
    pred = torch.where(centre_mask(size=64, half=13) > 0, label, images(4, size=64))
    assert measure(MaskedSSIM(win_size=11), (pred, label, mask)) == pytest.approx(1.0, abs=1e-6)
    assert SSIMMetric(spatial_dims=2, data_range=2.0)(pred, label).mean().item() < 0.9
    off_by = torch.where(mask > 0, label + 0.1, images(5, size=64))  # MSE 0.01 inside: 10 log10(4 / 0.01) dB
    assert measure(MaskedPSNR(data_range=2.0), (off_by, label, mask)) == pytest.approx(10 * math.log10(400), rel=1e-5)


def test_images_are_averaged_over_updates_and_empty_masks_are_skipped():
    label, mask = images(6, batch=1), centre_mask(batch=1)
    close, far = label + 0.1 * mask, label + 0.4 * mask  # PSNR 26.02 dB and 13.98 dB inside
    empty = torch.zeros_like(mask)
    value = measure(MaskedPSNR(), (close, label, mask), (far, label, mask), (far, label, empty))
    assert value == pytest.approx((10 * math.log10(400) + 10 * math.log10(4 / 0.16)) / 2, rel=1e-5)
    assert math.isnan(measure(MaskedSSIM(), (far, label, empty)))
    assert measure(MaskedPSNR(), (label, label, mask)) == math.inf


def test_metrics_attach_to_an_engine_reading_decollated_outputs():
    label, mask = images(7, batch=3), centre_mask(batch=3)
    pred = torch.where(mask > 0, label + 0.1, label)

    def step(engine, index):
        return [{"pred": pred[i], "label": label[i], "mask": mask[i]} for i in range(3)]

    engine = Engine(step)
    transform = from_engine(["pred", "label", "mask"])
    MaskedPSNR(output_transform=transform).attach(engine, "val_psnr")
    MaskedSSIM(output_transform=transform).attach(engine, "val_ssim")
    engine.run([0, 1], max_epochs=1)
    assert engine.state.metrics["val_psnr"] == pytest.approx(10 * math.log10(400), rel=1e-5)
    assert 0.0 < engine.state.metrics["val_ssim"] < 1.0


def test_bad_inputs_are_refused():
    pred = images(8)
    with pytest.raises(ValueError, match=r"expected \(pred, label, mask\)"):
        MaskedSSIM().update((pred, pred))
    with pytest.raises(ValueError, match="mask shape"):
        MaskedSSIM().update((pred, pred, torch.ones((2, 1, 16, 16))))
    with pytest.raises(ValueError, match="win_size must be an odd"):
        MaskedSSIM(win_size=10)
    with pytest.raises(ValueError, match="kernel_type must be"):
        MaskedSSIM(kernel_type="box")


def test_mae_inside_the_mask_per_image_averaged_over_images():
    label, mask = images(9, batch=2) * 1000, centre_mask(batch=2)
    pred = label.clone()
    pred[0] += 100.0 * mask[0]
    pred[1] -= 40.0 * mask[1]
    pred += 5000.0 * (1 - mask)  # outside the mask: not counted
    assert measure(MaskedMAE(), (pred, label, mask)) == pytest.approx(70.0, rel=1e-6)
    assert math.isnan(measure(MaskedMAE(), (pred, label, torch.zeros_like(mask))))


def test_uniform_sample_covariance_ssim_is_synthrads_ssim_of_a_slice():
    """The validation's slice SSIM in HU: clipped to [-1024, 3000], -1024 outside the mask, shifted by 1024."""
    generator = np.random.default_rng(10)
    mask = centre_mask(batch=1, size=40, half=14)[0, 0].numpy() > 0
    target = np.where(mask, 40 + generator.normal(0, 300, mask.shape), -1000.0)
    pred = target + generator.normal(0, 150, mask.shape)
    pred[5, 5] = 3500.0  # clipped to 3000, outside the mask anyway

    def prepared(hu):
        return torch.from_numpy(np.where(mask, np.clip(hu, -1024, 3000), -1024) + 1024).float()[None, None]

    metric = MaskedSSIM(data_range=4024, win_size=7, kernel_type="uniform", sample_covariance=True)
    value = measure(metric, (prepared(pred), prepared(target), torch.from_numpy(mask).float()[None, None]))
    assert value == pytest.approx(synthrad_metrics(pred, target, mask)["ssim"], abs=1e-4)
