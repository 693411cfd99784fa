"""CT window channels: the round trip to HU, the channel order, gradients, and the window checks of saved weights."""

import pytest
import torch
from torch import nn

from modality_translation.inference.weights import check_neighbours, input_channels
from modality_translation.losses import CycleConsistencyLoss, TransformedLoss
from modality_translation.networks import (
    CTWindowBlend,
    CTWindowChannels,
    PatchGANDiscriminator,
    UNetGenerator,
    WeightsFileError,
    WindowedCTNetwork,
    load_checked_state_dict,
)
from preprocessing.windowing import hu_to_window, window_to_hu

SCALE = (500.0, 3000.0)  # the demo cohort's ct_window: -1000 .. 2000 HU on [-1, 1]
WINDOWS = ["brain", "subdural", {"name": "ct_mr", "center": 500.0, "width": 3000.0}]


def on_scale(hu: torch.Tensor) -> torch.Tensor:
    return hu_to_window(hu, SCALE, (-1.0, 1.0))


def test_window_channels_round_trip_to_hu_inside_the_windows():
    hu = torch.linspace(-1000.0, 2000.0, 30001).view(1, 1, -1, 1)
    channels = CTWindowChannels(WINDOWS, SCALE)(on_scale(hu))
    assert channels.shape == (1, 3, 30001, 1)
    # Channel 0 is the brain window: 0 .. 80 HU spread over [-1, 1].
    assert torch.allclose(channels[0, 0], hu_to_window(hu[0, 0], "brain", (-1.0, 1.0)), atol=1e-4)
    blend = CTWindowBlend(WINDOWS, SCALE)
    assert (blend.to_hu(channels) - hu).abs().max() < 0.01
    assert (window_to_hu(blend(channels), SCALE, (-1.0, 1.0)) - hu).abs().max() < 0.01


def test_the_bone_window_loses_the_air_below_its_lower_edge():
    # bone = 600/2800: -800 .. 2000 HU. Air at -1000 HU comes back at the window's edge: why the
    # bundles' third window is the cohort's own (air to dense bone).
    hu = torch.tensor([-1000.0, 40.0, 1600.0]).view(1, 1, 3, 1)
    back = CTWindowBlend(["brain", "bone"], SCALE).to_hu(CTWindowChannels(["brain", "bone"], SCALE)(on_scale(hu)))
    assert back.flatten().tolist() == pytest.approx([-800.0, 40.0, 1600.0], abs=0.01)


def test_two_and_a_half_d_inputs_keep_slice_major_channel_order():
    hu = torch.stack([torch.full((4, 4), v) for v in (20.0, 60.0, 1000.0)]).unsqueeze(0)  # 3 slices
    channels = CTWindowChannels(WINDOWS, SCALE)(on_scale(hu))
    assert channels.shape == (1, 9, 4, 4)
    for slice_index, value in enumerate((20.0, 60.0, 1000.0)):
        for window_index, window in enumerate(WINDOWS):
            expected = hu_to_window(torch.tensor(value), window, (-1.0, 1.0))
            assert torch.allclose(channels[0, 3 * slice_index + window_index], expected.expand(4, 4), atol=1e-6)


def test_the_blend_passes_gradients_to_every_channel_and_favours_narrow_windows():
    outputs = torch.zeros(2, 3, 8, 8, requires_grad=True)
    CTWindowBlend(WINDOWS, SCALE)(outputs).sum().backward()
    assert (outputs.grad.abs().sum(dim=(0, 2, 3)) > 0).all()
    # Inconsistent channels: the brain window says 60 HU, the wide one 500 HU; the blend stays near 60.
    brain, wide = hu_to_window(torch.tensor(60.0), "brain", (-1, 1)), hu_to_window(torch.tensor(500.0), SCALE, (-1, 1))
    subdural = hu_to_window(torch.tensor(60.0), "subdural", (-1, 1))
    hu = CTWindowBlend(WINDOWS, SCALE).to_hu(torch.stack([brain, subdural, wide]).view(1, 3, 1, 1))
    assert 60.0 < hu.item() < 80.0


def test_a_window_beyond_the_cohorts_window_is_refused():
    with pytest.raises(ValueError, match="reaches beyond the CT scale's window"):
        CTWindowChannels(["brain", (1000.0, 3000.0)], SCALE)  # up to 2500 HU: clipped at 2000 by the cohort


def small_unet(in_channels: int, out_channels: int) -> nn.Module:
    return UNetGenerator(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=[4, 8, 8, 8])


def test_windowed_networks_take_and_give_one_ct_channel():
    ct_to_mr = WindowedCTNetwork(small_unet(3, 1), WINDOWS, SCALE, window_input=True)
    mr_to_ct = WindowedCTNetwork(small_unet(1, 3), WINDOWS, SCALE, window_output=True)
    judge = WindowedCTNetwork(PatchGANDiscriminator(spatial_dims=2, in_channels=3, channels=4, num_layers=2), WINDOWS,
                              SCALE, window_input=True)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert ct_to_mr(x).shape == (2, 1, 16, 16)
    fake_ct = mr_to_ct(x)
    assert fake_ct.shape == (2, 1, 16, 16) and fake_ct.min() >= -1 and fake_ct.max() <= 1
    assert judge(fake_ct).shape[1] == 1
    # Volume inference counts the channels it gives, not the network's windowed ones.
    assert input_channels(ct_to_mr) == 1 and input_channels(ct_to_mr.state_dict()) == 1
    check_neighbours(ct_to_mr.state_dict(), 0, "weights.pt")
    with pytest.raises(ValueError, match="neighbours=1"):
        check_neighbours(ct_to_mr.state_dict(), 1, "weights.pt")


def test_weights_trained_with_other_windows_are_refused(tmp_path):
    trained = WindowedCTNetwork(small_unet(3, 1), WINDOWS, SCALE, window_input=True)
    other = WindowedCTNetwork(small_unet(3, 1), ["stroke", "subdural", "bone"], SCALE, window_input=True)
    with pytest.raises(WeightsFileError, match=r"trained with CT input windows \[0, 80\].*built with \[20, 60\]"):
        load_checked_state_dict(other, trained.state_dict(), tmp_path / "model.pt")
    same = WindowedCTNetwork(small_unet(3, 1), WINDOWS, SCALE, window_input=True)
    load_checked_state_dict(same, trained.state_dict(), tmp_path / "model.pt")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), trained.state_dict().values()))


def test_a_cycle_loss_through_the_windows_sees_brain_contrast_the_wide_window_hides():
    torch.manual_seed(0)
    brain = 30.0 + 8.0 * torch.randn(1, 1, 32, 32)  # grey/white matter texture, HU
    flattened = torch.full_like(brain, 30.0)  # the same brain without its contrast
    ssim = CycleConsistencyLoss(l1_weight=0.0, ssim_weight=1.0)
    wide = ssim(on_scale(flattened), on_scale(brain))
    windowed = TransformedLoss(ssim, CTWindowChannels(WINDOWS, SCALE))(on_scale(flattened), on_scale(brain))
    assert windowed > 0.3 and wide < 0.2 and windowed > 2 * wide


def test_the_input_filter_quiets_the_brain_windows_noise_and_keeps_the_csf_edge():
    torch.manual_seed(0)
    hu = torch.full((1, 1, 32, 32), 30.0)
    hu[..., :, 16:] = 8.0  # brain | CSF, 22 HU apart
    noisy = hu + 3.0 * torch.randn_like(hu)
    plain = CTWindowChannels(WINDOWS, SCALE)(on_scale(noisy))
    filtered = CTWindowChannels(WINDOWS, SCALE, denoise=[1.0, 8.0])(on_scale(noisy))
    clean = CTWindowChannels(WINDOWS, SCALE)(on_scale(hu))
    brain = (slice(None), 0, slice(4, 28), slice(2, 13))
    assert filtered[brain].std() < 0.5 * plain[brain].std()
    # one pixel either side of the edge: still the brain's and the CSF's values (within 2 HU)
    edge = filtered[0, 0, 4:28, 15:17].mean(dim=0)
    assert torch.allclose(edge, clean[0, 0, 4:28, 15:17].mean(dim=0), atol=2.0 / 40.0)


def test_the_input_filter_is_recorded_with_the_weights_and_checked_on_loading(tmp_path):
    trained = WindowedCTNetwork(small_unet(3, 1), WINDOWS, SCALE, window_input=True, denoise=[1.0, 8.0])
    assert trained.state_dict()["input_denoise"].tolist() == [1.0, 8.0]
    x = torch.rand(1, 1, 16, 16) * 2 - 1
    assert trained(x).shape == (1, 1, 16, 16)
    unfiltered = WindowedCTNetwork(small_unet(3, 1), WINDOWS, SCALE, window_input=True)
    with pytest.raises(WeightsFileError, match=r"trained with a bilateral CT input filter \(1 px, 8 HU\).*built with no CT"):
        load_checked_state_dict(unfiltered, trained.state_dict(), tmp_path / "model.pt")
    with pytest.raises(WeightsFileError, match=r"trained with no CT input filter.*built with a bilateral"):
        load_checked_state_dict(trained, unfiltered.state_dict(), tmp_path / "model.pt")
    other = WindowedCTNetwork(small_unet(3, 1), WINDOWS, SCALE, window_input=True, denoise=[1.0, 20.0])
    with pytest.raises(WeightsFileError, match=r"\(1 px, 8 HU\).*\(1 px, 20 HU\)"):
        load_checked_state_dict(other, trained.state_dict(), tmp_path / "model.pt")
    same = WindowedCTNetwork(small_unet(3, 1), WINDOWS, SCALE, window_input=True, denoise=[1.0, 8.0])
    load_checked_state_dict(same, trained.state_dict(), tmp_path / "model.pt")
    assert torch.equal(same(x), trained(x))


def test_the_input_filter_needs_a_windowed_input_and_two_positive_sigmas():
    with pytest.raises(ValueError, match="needs window_input"):
        WindowedCTNetwork(small_unet(1, 3), WINDOWS, SCALE, window_output=True, denoise=[1.0, 8.0])
    with pytest.raises(ValueError, match="both positive"):
        CTWindowChannels(WINDOWS, SCALE, denoise=[1.0])
    with pytest.raises(ValueError, match="both positive"):
        CTWindowChannels(WINDOWS, SCALE, denoise=[0.0, 8.0])
