"""Frozen VGG19 feature extractor for perceptual losses, loadable from a torchvision state-dict file.

torchvision is not a dependency, and MONAI's :class:`monai.losses.PerceptualLoss` fetches its networks
from online hubs, which the product never does; so the convolutional part of VGG19 (Simonyan &
Zisserman 2015, configuration E) is built here with torchvision's layout: ``features`` is an
``nn.Sequential`` whose indices are torchvision's, so ``features.0.weight`` .. ``features.34.bias`` of a
torchvision ``vgg19`` state dict load directly. Only the layers up to the deepest requested one are
built (relu3_1 needs 12 of the 37 modules and 2.2 MB of the 548 MiB of weights), so the file may hold
only those keys; the deeper ones and the ``classifier.*`` head of a full file are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from modality_translation.networks.init import load_checked_state_dict, read_state_dict_file
from modality_translation.networks.layers import check_intensity_range

# Configuration "E" of the VGG paper: output channels of each 3x3 convolution, "M" for 2x2 max-pooling.
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")

# ImageNet statistics the torchvision weights were trained with (RGB, images scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> dict[str, int]:
    """Map conv1_1, relu1_1, ..., pool5 to their index in torchvision's ``vgg19().features``."""
    names: dict[str, int] = {}
    index, block, conv = 0, 1, 1
    for item in VGG19_CONFIG:
        if item == "M":
            names[f"pool{block}"] = index
            index += 1
            block, conv = block + 1, 1
        else:
            names[f"conv{block}_{conv}"] = index
            names[f"relu{block}_{conv}"] = index + 1
            index += 2
            conv += 1
    return names


VGG19_LAYER_INDEX = _layer_names()
VGG19_NUM_MODULES = max(VGG19_LAYER_INDEX.values()) + 1


def layer_index(layer: str | int) -> int:
    """Index in ``features`` of a layer given by name (``"relu3_1"``) or index (``11`` or ``"11"``).

    Raises:
        ValueError: for an unknown name or an index outside VGG19's ``features``.
    """
    if isinstance(layer, int) or (isinstance(layer, str) and layer.isdigit()):
        index = int(layer)
        if not 0 <= index < VGG19_NUM_MODULES:
            raise ValueError(f"VGG19 feature index must be in [0, {VGG19_NUM_MODULES}), got {layer!r}")
        return index
    if layer not in VGG19_LAYER_INDEX:
        raise ValueError(f"unknown VGG19 layer {layer!r}; use a name such as relu1_1..relu5_4, conv3_1, pool2, or an index")
    return VGG19_LAYER_INDEX[layer]


class VGG19FeatureExtractor(nn.Module):
    """Activations of chosen VGG19 layers for images in a given intensity range, with frozen weights.

    Inputs are mapped linearly from ``input_range`` to [0, 1], one-channel images are replicated to
    RGB, and the ImageNet mean and standard deviation are applied, as the pretrained weights expect.
    The parameters never receive gradients and the module stays in eval mode, but gradients flow to
    the input, which is what a perceptual loss needs.

    Args:
        layers: layers whose activations are returned, by name (``"relu1_1"``, ``"conv4_2"``,
            ``"pool3"``) or index in torchvision's ``features``.
        weights_path: local torchvision ``vgg19`` state dict to load, or ``None`` to keep the random
            initialisation (only meaningful in tests).
        input_range: intensity range of the images given to :meth:`forward` ([-1, 1] for the GANs).

    Raises:
        ValueError: for no or unknown layers, or an empty input range.
        FileNotFoundError: if ``weights_path`` names a missing file.
        WeightsFileError: if that file does not match (see :meth:`load_state_dict_file`).
    """

    def __init__(
        self,
        layers: Sequence[str | int] = ("relu1_1", "relu2_1", "relu3_1"),
        weights_path: str | None = None,
        input_range: Sequence[float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if isinstance(layers, (str, int)) or len(layers) == 0:
            raise ValueError(f"layers must be a non-empty list of VGG19 layer names or indices, got {layers!r}")
        self.input_range = check_intensity_range(input_range)
        self.layers = [str(layer) for layer in layers]
        self.indices = [layer_index(layer) for layer in layers]

        modules: list[nn.Module] = []
        in_channels = 3
        for item in VGG19_CONFIG:
            if len(modules) > max(self.indices):
                break
            if item == "M":
                modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # Not in-place: the activation is returned and must not be overwritten by a later layer.
                modules += [nn.Conv2d(in_channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_channels = item
        self.features = nn.Sequential(*modules[: max(self.indices) + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        if weights_path is not None:
            self.load_state_dict_file(weights_path)

    def train(self, mode: bool = True) -> VGG19FeatureExtractor:
        """Stay in eval mode: a frozen extractor must behave the same whatever its owner's mode."""
        return super().train(False)

    def load_state_dict_file(self, path: str | os.PathLike) -> None:
        """Load torchvision ``vgg19`` weights from a local state-dict file.

        The file must hold every ``features.N.weight`` / ``features.N.bias`` of the layers built; keys
        of deeper layers and of the ``classifier`` head are skipped, any other key is an error.

        Args:
            path: the ``.pth`` file.

        Raises:
            FileNotFoundError: if it does not exist.
            WeightsFileError: if it is not a state dict or keys/shapes do not match (e.g. ``vgg19_bn``
                or ``vgg16`` weights).
        """
        state = read_state_dict_file(path)
        load_checked_state_dict(self, state, path, ignore=_is_vgg19_key_beyond(len(self.features)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return the activations of the requested layers.

        Args:
            x: ``(batch, 1 or 3, height, width)`` in ``input_range``.

        Returns:
            Layer name (as given to the constructor) to activation, in the order given.

        Raises:
            ValueError: for an input that is not a batch of 1- or 3-channel 2D images.
        """
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"VGG19FeatureExtractor takes (batch, 1 or 3, height, width) images, got {tuple(x.shape)}")
        low, high = self.input_range
        x = (x - low) / (high - low)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        wanted = {index: name for name, index in zip(self.layers, self.indices)}
        activations: dict[int, torch.Tensor] = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                activations[index] = x
        return {name: activations[index] for name, index in zip(self.layers, self.indices)}


def _is_vgg19_key_beyond(num_built: int):
    """Key filter: a torchvision VGG19 key of a layer not built (index >= ``num_built``) or of the classifier."""

    def ignore(key: str) -> bool:
        if key.startswith("classifier."):
            return True
        parts = key.split(".")
        return len(parts) == 3 and parts[0] == "features" and parts[1].isdigit() and num_built <= int(parts[1]) < VGG19_NUM_MODULES

    return ignore
