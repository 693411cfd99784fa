"""Fréchet Inception Distance between real and translated images (the CT<->MRI study's main metric).

Features are Inception-v3 pool3 activations (2048 per image) from a TorchScript model in a local file,
loaded with ``torch.jit.load``; nothing is downloaded. The distance is MONAI's
:class:`monai.metrics.FIDMetric`: ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.

The extractor contract (checked when features are computed): the model takes ``(N, 3, S, S)`` float
images in ``model_input_range`` and returns ``(N, F)`` features (``(N, F, 1, 1)`` is flattened). For a
pytorch-fid style model that is ``S = 299`` in [0, 1]; a model that normalises internally from
[0, 255] is used with ``model_input_range=(0, 255)``. Grey images are replicated to 3 channels and
resized bilinearly to ``S x S``.

FID is biased for small sample sizes and needs more images than feature dimensions (2048) for
full-rank covariances; values are only comparable between runs with the same number of images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.metrics import FIDMetric
from torch import nn

from modality_translation.networks.init import WeightsFileError, require_local_file
from modality_translation.networks.layers import check_intensity_range


class InceptionFeatureExtractor(nn.Module):
    """Pool3 features of images from a TorchScript Inception-v3 (or any TorchScript feature model).

    Args:
        torchscript_path: local file written by ``torch.jit.save``.
        image_size: side of the square input the model expects (299 for Inception-v3).
        input_range: intensity range of the images given to :meth:`forward` ([-1, 1] for the GANs).
        model_input_range: intensity range the model expects ([0, 1] for pytorch-fid style models).

    Raises:
        FileNotFoundError: if the file does not exist.
        WeightsFileError: if it is not a TorchScript model.
        ValueError: for an empty intensity range or a non-positive size.
    """

    def __init__(
        self,
        torchscript_path: str,
        image_size: int = 299,
        input_range: Sequence[float] = (-1.0, 1.0),
        model_input_range: Sequence[float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        self.input_range = check_intensity_range(input_range, "input_range")
        self.model_input_range = check_intensity_range(model_input_range, "model_input_range")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        path = require_local_file(torchscript_path, "TorchScript feature extractor")
        try:
            self.model = torch.jit.load(path, map_location="cpu")
        except Exception as exc:  # jit.load raises RuntimeError or ValueError depending on what the file is
            raise WeightsFileError(path, f"cannot be loaded as a TorchScript model ({type(exc).__name__}: {exc})") from exc
        self.path = path
        self.model.eval()
        for parameter in self.model.parameters():  # ScriptModules lack requires_grad_()
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        """Stay in eval mode: features must not depend on batch statistics."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``(N, F)`` float64 features of ``(N, 1 or 3, H, W)`` images in ``input_range``.

        Raises:
            ValueError: for images that are not 2D with 1 or 3 channels, or a model output that is
                not one feature vector per image.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
        low, high = self.input_range
        model_low, model_high = self.model_input_range
        x = (images.float() - low) / (high - low) * (model_high - model_low) + model_low
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        features = self.model(x)
        if not torch.is_tensor(features):
            raise ValueError(f"{self.path}: the model returned a {type(features).__name__}, not a feature tensor")
        if features.ndim == 4 and features.shape[2:] == (1, 1):
            features = features.flatten(1)
        if features.ndim != 2 or features.shape[0] != images.shape[0]:
            raise ValueError(
                f"{self.path}: expected (N, F) features for {images.shape[0]} images, got {tuple(features.shape)}"
            )
        return features.double()


def fid_from_features(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between two sets of feature vectors.

    Args:
        features_a: ``(N_a, F)``, e.g. features of translated images.
        features_b: ``(N_b, F)``, e.g. features of real images of the target modality.

    Returns:
        The FID (>= 0 up to rounding).

    Raises:
        ValueError: for inputs that are not 2D, differ in feature size, or have fewer than 2 rows.
    """
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"{name} must be (N >= 2, F) to estimate a covariance, got {tuple(features.shape)}")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"feature sizes differ: {features_a.shape[1]} vs {features_b.shape[1]}")
    return float(FIDMetric()(features_a, features_b))


@torch.no_grad()
def frechet_inception_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    extractor: InceptionFeatureExtractor,
    batch_size: int = 50,
) -> float:
    """FID between two sets of 2D images, features computed in batches.

    Args:
        images_a: ``(N_a, 1 or 3, H, W)`` in the extractor's ``input_range``.
        images_b: ``(N_b, 1 or 3, H', W')``, same range.
        extractor: the feature model.
        batch_size: images per forward pass.

    Returns:
        The FID.
    """
    features = [
        torch.cat([extractor(batch) for batch in images.split(batch_size)]) for images in (images_a, images_b)
    ]
    return fid_from_features(*features)
