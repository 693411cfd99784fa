import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from modality_translation.networks import WeightsFileError, init_weights, load_checked_state_dict, read_state_dict_file


def _small_net():
    return nn.Sequential(nn.Conv2d(4, 64, 3), nn.BatchNorm2d(64), nn.ConvTranspose2d(64, 32, 3), nn.Linear(32, 256))


@pytest.mark.parametrize("gain", [0.02, 0.05])
def test_normal_init_draws_weights_from_n0_gain_and_zeroes_biases(gain):
    torch.manual_seed(0)
    net = init_weights(_small_net(), "normal", gain)
    for layer in (net[0], net[2], net[3]):
        assert layer.weight.std().item() == pytest.approx(gain, rel=0.1)
        assert torch.count_nonzero(layer.bias) == 0
    assert net[1].weight.mean().item() == pytest.approx(1.0, abs=3 * gain)
    assert net[1].weight.std().item() == pytest.approx(gain, rel=0.3)


def test_xavier_kaiming_orthogonal_follow_their_rules():
    torch.manual_seed(0)
    conv = init_weights(nn.Sequential(nn.Conv2d(64, 64, 3)), "kaiming")[0]
    fan_in = 64 * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    linear = init_weights(nn.Sequential(nn.Linear(64, 64)), "orthogonal", gain=1.0)[0]
    assert torch.allclose(linear.weight @ linear.weight.T, torch.eye(64), atol=1e-5)
    linear = init_weights(nn.Sequential(nn.Linear(200, 100)), "xavier", gain=0.5)[0]
    assert linear.weight.std().item() == pytest.approx(0.5 * (2 / 300) ** 0.5, rel=0.05)


def test_spectral_normalised_layers_get_their_trainable_original_initialised():
    torch.manual_seed(0)
    net = nn.Sequential(spectral_norm(nn.Conv2d(8, 64, 3)))
    init_weights(net, "normal", 0.02)
    assert net[0].parametrizations.weight.original.std().item() == pytest.approx(0.02, rel=0.1)


def test_unknown_init_type_is_refused():
    with pytest.raises(ValueError, match="init_type"):
        init_weights(_small_net(), "uniform")


def test_read_state_dict_file_refuses_missing_and_non_state_dict_files(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        read_state_dict_file(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsFileError, match="garbage.pth.*cannot be read"):
        read_state_dict_file(garbage)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], a_list)
    with pytest.raises(WeightsFileError, match="list.pth.*holds a list"):
        read_state_dict_file(a_list)
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "model": {"w": torch.zeros(1)}}, checkpoint)
    with pytest.raises(WeightsFileError, match="checkpoint.pth.*not tensors: epoch, model"):
        read_state_dict_file(checkpoint)


def test_load_checked_state_dict_reports_missing_unexpected_and_mismatched_keys(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    state = {key: value.clone() for key, value in net.state_dict().items()}
    state["0.weight"] = torch.zeros(4, 2, 3, 3)
    del state["1.bias"]
    state["head.weight"] = torch.zeros(1)
    with pytest.raises(WeightsFileError) as error:
        load_checked_state_dict(net, state, tmp_path / "w.pth")
    message = str(error.value)
    assert "w.pth" in message
    assert "missing keys: 1.bias" in message
    assert "unexpected keys: head.weight" in message
    assert "0.weight (file (4, 2, 3, 3), network (4, 1, 3, 3))" in message


def test_load_checked_state_dict_loads_values_skips_ignored_keys_and_tolerates_missing_step_counters(tmp_path):
    source, target = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.zeros(3)
    load_checked_state_dict(target, state, tmp_path / "w.pth", ignore=lambda key: key.startswith("fc."))
    assert torch.equal(target[0].weight, source[0].weight)
    assert torch.equal(target[1].running_var, source[1].running_var)
