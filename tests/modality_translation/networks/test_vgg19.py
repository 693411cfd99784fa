import pytest
import torch
from torch import nn

from modality_translation.networks import VGG19_LAYER_INDEX, VGG19FeatureExtractor, WeightsFileError
from modality_translation.networks.vgg19 import IMAGENET_MEAN, IMAGENET_STD

# Indices of torchvision's vgg19().features, which its state-dict keys (features.N.*) use.
TORCHVISION_RELU_INDEX = {"relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29, "relu5_4": 35}


def _truncated_vgg19_file(path, deepest="relu3_1", seed=0):
    """A torchvision-format VGG19 state dict holding only the layers up to ``deepest`` (plus a classifier key)."""
    torch.manual_seed(seed)
    reference = VGG19FeatureExtractor(layers=[deepest])
    state = {key: torch.randn_like(value) * 0.05 for key, value in reference.state_dict().items()}
    torch.save(state, path)
    return state


def test_layer_names_map_to_torchvision_indices():
    for name, index in TORCHVISION_RELU_INDEX.items():
        assert VGG19_LAYER_INDEX[name] == index
    assert VGG19_LAYER_INDEX["pool5"] == 36 and VGG19_LAYER_INDEX["conv3_1"] == 10


def test_network_is_truncated_after_the_deepest_requested_layer():
    extractor = VGG19FeatureExtractor(layers=["relu1_1", "relu3_1", "relu2_1"])
    assert len(extractor.features) == 12
    keys = set(extractor.state_dict())
    assert keys == {f"features.{i}.{p}" for i in (0, 2, 5, 7, 10) for p in ("weight", "bias")}
    assert isinstance(extractor.features[4], nn.MaxPool2d) and isinstance(extractor.features[11], nn.ReLU)


def test_returns_requested_activations_by_name_or_index_in_order():
    extractor = VGG19FeatureExtractor(layers=["relu2_1", 1, "11"])
    features = extractor(torch.rand(2, 1, 32, 32) * 2 - 1)
    assert list(features) == ["relu2_1", "1", "11"]
    assert features["1"].shape == (2, 64, 32, 32)
    assert features["relu2_1"].shape == (2, 128, 16, 16)
    assert features["11"].shape == (2, 256, 8, 8)
    assert all((f >= 0).all() for f in features.values())


def test_grey_input_in_minus1_1_is_mapped_to_imagenet_normalised_rgb():
    extractor = VGG19FeatureExtractor(layers=["conv1_1"])
    conv = extractor.features[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for channel in range(3):
            conv.weight[channel, channel, 1, 1] = 1.0  # output channel c = input channel c
    grey = torch.full((1, 1, 8, 8), 0.5)  # 0.75 in [0, 1]
    out = extractor(grey)["conv1_1"][0, :3, 4, 4]
    expected = torch.tensor([(0.75 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(out, expected, atol=1e-6)


def test_parameters_are_frozen_but_gradients_reach_the_input():
    extractor = VGG19FeatureExtractor(layers=["relu2_1"])
    extractor.train()
    assert not extractor.training
    assert not any(p.requires_grad for p in extractor.parameters())
    image = torch.rand(1, 1, 16, 16, requires_grad=True)
    extractor(image)["relu2_1"].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_loads_truncated_torchvision_weights_and_ignores_deeper_layers_and_classifier(tmp_path):
    path = tmp_path / "vgg19_to_relu3_1.pth"
    state = _truncated_vgg19_file(path, "relu3_1")
    extractor = VGG19FeatureExtractor(layers=["relu1_1", "relu2_1"], weights_path=str(path))
    assert torch.equal(extractor.features[5].weight, state["features.5.weight"])
    assert torch.equal(extractor.features[0].bias, state["features.0.bias"])
    state["classifier.0.weight"] = torch.zeros(3)
    torch.save(state, path)
    extractor.load_state_dict_file(path)


def test_refuses_missing_file_non_state_dict_and_mismatched_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg19.pth"):
        VGG19FeatureExtractor(weights_path=str(tmp_path / "vgg19.pth"))
    not_a_state_dict = tmp_path / "model.pth"
    torch.save(torch.zeros(3), not_a_state_dict)
    with pytest.raises(WeightsFileError, match="model.pth.*not a state dict"):
        VGG19FeatureExtractor(weights_path=str(not_a_state_dict))
    too_shallow = tmp_path / "to_relu2_1.pth"
    _truncated_vgg19_file(too_shallow, "relu2_1")
    with pytest.raises(WeightsFileError, match="to_relu2_1.pth.*missing keys: features.7.weight, features.7.bias, features.10.weight, features.10.bias$"):
        VGG19FeatureExtractor(layers=["relu3_1"], weights_path=str(too_shallow))
    batch_norm_layout = tmp_path / "vgg19_bn.pth"
    state = _truncated_vgg19_file(batch_norm_layout, "relu1_1")
    state["features.1.running_mean"] = torch.zeros(64)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, batch_norm_layout)
    with pytest.raises(WeightsFileError) as error:
        VGG19FeatureExtractor(layers=["relu1_1"], weights_path=str(batch_norm_layout))
    assert "unexpected keys: features.1.running_mean" in str(error.value)
    assert "features.0.weight (file (64, 1, 3, 3), network (64, 3, 3, 3))" in str(error.value)


def test_bad_layers_and_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        VGG19FeatureExtractor(layers=["relu6_1"])
    with pytest.raises(ValueError, match="index"):
        VGG19FeatureExtractor(layers=[37])
    with pytest.raises(ValueError, match="non-empty"):
        VGG19FeatureExtractor(layers=[])
    with pytest.raises(ValueError, match="1 or 3"):
        VGG19FeatureExtractor(layers=["relu1_1"])(torch.zeros(1, 2, 8, 8))
