"""CT seen through several windows: a network's CT side as window channels, back to one CT scale.

In a single wide window (air to dense bone, e.g. -1000..2000 HU on [-1, 1]) the brain is nearly
uniform to a network: grey and white matter, 10 HU apart, differ by 0.007 on that scale, below the
noise. Radiologists read a head CT through several windows (brain 40/80, subdural 80/200, bone
600/2800), and so can a network: :class:`CTWindowChannels` turns a CT slice on the cohort's scale
into one channel per window; :class:`CTWindowBlend` turns window channels (a generator's output)
back into one CT on that scale; :class:`WindowedCTNetwork` puts them around a generator or a
discriminator, so that the data, the trainers, validation and volume inference keep handling one
CT channel on the cohort's scale (whose inverse is Hounsfield units) while the network sees and
produces window channels.

The blend is exact for consistent channels (every channel the window of one HU value): the HU of
each channel is weighted by ``(1 - u^2) / width``, ``u`` its position in the window on [-1, 1], so a
saturated channel (at its window's edge, where it says only "beyond") has weight 0 and each
unsaturated one gives the true HU; for a network's inconsistent channels the narrow windows, the
more precise in HU, count more. The weights are smooth, so every channel receives gradients.

The window bounds are buffers of :class:`WindowedCTNetwork`, saved in its checkpoints: weights
trained with one window set refuse to load into a network built with another (inference cannot
feed the channels in another order or with other windows than the training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from modality_translation.networks.bilateral import bilateral_filter_2d
from preprocessing.windowing import WindowPreset, WindowSpec, get_window, get_windows, hu_to_window, window_to_hu

#: The windows of the CT <-> MR bundles, in channel order: brain, subdural, bone (the neuroradiology
#: reading windows; as RGB, the three-window input common in head-CT deep learning).
DEFAULT_CT_CHANNEL_WINDOWS = ("brain", "subdural", "bone")
#: HU tolerance of "window inside the scale window" (float rounding of recorded windows).
_HU_TOLERANCE = 1e-3


def _bounds(windows: Sequence[WindowPreset]) -> torch.Tensor:
    return torch.tensor([[w.lower, w.upper] for w in windows], dtype=torch.float64)


def check_windows_inside(windows: Sequence[WindowSpec], scale_window: WindowSpec) -> list[WindowPreset]:
    """The windows, checked to lie inside the scale window (its values outside are clipped: lost).

    Args:
        windows: the channel windows.
        scale_window: the window of the one-channel CT scale (the cohort's recorded ``ct_window``).

    Returns:
        The windows as presets, in order.

    Raises:
        ValueError: no window, or a window reaching beyond the scale window (naming both).
    """
    presets = get_windows(list(windows))
    if not presets:
        raise ValueError("at least one CT window is needed")
    scale = get_window(scale_window)
    for preset in presets:
        if preset.lower < scale.lower - _HU_TOLERANCE or preset.upper > scale.upper + _HU_TOLERANCE:
            raise ValueError(
                f"CT window {preset.name!r} [{preset.lower:g}, {preset.upper:g}] HU reaches beyond the CT scale's window "
                f"[{scale.lower:g}, {scale.upper:g}] HU (the cohort's ct_window): the values beyond it were clipped by the "
                "preprocessing; choose windows inside it")
    return presets


class _WindowSet(nn.Module):
    """The windows of a CT's channels and the scale window they are computed from (see the subclasses)."""

    def __init__(self, windows: Sequence[WindowSpec] = DEFAULT_CT_CHANNEL_WINDOWS,
                 scale_window: WindowSpec = (500.0, 3000.0), out_range: Sequence[float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.windows = check_windows_inside(windows, scale_window)
        self.scale_window = get_window(scale_window)
        self.out_range = tuple(float(v) for v in out_range)


class CTWindowChannels(_WindowSet):
    """``(N, S, *spatial)`` CT on the scale window's ``out_range`` -> ``(N, S * C, *spatial)`` window channels.

    Each input channel (a slice; ``S = 2N + 1`` for 2.5D) becomes its ``C`` windows, slice-major:
    ``[slice 0: window 0 .. C-1, slice 1: ...]``. Differentiable (clamped linear maps).

    With ``denoise``, each slice is first put through a 2D bilateral filter in HU
    (:func:`~modality_translation.networks.bilateral.bilateral_filter_2d`): the brain window magnifies
    the CT's quantum noise along with grey and white matter (10 HU apart under several HU of noise);
    the filter averages the noise within a tissue and keeps the edges between tissues.

    Args:
        windows: the channel windows (preset names, ``{"center", "width"}`` or ``[center, width]``).
        scale_window: the window of the input scale (the cohort's ``ct_window``).
        out_range: the value range of the input scale and of every channel.
        denoise: ``[spatial_sigma, range_sigma]`` of the bilateral filter, in pixels and HU; ``None``: none.

    Raises:
        ValueError: a window beyond the scale window, or ``denoise`` not two positive numbers.
    """

    def __init__(self, windows: Sequence[WindowSpec] = DEFAULT_CT_CHANNEL_WINDOWS,
                 scale_window: WindowSpec = (500.0, 3000.0), out_range: Sequence[float] = (-1.0, 1.0),
                 denoise: Sequence[float] | None = None) -> None:
        super().__init__(windows, scale_window, out_range)
        self.denoise = _check_denoise(denoise)

    def to_hu(self, x: torch.Tensor) -> torch.Tensor:
        """Values on the scale window's range -> HU."""
        return window_to_hu(x, self.scale_window, self.out_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Window every input channel; see the class."""
        hu = self.to_hu(x)
        if self.denoise is not None:
            hu = bilateral_filter_2d(hu, *self.denoise)
        channels = torch.stack([hu_to_window(hu, w, self.out_range) for w in self.windows], dim=2)
        return channels.flatten(1, 2)


class CTWindowBlend(_WindowSet):
    """``(N, C, *spatial)`` window channels -> ``(N, 1, *spatial)`` CT on the scale window's ``out_range``.

    HU per channel through its window's inverse, averaged with weights ``(1 - u^2) / width`` (``u``:
    the channel's value on [-1, 1]); where every channel is saturated, the widest window's value.
    Exact for the windows of one HU value inside the widest window.

    Args:
        windows: the windows of the channels, in order.
        scale_window: the window of the output scale.
        out_range: the value range of the channels and of the output.

    Raises:
        ValueError: a window beyond the scale window.
    """

    def __init__(self, windows: Sequence[WindowSpec] = DEFAULT_CT_CHANNEL_WINDOWS,
                 scale_window: WindowSpec = (500.0, 3000.0), out_range: Sequence[float] = (-1.0, 1.0)) -> None:
        super().__init__(windows, scale_window, out_range)
        self.widest = max(range(len(self.windows)), key=lambda c: self.windows[c].width)

    def to_hu(self, channels: torch.Tensor) -> torch.Tensor:
        """``(N, C, *spatial)`` window channels -> ``(N, 1, *spatial)`` HU."""
        if channels.shape[1] != len(self.windows):
            raise ValueError(f"{channels.shape[1]} channels given to a blend of {len(self.windows)} CT windows")
        low, high = self.out_range
        clipped = channels.clamp(low, high)
        unit = (clipped - low) * (2.0 / (high - low)) - 1.0
        hu = torch.stack([window_to_hu(clipped[:, c], w, self.out_range) for c, w in enumerate(self.windows)], dim=1)
        widths = torch.tensor([w.width for w in self.windows], dtype=channels.dtype, device=channels.device)
        weights = (1.0 - unit * unit) / widths.view(1, -1, *([1] * (channels.ndim - 2)))
        total = weights.sum(dim=1, keepdim=True)
        blended = (weights * hu).sum(dim=1, keepdim=True) / total.clamp_min(torch.finfo(total.dtype).tiny)
        return torch.where(total > 0, blended, hu[:, self.widest: self.widest + 1])

    def forward(self, channels: torch.Tensor) -> torch.Tensor:
        """Blend to one CT channel on the scale; see the class."""
        return hu_to_window(self.to_hu(channels), self.scale_window, self.out_range)


class WindowedCTNetwork(nn.Module):
    """A network whose CT side is window channels, used as if it took or gave one CT channel.

    - ``window_input``: the input ``(N, S, *spatial)`` on the CT scale goes through
      :class:`CTWindowChannels` (the network takes ``S * C`` channels): a CT -> MR generator, a CT
      discriminator.
    - ``window_output``: the network's ``C`` output channels go through :class:`CTWindowBlend` (one
      channel on the CT scale): an MR -> CT generator.

    The window bounds and the scale window are buffers (``input_windows``, ``output_windows``,
    ``scale_window``, in HU) saved with the weights, and so is the input's bilateral filter
    (``input_denoise``); loading weights recorded with other windows or another filter raises.

    Args:
        network: the generator or discriminator (its channels already counted in windows).
        windows: the channel windows, in order.
        scale_window: the window of the one-channel CT scale (the cohort's ``ct_window``).
        out_range: the range of that scale and of the channels.
        window_input: window the input.
        window_output: blend the output.
        denoise: ``[spatial_sigma, range_sigma]`` (pixels, HU) of a bilateral filter on the windowed
            input (:class:`CTWindowChannels`); ``None``: none.

    Raises:
        ValueError: neither side windowed, windows beyond the scale window, or ``denoise`` without
            ``window_input``.
    """

    def __init__(self, network: nn.Module, windows: Sequence[WindowSpec] = DEFAULT_CT_CHANNEL_WINDOWS,
                 scale_window: WindowSpec = (500.0, 3000.0), out_range: Sequence[float] = (-1.0, 1.0),
                 window_input: bool = False, window_output: bool = False,
                 denoise: Sequence[float] | None = None) -> None:
        super().__init__()
        if not (window_input or window_output):
            raise ValueError("WindowedCTNetwork needs window_input or window_output (else use the network itself)")
        if denoise is not None and not window_input:
            raise ValueError("WindowedCTNetwork: denoise filters the windowed input; it needs window_input")
        presets = check_windows_inside(windows, scale_window)
        self.network = network
        self.channels = CTWindowChannels(presets, scale_window, out_range, denoise) if window_input else None
        self.blend = CTWindowBlend(presets, scale_window, out_range) if window_output else None
        scale = get_window(scale_window)
        self.register_buffer("scale_window", torch.tensor([scale.lower, scale.upper], dtype=torch.float64))
        if window_input:
            self.register_buffer("input_windows", _bounds(presets))
        if self.channels is not None and self.channels.denoise is not None:
            self.register_buffer("input_denoise", torch.tensor(self.channels.denoise, dtype=torch.float64))
        if window_output:
            self.register_buffer("output_windows", _bounds(presets))

    @property
    def channels_per_input(self) -> int:
        """Network input channels per channel given (the window count when the input is windowed)."""
        return 1 if self.channels is None else len(self.channels.windows)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The network between the windowing of its input and the blending of its output."""
        if self.channels is not None:
            # float32 whatever the autocast: HU in bfloat16 would be a few HU off near bone.
            x = self.channels(x.float())
            if _channels_last_weights(self.network):
                x = x.contiguous(memory_format=torch.channels_last)
        y = self.network(x, *args, **kwargs)
        return y if self.blend is None else self.blend(y.float())

    def check_saved_state(self, state_dict: dict, prefix: str = "") -> None:
        """Refuse weights recorded with other CT windows or another input filter than this network's.

        Weights trained through other windows would be fed (or read out) wrongly. Called on loading,
        and by :func:`~modality_translation.networks.load_checked_state_dict` before it compares keys, so
        that a filter present on one side only is named as such rather than as an unexpected key.

        Args:
            state_dict: the saved weights.
            prefix: this network's key prefix in ``state_dict``.

        Raises:
            ValueError: naming what the weights were trained with and what the network is built with.
        """
        own = dict(self.named_buffers(recurse=False))
        saved_denoise, built_denoise = state_dict.get(prefix + "input_denoise"), own.get("input_denoise")
        if (saved_denoise is None) != (built_denoise is None) or (
                saved_denoise is not None and not torch.allclose(saved_denoise.to(built_denoise), built_denoise)):
            raise ValueError(
                f"the weights were trained with {_describe_denoise(saved_denoise)}, but the network is built with "
                f"{_describe_denoise(built_denoise)}: use the training's CT input filter (its training record)")
        for name, buffer in own.items():
            if name == "input_denoise":
                continue
            saved = state_dict.get(prefix + name)
            if saved is not None and (saved.shape != buffer.shape or not torch.allclose(
                    saved.to(buffer), buffer, atol=_HU_TOLERANCE)):
                raise ValueError(
                    f"the weights were trained with CT {name.replace('_', ' ')} {_describe(saved)} HU, but the network is "
                    f"built with {_describe(buffer)} HU: use the training's CT windows (its training record)")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        self.check_saved_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _channels_last_weights(network: nn.Module) -> bool:
    """Whether the network's first 4D weight is in channels-last layout (the trainer's fast path)."""
    weight = next((p for p in network.parameters() if p.ndim == 4), None)
    return weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def _check_denoise(denoise: Sequence[float] | None) -> tuple[float, float] | None:
    if denoise is None:
        return None
    values = tuple(float(v) for v in denoise)
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"CT input denoise must be [spatial_sigma_px, range_sigma_hu], both positive, got {list(denoise)}")
    return values


def _describe_denoise(sigmas: torch.Tensor | None) -> str:
    if sigmas is None:
        return "no CT input filter"
    spatial, value = sigmas.detach().cpu().double().tolist()
    return f"a bilateral CT input filter ({spatial:g} px, {value:g} HU)"


def _describe(bounds: torch.Tensor) -> str:
    values = bounds.detach().cpu().double().reshape(-1, 2).tolist()
    return ", ".join(f"[{low:g}, {high:g}]" for low, high in values)


def windowed_input_channels(state: Any) -> int:
    """Network input channels per channel given, from a :class:`WindowedCTNetwork` or its state dict (1 otherwise)."""
    if isinstance(state, WindowedCTNetwork):
        return state.channels_per_input
    if isinstance(state, nn.Module):
        state = state.state_dict()
    bounds = next((value for key, value in state.items() if key == "input_windows" or key.endswith(".input_windows")), None)
    return 1 if bounds is None else int(bounds.shape[0])
