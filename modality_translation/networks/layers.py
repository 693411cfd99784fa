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
- :class:`Conv2d` / :class:`Conv3d` with reflection padding: autocast runs reflection and replication padding in
  float32 (they are on its float32 list), so a reflection-padded convolution under bfloat16 autocast
  pads in float32, at twice the memory traffic, and casts back. A pad only copies values: padding the
  input already cast to the autocast dtype gives the convolution the same input.
- :class:`Conv2d` / :class:`ConvTranspose2d`: oneDNN computes the weight gradient of a convolution on
  a small map (the U-Net's 512-channel levels, 1x1 to 16x16) at a small fraction of the machine's
  rate (tens of GFLOP/s: its reduction runs over few positions while the weights are large); there
  the gradient is one matrix product of the smaller map with the larger one unfolded instead, the
  same sum of products in another order. On channels-last inputs of at most 8x8 the forward pass and
  the input gradient are matrix products on the weight as it lies in memory too (oneDNN reorders the
  whole weight on every call), and within :func:`reused_weight_casts` each weight is cast to the
  autocast dtype once, not once per call.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
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


#: Largest input map (positions per sample) whose weight gradient is one matrix product: measured on a
#: 1-thread AMX core, 2.5-10x faster than oneDNN's kernel up to 16x16 inputs, 2-4x slower at 32x32.
SMALL_MAP_POSITIONS = 256
#: Largest input map whose forward pass and input gradient are matrix products too. oneDNN reorders
#: the whole weight into its blocked format on every call; on the U-Net's 512-channel levels that
#: reorder costs more than the arithmetic up to 8x8 inputs, while at 16x16 oneDNN was as fast or
#: faster (profiled on a 1-thread AMX core, bfloat16, channels-last; the end-to-end effect is in
#: ``benchmarks/bench_training.py``). Channels-last only.
MATMUL_POSITIONS = 64


def _weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The weight ``(a, b, kh, kw)`` as the matrix ``(a, kh * kw * b)``: a view when it is channels-last."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _conv_as_matmul(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding)`` as one matrix product with the unfolded input.

    The weight ``(out, in, kh, kw)`` is used as the matrix of its channels-last memory, ``(out, (kh, kw, in))``,
    so the unfolded columns are ordered (position, kernel offset, channel). Returns a channels-last tensor.
    """
    batch, channels = x.shape[:2]
    kernel = weight.shape[-2:]
    columns = F.unfold(x, kernel, padding=padding, stride=stride)
    positions = columns.shape[-1]
    columns = columns.view(batch, channels, kernel[0] * kernel[1], positions).permute(0, 3, 2, 1)
    output = columns.reshape(batch, positions, -1) @ _weight_matrix(weight).t()
    height = (x.shape[-2] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    return output.view(batch, height, positions // height, weight.shape[0]).permute(0, 3, 1, 2)


def _transposed_conv_as_matmul(x: torch.Tensor, weight: torch.Tensor, stride, padding, size) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, None, stride, padding)`` of output size ``size``, as a matrix product and a fold.

    The weight ``(in, out, kh, kw)`` is the matrix ``(in, (kh, kw, out))`` of its channels-last memory;
    each input position's product is the patch it adds to the output, summed by ``F.fold`` in float32
    (one rounding to the input's dtype, as a convolution kernel rounds its float32 accumulator).
    Returns a channels-last tensor.
    """
    batch, channels, height, width = x.shape
    kernel = weight.shape[-2:]
    rows = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    patches = rows @ _weight_matrix(weight)
    patches = patches.view(batch, height * width, kernel[0] * kernel[1], weight.shape[1]).permute(0, 3, 2, 1)
    patches = patches.reshape(batch, -1, height * width).float()
    output = F.fold(patches, tuple(size), kernel, padding=padding, stride=stride)
    return output.to(x.dtype).contiguous(memory_format=torch.channels_last)


class _SmallMapConv2d(torch.autograd.Function):
    """A 2D (transposed) convolution, groups 1, dilation 1, on a small map: matrix products instead of oneDNN.

    The weight gradient is the sum over samples and positions of products of the input with the
    gradient: with the larger map unfolded (``F.unfold``: one column of ``channels * kernel`` values
    per position of the smaller map), it is ``small_map @ columns.T``, the same products summed in
    another order. On inputs of at most :data:`MATMUL_POSITIONS` positions the forward pass and the
    input gradient are matrix products as well (a convolution's input gradient is the transposed
    convolution of its output gradient with the same weight, and the other way round); elsewhere
    they are PyTorch's (``F.conv2d`` / ``aten.convolution_backward``).
    """

    @staticmethod
    def forward(ctx, x, weight, compute_weight, bias, stride, padding, transposed):  # type: ignore[override]
        # ``weight`` is the parameter (its gradient is returned in its dtype); ``compute_weight`` the
        # same values in the computation's dtype, cast outside the graph (see _cast_weight).
        ctx.parameter_dtype = weight.dtype
        weight = compute_weight
        # Channels-last weights and inputs are matrices as they lie in memory; other layouts would
        # be copied on every call (and keep oneDNN's float32 numerics on the default path).
        matmul = x.shape[-2] * x.shape[-1] <= MATMUL_POSITIONS and all(
            t.is_contiguous(memory_format=torch.channels_last) for t in (x, weight))
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.transposed, ctx.has_bias, ctx.matmul = stride, padding, transposed, bias is not None, matmul
        if not matmul:
            if transposed:
                return F.conv_transpose2d(x, weight, bias, stride, padding)
            return F.conv2d(x, weight, bias, stride, padding)
        if transposed:
            size = [(n - 1) * s - 2 * p + k for n, s, p, k in zip(x.shape[-2:], stride, padding, weight.shape[-2:])]
            output = _transposed_conv_as_matmul(x, weight, stride, padding, size)
        else:
            output = _conv_as_matmul(x, weight, stride, padding)
        return output if bias is None else output + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if not ctx.matmul:
                grad_x = torch.ops.aten.convolution_backward(
                    grad, x, weight, None, ctx.stride, ctx.padding, (1, 1), ctx.transposed, (0, 0), 1, (True, False, False)
                )[0]
            elif ctx.transposed:
                grad_x = _conv_as_matmul(grad, weight, ctx.stride, ctx.padding)
            else:
                grad_x = _transposed_conv_as_matmul(grad, weight, ctx.stride, ctx.padding, x.shape[-2:])
        if ctx.needs_input_grad[1]:
            # Transposed: weight[c, o, i, j] multiplies x[b, c, p] into the output element that the
            # unfolded gradient's column p holds at row (o, i, j). Direct: weight[o, c, i, j] multiplies
            # the unfolded input's (c, i, j) row at column p into grad[b, o, p].
            small, large = (x, grad) if ctx.transposed else (grad, x)
            kernel = weight.shape[-2:]
            columns = F.unfold(large, kernel, padding=ctx.padding, stride=ctx.stride)
            small = small.reshape(*small.shape[:2], -1)
            if weight.is_contiguous(memory_format=torch.channels_last):
                # Laid out (small channel, kernel position, large channel), the product viewed in
                # the weight's shape is already channels-last: no reorder of the large gradient
                # before it accumulates into the parameter.
                columns = columns.reshape(columns.shape[0], large.shape[1], kernel[0] * kernel[1], columns.shape[-1])
                grad_weight = torch.einsum("bcp,bokp->cko", small, columns)
                grad_weight = grad_weight.reshape(weight.shape[0], *kernel, weight.shape[1]).permute(0, 3, 1, 2)
            else:
                grad_weight = torch.einsum("bcp,bkp->ck", small, columns).reshape(weight.shape)
            grad_weight = grad_weight.to(ctx.parameter_dtype)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, None, grad_bias, None, None, None


_WEIGHT_CASTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("weight_casts", default=None)


@contextlib.contextmanager
def reused_weight_casts() -> Iterator[None]:
    """Within this context the small-map convolutions cast each weight to the autocast dtype once.

    Autocast keeps the casts of the weights it makes within one autocast region; the small-map
    convolutions cast their weights themselves, so without this context a generator called two or
    three times in one step casts its (large) weights each time. A cast is reused only while the
    parameter is unchanged (same tensor and version: an optimiser step in the context invalidates it).
    :meth:`GANTrainer.autocast <modality_translation.engines.gan_trainer.GANTrainer.autocast>` enters it
    with autocast.
    """
    token = _WEIGHT_CASTS.set({})
    try:
        yield
    finally:
        _WEIGHT_CASTS.reset(token)


def _cast_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` in ``dtype``, outside the autograd graph, from the context's cache when it holds it."""
    cache = _WEIGHT_CASTS.get()
    entry = None if cache is None else cache.get(id(weight))
    if entry is not None and entry[0] is weight and entry[1] == weight._version and entry[2].dtype == dtype:
        return entry[2]
    cast = weight.detach().to(dtype)
    if cache is not None:
        cache[id(weight)] = (weight, weight._version, cast)
    return cast


def _small_map_conv(conv: nn.Module, x: torch.Tensor, transposed: bool) -> torch.Tensor | None:
    """``conv(x)`` through :class:`_SmallMapConv2d`, or ``None`` where the parent's forward applies."""
    # Measured on CPU (oneDNN) only; CUDA keeps its own kernels.
    small = x.device.type == "cpu" and x.ndim == 4 and x.shape[-2] * x.shape[-1] <= SMALL_MAP_POSITIONS
    plain = conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
    if transposed:
        plain = plain and conv.output_padding == (0, 0)
    # Only where a weight gradient will be computed; never while TorchScript records the graph (an
    # autograd Function cannot be exported).
    training = conv.training and torch.is_grad_enabled() and conv.weight.requires_grad
    if not (small and plain and training) or parametrize.is_parametrized(conv) or torch.jit.is_tracing():
        return None
    weight, bias = conv.weight, conv.bias
    compute_weight = weight
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        # What autocast does to a convolution's arguments.
        dtype = torch.get_autocast_dtype(device_type)
        x, compute_weight = x.to(dtype), _cast_weight(weight, dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast(device_type, enabled=False):
        return _SmallMapConv2d.apply(x, weight, compute_weight, bias, conv.stride, conv.padding, transposed)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with the two fast paths above (same parameters, keys and sums).

    Under autocast, reflection/replication padding runs in the autocast dtype. In training, the weight
    gradient of a zero-padded convolution (groups 1, dilation 1) on CPU of an input of at most
    :data:`SMALL_MAP_POSITIONS` positions per sample is one matrix product, and on channels-last
    inputs of at most :data:`MATMUL_POSITIONS` positions the forward pass and the input gradient are
    too; the input and parameters are then cast to the autocast dtype as autocast casts them.
    Elsewhere it is ``nn.Conv2d``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve ``input``."""
        output = _padded_conv(self, input, F.conv2d)
        if output is None:
            output = _small_map_conv(self, input, transposed=False)
        return super().forward(input) if output is None else output


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose reflection/replication padding runs in the autocast dtype under autocast."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve ``input``."""
        output = _padded_conv(self, input, F.conv3d)
        return super().forward(input) if output is None else output


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose weight gradient on small input maps is one matrix product (same keys, same sums).

    oneDNN computes that gradient on the U-Net's 512-channel levels (1x1 to 16x16 maps) at tens of
    GFLOP/s: its reduction runs over few positions while the weights are large. Same conditions as
    :class:`Conv2d` (including the matrix-product forward pass and input gradient on channels-last
    inputs of at most 8x8), and no output padding.
    """

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """Transposed convolution of ``input``."""
        output = None if output_size is not None else _small_map_conv(self, input, transposed=True)
        return super().forward(input, output_size) if output is None else output


def plain_conv(spatial_dims: int) -> type[nn.Module]:
    """The convolution class: :class:`Conv2d` in 2D, ``nn.Conv1d/3d`` otherwise."""
    return {1: nn.Conv1d, 2: Conv2d, 3: Conv3d}[spatial_dims]


def transposed_conv(spatial_dims: int) -> type[nn.Module]:
    """The transposed-convolution class: :class:`ConvTranspose2d` in 2D, ``nn.ConvTranspose1d/3d`` otherwise."""
    return {1: nn.ConvTranspose1d, 2: ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def padded_conv(spatial_dims: int) -> type[nn.Module]:
    """The class of reflection-padded convolutions: :class:`Conv2d` / :class:`Conv3d` (``nn.Conv1d`` in 1D)."""
    return {2: Conv2d, 3: Conv3d}.get(spatial_dims, nn.Conv1d)


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
