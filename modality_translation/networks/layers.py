"""Layer choices, spectral normalisation and input checks shared by the generators and the discriminators.

Networks take ``norm`` as a plain string so that a MONAI bundle config can set it. Instance norm is
``torch.nn.InstanceNorm2d/3d`` as MONAI creates it (no affine parameters, no running statistics: the
pix2pix/CycleGAN ``norm="instance"``); batch norm is ``BatchNorm`` with affine parameters and running
statistics.

Two layers here compute exactly what their ``torch.nn`` parents compute, with the same parameters and
state-dict keys, but keep the fast path of mixed-precision channels-last training on CPU (oneDNN's
matrix-unit convolutions take channels-last bfloat16 tensors):

- :class:`InstanceNorm2d` / :class:`InstanceNorm3d`: PyTorch's instance norm reshapes its input to
  ``(1, batch * channels, ...)``, which copies a channels-last tensor to the default layout and returns
  the default layout, so the next convolution converts it back (forward and backward). On a
  channels-last input they normalise each sample with batch norm's channels-last kernel instead: batch
  norm over a batch of one, in training mode without running statistics, is instance norm.
- :class:`PaddedConv2d` / :class:`PaddedConv3d`: autocast runs reflection and replication padding in
  float32 (they are on its float32 list), so a reflection-padded convolution under bfloat16 autocast
  pads in float32, at twice the memory traffic, and casts back. A pad only copies values: padding the
  input already cast to the autocast dtype gives the convolution the same input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers.utils import get_norm_layer
from torch import nn
from torch.nn import functional as F
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


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` (4D or 5D, more than one channel) is stored channels-last."""
    if x.ndim == 4:
        layout = torch.channels_last
    elif x.ndim == 5:
        layout = torch.channels_last_3d
    else:
        return False
    return x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=layout)


def _samplewise_instance_norm(norm: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor) -> torch.Tensor:
    """Instance norm of a channels-last batch: batch norm (channels-last kernel) of each sample, concatenated."""
    norm._check_input_dim(x)
    if x.shape[1] != norm.num_features and norm.affine:
        raise ValueError(f"expected input with {norm.num_features} channels, got {tuple(x.shape)}")
    samples = [
        F.batch_norm(sample, None, None, norm.weight, norm.bias, training=True, momentum=0.0, eps=norm.eps)
        for sample in x.split(1)
    ]
    output = samples[0] if len(samples) == 1 else torch.cat(samples)
    if output.requires_grad:
        # The gradient of a U-Net skip arrives as a channel slice of the concatenation's gradient,
        # which no layout makes contiguous; batch norm's backward is then some 20x slower than on a
        # channels-last copy of it.
        layout = torch.channels_last if output.ndim == 4 else torch.channels_last_3d
        output.register_hook(lambda grad: grad.contiguous(memory_format=layout))
    return output


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` that keeps a channels-last input channels-last (same result, same keys).

    Inputs in the default layout, and layers with running statistics, use the parent's forward.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise each sample's channels over their spatial extent."""
        if self.track_running_stats or not _channels_last(input):
            return super().forward(input)
        return _samplewise_instance_norm(self, input)


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that keeps a channels-last-3d input in its layout (same result, same keys)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise each sample's channels over their spatial extent."""
        if self.track_running_stats or not _channels_last(input):
            return super().forward(input)
        return _samplewise_instance_norm(self, input)


_INSTANCE_NORMS = {nn.InstanceNorm2d: InstanceNorm2d, nn.InstanceNorm3d: InstanceNorm3d}


def norm_layer(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer of the given kind for ``channels`` feature maps (``nn.Identity`` for ``"none"``).

    Instance norm is :class:`InstanceNorm2d` / :class:`InstanceNorm3d` (``nn.InstanceNorm1d`` in 1D).
    """
    norm = check_norm(norm)
    if norm == "none":
        return nn.Identity()
    return layout_preserving_norms(get_norm_layer(norm, spatial_dims=spatial_dims, channels=channels))


def layout_preserving_norms(module: nn.Module) -> nn.Module:
    """Replace every ``nn.InstanceNorm2d/3d`` of ``module`` by :class:`InstanceNorm2d` / :class:`InstanceNorm3d`.

    For networks built by other code (MONAI's ``PatchDiscriminator``). The replacement holds the same
    settings and the same parameter and buffer objects, so the state dict is unchanged.

    Returns:
        ``module``, or its replacement when ``module`` itself is an instance norm.
    """
    replacement = _INSTANCE_NORMS.get(type(module))
    if replacement is not None:
        new = replacement(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                          track_running_stats=module.track_running_stats)
        for name, parameter in module.named_parameters(recurse=False):
            new.register_parameter(name, parameter)
        for name, buffer in module.named_buffers(recurse=False):
            new.register_buffer(name, buffer)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        new = layout_preserving_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _padded_conv(conv: nn.Module, x: torch.Tensor, functional: Any) -> torch.Tensor | None:
    """The convolution of ``x`` padded in the autocast dtype, or ``None`` where the parent's forward applies."""
    device_type = x.device.type
    if conv.padding_mode == "zeros" or not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    if x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    with torch.autocast(device_type, enabled=False):
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
    # Under autocast again: the weights are cast as for any convolution.
    return functional(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


class PaddedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose reflection/replication padding runs in the autocast dtype under autocast.

    Same parameters, keys and result as ``nn.Conv2d`` (a pad copies values); without autocast, or
    with zero padding, it is ``nn.Conv2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve ``input``."""
        output = _padded_conv(self, input, F.conv2d)
        return super().forward(input) if output is None else output


class PaddedConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose reflection/replication padding runs in the autocast dtype under autocast."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve ``input``."""
        output = _padded_conv(self, input, F.conv3d)
        return super().forward(input) if output is None else output


def padded_conv(spatial_dims: int) -> type[nn.Module]:
    """The convolution class for padded convolutions: :class:`PaddedConv2d` / :class:`PaddedConv3d` (``nn.Conv1d`` in 1D)."""
    return {2: PaddedConv2d, 3: PaddedConv3d}.get(spatial_dims, nn.Conv1d)


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
