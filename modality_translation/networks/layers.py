"""Layer choices, spectral normalisation and input checks shared by the generators and the discriminators.

Networks take ``norm`` as a plain string so that a MONAI bundle config can set it. Instance norm is MONAI's
``InstanceNorm`` (no affine parameters, no running statistics: the pix2pix/CycleGAN ``norm="instance"``);
batch norm is ``BatchNorm`` with affine parameters and running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_norm_layer
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as add_spectral_norm

NORM_TYPES = ("instance", "batch", "none")


def check_norm(norm: str) -> str:
    """Return ``norm`` lower-cased.

    Raises:
        ValueError: if it is not one of ``"instance"``, ``"batch"``, ``"none"``.
    """
    if not isinstance(norm, str) or norm.lower() not in NORM_TYPES:
        raise ValueError(f"norm must be one of {NORM_TYPES}, got {norm!r}")
    return norm.lower()


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer of the given kind for ``channels`` feature maps (``nn.Identity`` for ``"none"``)."""
    norm = check_norm(norm)
    if norm == "none":
        return nn.Identity()
    return get_norm_layer(norm, spatial_dims=spatial_dims, channels=channels)


def conv_bias(norm: str) -> bool:
    """Whether a convolution followed by ``norm`` needs its own bias.

    Batch norm's affine shift makes a bias redundant; instance norm here has no affine shift, so the
    convolution keeps one (the pix2pix rule ``use_bias = norm_layer == InstanceNorm``).
    """
    return check_norm(norm) != "batch"


def check_divisible_input(x: torch.Tensor, spatial_dims: int, factor: int, network: str) -> None:
    """Check that ``x`` has ``spatial_dims`` spatial sizes, each a multiple of ``factor``.

    Encoder-decoder networks halve the size ``log2(factor)`` times and double it back; any other size
    would give an output of a different shape (or a failed skip concatenation) deep inside the network.

    Raises:
        ValueError: naming the network, the required multiple and the shape received.
    """
    spatial = tuple(x.shape[2:])
    if len(spatial) != spatial_dims or any(size % factor for size in spatial):
        raise ValueError(
            f"{network} needs input of shape (batch, channels, {spatial_dims} spatial sizes) with every spatial "
            f"size a multiple of {factor}, got {tuple(x.shape)}"
        )


def check_intensity_range(value_range: Sequence[float], name: str = "input_range") -> tuple[float, float]:
    """Return ``(low, high)`` as floats.

    Raises:
        ValueError: unless ``value_range`` is two numbers with ``high > low`` (named ``name`` in the message).
    """
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"{name} must be (low, high) with high > low, got {value_range!r}")
    return low, high


_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Wrap every convolution of ``module`` in spectral normalisation (Miyato et al. 2018), in place.

    Convolutions already normalised are left as they are, so a block shared by two networks is
    normalised once whichever network is processed first. Call it after the weight initialisation
    (:func:`~modality_translation.networks.init.init_weights` writes the parametrisation's ``original``
    either way).

    Returns:
        ``module`` itself.
    """
    for layer in list(module.modules()):
        if isinstance(layer, _CONVOLUTIONS) and not parametrize.is_parametrized(layer, "weight"):
            add_spectral_norm(layer)
    return module


def has_spectral_norm(module: nn.Module) -> bool:
    """Whether any layer of ``module`` is spectrally normalised."""
    return any(parametrize.is_parametrized(layer, "weight") for layer in module.modules())
