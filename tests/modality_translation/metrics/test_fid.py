import pytest
import torch
from torch import nn

from modality_translation.metrics import InceptionFeatureExtractor, fid_from_features, frechet_inception_distance
from modality_translation.networks import WeightsFileError


class _ChannelMeanAndSize(nn.Module):
    """Stand-in for Inception-v3: a 1x1 conv copying RGB, global average pooling, plus the input side as a feature."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.zero_()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.conv(x)).flatten(1)
        side = torch.full((x.shape[0], 1), float(x.shape[-1]), dtype=x.dtype)
        return torch.cat([pooled, side], dim=1)


class _WrongShape(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.fixture
def scripted_extractor(tmp_path):
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(_ChannelMeanAndSize()), str(path))
    return str(path)


def test_extractor_maps_range_replicates_grey_and_resizes(scripted_extractor):
    extractor = InceptionFeatureExtractor(scripted_extractor, image_size=299)
    grey = torch.stack([torch.full((1, 40, 40), -1.0), torch.full((1, 40, 40), 0.5)])
    features = extractor(grey)
    assert features.dtype == torch.float64
    expected = torch.tensor([[0.0, 0.0, 0.0, 299.0], [0.75, 0.75, 0.75, 299.0]], dtype=torch.float64)
    assert torch.allclose(features, expected, atol=1e-6)
    extractor = InceptionFeatureExtractor(scripted_extractor, image_size=32, model_input_range=(0, 255))
    assert extractor(torch.ones(1, 3, 32, 32))[0].tolist() == pytest.approx([255.0, 255.0, 255.0, 32.0])


def test_fid_of_identical_feature_sets_is_zero_and_of_shifted_sets_the_squared_shift():
    torch.manual_seed(0)
    features = torch.randn(200, 8, dtype=torch.float64)
    assert fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0, 0, 0, 3.0, 0], dtype=torch.float64)
    assert fid_from_features(features + shift, features) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fid_of_images_through_the_extractor(scripted_extractor):
    torch.manual_seed(0)
    extractor = InceptionFeatureExtractor(scripted_extractor, image_size=16)
    images = torch.rand(30, 1, 16, 16) * 1.6 - 0.8
    assert frechet_inception_distance(images, images, extractor, batch_size=7) == pytest.approx(0.0, abs=1e-6)
    # +0.2 in [-1, 1] is +0.1 in [0, 1] on each of the 3 replicated channels.
    value = frechet_inception_distance(images + 0.2, images, extractor, batch_size=7)
    assert value == pytest.approx(3 * 0.1**2, rel=1e-4)


def test_fid_input_checks():
    with pytest.raises(ValueError, match="N >= 2"):
        fid_from_features(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid_from_features(torch.zeros(3, 4), torch.zeros(3, 5))


def test_extractor_refuses_missing_foreign_and_misbehaving_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception.pt"):
        InceptionFeatureExtractor(str(tmp_path / "pt_inception.pt"))
    state_dict_file = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(1)}, state_dict_file)
    with pytest.raises(WeightsFileError, match="weights.pth.*TorchScript"):
        InceptionFeatureExtractor(str(state_dict_file))
    wrong = tmp_path / "wrong.pt"
    torch.jit.save(torch.jit.script(_WrongShape()), str(wrong))
    with pytest.raises(ValueError, match=r"wrong.pt: expected \(N, F\) features"):
        InceptionFeatureExtractor(str(wrong), image_size=8)(torch.zeros(2, 1, 8, 8))
