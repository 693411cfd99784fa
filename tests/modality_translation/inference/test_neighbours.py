"""2.5D: inference feeds a generator the same channels, in the same order, as training did; a different
neighbour count is refused before any translation."""

import numpy as np
import pytest
import torch
from torch import nn

from modality_translation.data import translation_train_transforms
from modality_translation.inference import VolumeTranslator
from modality_translation.inference.translate import translate_slices
from preprocessing.slices import extract_slices, save_slices

NEIGHBOURS = 2
SIZE = 16


def layered_volume(depth: int = 9) -> np.ndarray:
    """[z, y, x] volume whose axial slice z holds the value z / 10 (its channel tells which slice it is)."""
    return np.broadcast_to((np.arange(depth, dtype=np.float32) / 10)[:, None, None], (depth, SIZE, SIZE)).copy()


class Recorder(nn.Module):
    """Records its inputs; returns their first channel (a one-channel output of the input's size)."""

    def __init__(self, channels: int):
        super().__init__()
        self.first = nn.Conv2d(channels, 1, 1)  # gives the recorder the input channels of a 2.5D generator
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return x[:, :1]


def test_training_and_inference_slices_have_the_same_channel_order(tmp_path):
    volume = layered_volume()
    # Training: the preprocessing cuts and saves the slices; the training transforms load them.
    slices, geometries = extract_slices(volume, "axial", {"mode": "indices", "indices": [4]}, neighbours=NEIGHBOURS,
                                        output_shape=(SIZE, SIZE), intensity_range=None)
    paths = save_slices(slices, geometries, tmp_path, "sub")
    loaded = translation_train_transforms("image", (SIZE, SIZE), jitter_scale=1.0, flip_prob=0.0,
                                          slice_channels=2 * NEIGHBOURS + 1)({"image": str(paths[0])})["image"]
    training_channels = loaded[:, SIZE // 2, SIZE // 2].tolist()
    # Inference: the same volume through translate_slices.
    recorder = Recorder(2 * NEIGHBOURS + 1)
    translate_slices(recorder, volume, spacing=(1.0, 1.0, 1.0), slice_size=SIZE, neighbours=NEIGHBOURS, batch_size=16)
    inference_channels = torch.cat(recorder.inputs)[4, :, SIZE // 2, SIZE // 2].tolist()
    assert training_channels == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6], abs=1e-5)
    assert inference_channels == pytest.approx(training_channels, abs=1e-5)


def test_neighbour_count_different_from_training_is_refused_before_translating(tmp_path):
    trained = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 1, 1))  # 2.5D with 1 neighbour per side
    weights = tmp_path / "model.pt"
    torch.save({"generator": trained.state_dict()}, weights)
    with pytest.raises(ValueError, match=r"trained with 1 neighbour\(s\) per side .* neighbours=0"):
        VolumeTranslator(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 1)), "t1", "t2",
                         weights=weights, weights_key="generator", neighbours=0, device="cpu",
                         source_intensity={"on_network_scale": True}, target_intensity={"on_network_scale": True})
    with pytest.raises(ValueError, match=r"neighbours=2 \(5 channels\)"):
        VolumeTranslator(trained, "t1", "t2", neighbours=2, device="cpu",
                         source_intensity={"on_network_scale": True}, target_intensity={"on_network_scale": True})
    translator = VolumeTranslator(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 1, 1)), "t1", "t2",
                                  weights=weights, weights_key="generator", neighbours=1, device="cpu",
                                  source_intensity={"on_network_scale": True}, target_intensity={"on_network_scale": True})
    assert translator.slice_kwargs["neighbours"] == 1
