import json

import pytest
import torch
from monai.bundle import ConfigParser

from modality_translation.losses import AdversarialLoss, CycleConsistencyLoss, PerceptualLoss
from modality_translation.networks import VGG19FeatureExtractor, WeightsFileError
from modality_translation.networks.vgg19 import IMAGENET_STD


@pytest.fixture
def vgg_file(tmp_path):
    """Torchvision-format VGG19 weights up to relu2_1 where conv1_1 copies RGB to its first 3 channels."""
    torch.manual_seed(0)
    state = {key: torch.randn_like(v) * 0.05 for key, v in VGG19FeatureExtractor(layers=["relu2_1"]).state_dict().items()}
    state["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    state["features.0.bias"] = torch.zeros(64)
    for channel in range(3):
        state["features.0.weight"][channel, channel, 1, 1] = 1.0
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    return str(path)


def test_perceptual_loss_on_conv1_1_has_its_closed_form(vgg_file):
    loss = PerceptualLoss(vgg_file, layers=["conv1_1"], layer_weights=[2.0])
    x = torch.full((1, 1, 16, 16), 0.6)
    y = torch.full((1, 1, 16, 16), -0.2)
    # Activations are ((v + 1) / 2 - mean_c) / std_c on 3 of 64 channels, 0 elsewhere.
    expected = 2.0 * sum(abs(0.6 - -0.2) / 2 / std for std in IMAGENET_STD) / 64
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert loss(x, x).item() == 0.0


def test_perceptual_loss_folds_volume_depth_into_the_batch(vgg_file):
    loss = PerceptualLoss(vgg_file, layers=["relu1_1", "relu2_1"], layer_weights=[1.0, 0.5])
    a, b = torch.rand(2, 1, 3, 16, 16) * 2 - 1, torch.rand(2, 1, 3, 16, 16) * 2 - 1
    slices = lambda v: v.permute(0, 2, 1, 3, 4).reshape(6, 1, 16, 16)  # noqa: E731
    assert loss(a, b).item() == pytest.approx(loss(slices(a), slices(b)).item(), rel=1e-6)


def test_perceptual_gradient_reaches_the_input_only(vgg_file):
    loss = PerceptualLoss(vgg_file, layers=["relu2_1"])
    generated = torch.rand(1, 1, 16, 16, requires_grad=True)
    target = torch.rand(1, 1, 16, 16, requires_grad=True)
    loss(generated, target).backward()
    assert generated.grad.abs().sum() > 0
    assert target.grad is None


def test_perceptual_loss_refuses_missing_or_mismatched_weights(tmp_path, vgg_file):
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        PerceptualLoss(str(tmp_path / "absent.pth"))
    with pytest.raises(WeightsFileError, match="vgg19.pth.*missing keys: features.7.weight, features.7.bias, features.10.weight"):
        PerceptualLoss(vgg_file, layers=["relu3_1"])
    with pytest.raises(ValueError, match="layer_weights has 1 entries for 2 layers"):
        PerceptualLoss(vgg_file, layers=["relu1_1", "relu2_1"], layer_weights=[1.0])
    with pytest.raises(ValueError, match="weights_path"):
        PerceptualLoss(None)


def test_cycle_loss_default_is_plain_l1():
    a, b = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    loss = CycleConsistencyLoss()
    assert list(loss.terms) == ["l1"]
    assert loss(a, b).item() == pytest.approx((a - b).abs().mean().item())


def test_ssim_term_is_zero_for_identical_images_and_uses_the_stated_data_range():
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    loss = CycleConsistencyLoss(l1_weight=0, ssim_weight=1, data_range=2.0)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    # Constant images: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 2)^2.
    a, b, c1 = 0.5, -0.5, (0.01 * 2.0) ** 2
    expected = 1 - (2 * a * b + c1) / (a * a + b * b + c1)
    value = loss(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)).item()
    assert value == pytest.approx(expected, rel=1e-5)


def test_ssim_term_in_3d():
    x = torch.rand(1, 1, 16, 16, 16) * 2 - 1
    loss = CycleConsistencyLoss(l1_weight=0, ssim_weight=1, spatial_dims=3, ssim_win_size=7)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(x, -x).item() > 0.1


def test_weighted_sum_of_all_terms(vgg_file):
    loss = CycleConsistencyLoss(
        l1_weight=10.0, ssim_weight=1.0, charbonnier_weight=2.0, perceptual_weight=0.5,
        perceptual_weights_path=vgg_file, perceptual_layers=["relu1_1", "relu2_1"], charbonnier_eps=1e-3,
    )
    a, b = torch.rand(1, 1, 32, 32) * 2 - 1, torch.rand(1, 1, 32, 32) * 2 - 1
    parts = loss.components(a, b)
    assert set(parts) == {"l1", "ssim", "charbonnier", "perceptual"}
    assert parts["charbonnier"].item() == pytest.approx(torch.sqrt((a - b) ** 2 + 1e-6).mean().item(), rel=1e-6)
    expected = 10 * parts["l1"] + parts["ssim"] + 2 * parts["charbonnier"] + 0.5 * parts["perceptual"]
    assert loss(a, b).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cycle_loss_refuses_bad_configurations():
    with pytest.raises(ValueError, match="at least one"):
        CycleConsistencyLoss(l1_weight=0)
    with pytest.raises(ValueError, match=">= 0"):
        CycleConsistencyLoss(ssim_weight=-1)
    with pytest.raises(ValueError, match="perceptual_weights_path"):
        CycleConsistencyLoss(perceptual_weight=1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        CycleConsistencyLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))


def test_losses_are_built_from_a_json_bundle_config(tmp_path, vgg_file):
    config = {
        "adversarial": {"_target_": "modality_translation.losses.AdversarialLoss", "mode": "least_squares",
                        "discriminator_scale": 0.5},
        "cycle": {"_target_": "modality_translation.losses.CycleConsistencyLoss", "l1_weight": 0, "ssim_weight": 1.0,
                  "perceptual_weight": 1.0, "perceptual_weights_path": vgg_file,
                  "perceptual_layers": ["relu1_1", "relu2_1"], "perceptual_layer_weights": [1.0, 0.5]},
    }
    path = tmp_path / "losses.json"
    path.write_text(json.dumps(config))
    parser = ConfigParser()
    parser.read_config(str(path))
    adversarial = parser.get_parsed_content("adversarial")
    assert isinstance(adversarial, AdversarialLoss) and adversarial.discriminator_scale == 0.5
    cycle = parser.get_parsed_content("cycle")
    assert set(cycle.terms) == {"ssim", "perceptual"}
    assert cycle.terms["perceptual"].layer_weights == [1.0, 0.5]
