"""CT intensity windowing: Hounsfield units to a display/network range and back.

A window is a (center, width) pair in HU. Windowing clips the HU values to
``[center - width / 2, center + width / 2]`` and scales that interval linearly to ``[0, 1]``
or ``[-1, 1]``. Several windows can be stacked as channels (``(C, ...)``), the usual input of
2D CT networks. :func:`window_to_hu` maps network outputs back to HU: exact inside the window;
values at the window's edges come back as the edge HU (what was clipped cannot be recovered).

The pure functions accept numpy arrays and torch tensors (including MONAI ``MetaTensor``) and
return the same type. MONAI's ``ScaleIntensityRange`` computes the same mapping but always
returns a torch ``MetaTensor`` (and is ~20x slower on numpy input), so the two-line affine map is
written here once (:func:`rescale_intensity`) and shared by the normalisation and slice steps.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Transform
from monai.utils import TraceKeys, TransformBackends

NdarrayOrTensor = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class WindowPreset:
    """A CT intensity window in Hounsfield units.

    Args:
        name: short identifier (``"brain"``, ``"bone"``, ... or ``"custom"``).
        center: window level (HU).
        width: window width (HU), strictly positive.
    """

    name: str
    center: float
    width: float

    def __post_init__(self) -> None:
        if not np.isfinite(self.center) or not np.isfinite(self.width) or self.width <= 0:
            raise ValueError(
                f"window {self.name!r}: center must be finite and width a positive number, "
                f"got center={self.center}, width={self.width}"
            )

    @property
    def lower(self) -> float:
        """Lowest HU inside the window (``center - width / 2``)."""
        return self.center - self.width / 2.0

    @property
    def upper(self) -> float:
        """Highest HU inside the window (``center + width / 2``)."""
        return self.center + self.width / 2.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, accepted back by :func:`get_window`."""
        return asdict(self)


# Standard head CT windows (W/L in HU) as used in neuroradiology reading rooms.
WINDOW_PRESETS: dict[str, WindowPreset] = {
    preset.name: preset
    for preset in (
        WindowPreset("brain", center=40.0, width=80.0),
        WindowPreset("subdural", center=80.0, width=200.0),
        WindowPreset("stroke", center=40.0, width=40.0),
        WindowPreset("bone", center=600.0, width=2800.0),
        WindowPreset("soft_tissue", center=40.0, width=400.0),
    )
}

WindowSpec = Union[str, WindowPreset, Mapping[str, Any], Sequence[float]]


def get_window(window: WindowSpec) -> WindowPreset:
    """Resolve a window given by preset name, mapping, ``(center, width)`` pair or :class:`WindowPreset`.

    Args:
        window: a preset name (case-insensitive; ``"soft tissue"``/``"soft-tissue"`` are accepted
            for ``"soft_tissue"``), a mapping ``{"center": c, "width": w}`` with an optional
            ``"name"``, a ``(center, width)`` pair, or a :class:`WindowPreset` (returned as is).

    Returns:
        The resolved :class:`WindowPreset`.

    Raises:
        ValueError: unknown preset name, a mapping without ``center``/``width``, or a width <= 0.
    """
    if isinstance(window, WindowPreset):
        return window
    if isinstance(window, str):
        key = window.strip().lower().replace(" ", "_").replace("-", "_")
        if key not in WINDOW_PRESETS:
            raise ValueError(
                f"unknown CT window preset {window!r}; known presets: {', '.join(sorted(WINDOW_PRESETS))}, "
                "or give {'center': ..., 'width': ...} in HU"
            )
        return WINDOW_PRESETS[key]
    if isinstance(window, Mapping):
        missing = {"center", "width"} - set(window)
        if missing:
            raise ValueError(f"custom CT window {dict(window)!r} lacks {', '.join(sorted(missing))} (HU)")
        return WindowPreset(str(window.get("name", "custom")), float(window["center"]), float(window["width"]))
    if isinstance(window, Sequence) and len(window) == 2:
        return WindowPreset("custom", float(window[0]), float(window[1]))
    raise ValueError(f"cannot interpret {window!r} as a CT window: give a preset name, {{'center','width'}} or (center, width)")


def get_windows(windows: WindowSpec | Sequence[WindowSpec]) -> list[WindowPreset]:
    """Resolve one window or a list of windows (see :func:`get_window`) to a list of presets.

    A ``(center, width)`` pair of numbers is one window, not two.
    """
    is_single = isinstance(windows, (str, WindowPreset, Mapping)) or (
        isinstance(windows, Sequence) and len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows)
    )
    resolved = [get_window(windows)] if is_single else [get_window(w) for w in windows]  # type: ignore[union-attr]
    if not resolved:
        raise ValueError("at least one CT window is required")
    return resolved


def _check_range(value_range: Sequence[float], what: str) -> tuple[float, float]:
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"{what} must be an increasing pair (low, high), got {tuple(value_range)}")
    return low, high


def rescale_intensity(
    image: NdarrayOrTensor,
    in_range: Sequence[float],
    out_range: Sequence[float] = (0.0, 1.0),
    clip: bool = True,
) -> NdarrayOrTensor:
    """Map ``in_range`` linearly onto ``out_range``, optionally clipping to ``out_range``.

    Args:
        image: numpy array or torch tensor.
        in_range: ``(low, high)`` source interval, ``high > low``.
        out_range: ``(low, high)`` target interval.
        clip: clip the result to ``out_range``.

    Returns:
        Same type (and device) as ``image``; floating point (float32 unless ``image`` is a wider float).

    Raises:
        ValueError: a range that is not increasing.
    """
    in_low, in_high = _check_range(in_range, "in_range")
    out_low, out_high = _check_range(out_range, "out_range")
    scale = (out_high - out_low) / (in_high - in_low)
    if isinstance(image, torch.Tensor):
        values = image if image.is_floating_point() else image.to(torch.float32)
        result = (values - in_low) * scale + out_low
        return result.clamp(out_low, out_high) if clip else result
    values = np.asarray(image)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float32)
    result = (values - values.dtype.type(in_low)) * values.dtype.type(scale) + values.dtype.type(out_low)
    return np.clip(result, out_low, out_high, out=result) if clip else result


def hu_to_window(image: NdarrayOrTensor, window: WindowSpec = "brain", out_range: Sequence[float] = (0.0, 1.0)) -> NdarrayOrTensor:
    """Window a CT image: clip to the window and scale it to ``out_range``.

    Args:
        image: HU values (numpy array or torch tensor, any shape).
        window: preset name, ``{"center", "width"}`` mapping, ``(center, width)`` or :class:`WindowPreset`.
        out_range: ``(0, 1)`` or ``(-1, 1)`` (any increasing pair is accepted).

    Returns:
        The windowed image, same shape and type as ``image``: ``lower`` HU maps to ``out_range[0]``,
        ``upper`` HU to ``out_range[1]``, values outside are clipped.
    """
    preset = get_window(window)
    return rescale_intensity(image, (preset.lower, preset.upper), out_range, clip=True)


def hu_to_windows(
    image: NdarrayOrTensor, windows: Sequence[WindowSpec], out_range: Sequence[float] = (0.0, 1.0)
) -> NdarrayOrTensor:
    """Stack several windows of one CT image as channels.

    Args:
        image: HU values, any shape ``S``.
        windows: the windows, in channel order.
        out_range: output interval of every channel.

    Returns:
        Array/tensor of shape ``(len(windows), *S)``; channel ``c`` is ``hu_to_window(image, windows[c])``.
    """
    channels = [hu_to_window(image, w, out_range) for w in get_windows(windows)]
    if isinstance(image, torch.Tensor):
        return torch.stack(channels)
    return np.stack(channels)


def window_to_hu(windowed: NdarrayOrTensor, window: WindowSpec = "brain", in_range: Sequence[float] = (0.0, 1.0)) -> NdarrayOrTensor:
    """Inverse of :func:`hu_to_window`: map windowed values back to HU.

    Args:
        windowed: values in ``in_range`` (values outside are clipped to it first, so a network
            output that overshoots maps to the window's edge HU).
        window: the window that was applied.
        in_range: the ``out_range`` that was used when windowing.

    Returns:
        HU values, same shape and type as ``windowed``; exact (to floating-point rounding) for
        HU values that were inside the window.
    """
    preset = get_window(window)
    return rescale_intensity(windowed, in_range, (preset.lower, preset.upper), clip=True)


def windows_to_hu(
    stack: NdarrayOrTensor, windows: WindowSpec | Sequence[WindowSpec], in_range: Sequence[float] = (0.0, 1.0)
) -> NdarrayOrTensor:
    """Invert a (channel-first) window stack: channel ``c`` is mapped back with ``windows[c]``.

    With a single window, every element is mapped with it whatever the shape.

    Raises:
        ValueError: several windows and a first dimension that does not match their number.
    """
    presets = get_windows(windows)
    if len(presets) == 1:
        return window_to_hu(stack, presets[0], in_range)
    if stack.shape[0] != len(presets):
        raise ValueError(f"a stack of {stack.shape[0]} channels cannot be inverted with {len(presets)} windows")
    channels = [window_to_hu(stack[c], w, in_range) for c, w in enumerate(presets)]
    return torch.stack(channels) if isinstance(stack, torch.Tensor) else np.stack(channels)


class CTWindow(InvertibleTransform, Transform):
    """MONAI transform: window a channel-first CT image (HU) to ``out_range``.

    With one window the image keeps its shape. With several windows the input must have a single
    channel, ``(1, *spatial)``, and the output is ``(len(windows), *spatial)`` in the given order.
    Applied to a ``MetaTensor`` while MONAI meta tracking is on, the windows are recorded so that
    :meth:`inverse` (and ``monai.transforms.Invertd``) maps outputs back to HU.

    Args:
        windows: one window or a list of windows (see :func:`get_window`).
        out_range: output interval, ``(0, 1)`` or ``(-1, 1)``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, windows: WindowSpec | Sequence[WindowSpec] = "brain", out_range: Sequence[float] = (0.0, 1.0)):
        self.windows = get_windows(windows)
        self.out_range = _check_range(out_range, "out_range")

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Window ``img`` (see class docstring).

        Raises:
            ValueError: several windows and an input with more than one channel.
        """
        if len(self.windows) == 1:
            out = hu_to_window(img, self.windows[0], self.out_range)
        else:
            if img.shape[0] != 1:
                raise ValueError(
                    f"a stack of {len(self.windows)} CT windows needs a single-channel input (1, ...), got shape {tuple(img.shape)}"
                )
            out = hu_to_windows(img[0], self.windows, self.out_range)
        if isinstance(out, MetaTensor):
            out = self.push_transform(
                out, extra_info={"windows": [w.to_dict() for w in self.windows], "out_range": list(self.out_range)}
            )
        return out

    def inverse(self, data: NdarrayOrTensor) -> NdarrayOrTensor:
        """Map a windowed ``MetaTensor`` (or a network output that inherited its trace) back to HU."""
        info = self.pop_transform(data)[TraceKeys.EXTRA_INFO]
        return windows_to_hu(data, info["windows"], info["out_range"])


class InverseCTWindow(Transform):
    """MONAI transform: map windowed values (e.g. a generator's output) back to HU.

    Args:
        windows: the window(s) used for the forward mapping; with several, the input's first
            dimension must be their number (channel ``c`` is inverted with ``windows[c]``).
        in_range: the interval the windowed values live in, ``(0, 1)`` or ``(-1, 1)``.
    """

    backend = CTWindow.backend

    def __init__(self, windows: WindowSpec | Sequence[WindowSpec] = "brain", in_range: Sequence[float] = (0.0, 1.0)):
        self.windows = get_windows(windows)
        self.in_range = _check_range(in_range, "in_range")

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return windows_to_hu(img, self.windows, self.in_range)


class _KeyWiseMapTransform(MapTransform):
    """Applies ``self.transform`` to every selected key."""

    transform: Transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class CTWindowd(InvertibleTransform, _KeyWiseMapTransform):
    """Dictionary twin of :class:`CTWindow` (invertible with ``monai.transforms.Invertd``).

    Args:
        keys: keys of the CT images to window.
        windows: one window or a list of windows (see :func:`get_window`).
        out_range: output interval.
        allow_missing_keys: do not raise for absent keys.
    """

    backend = CTWindow.backend

    def __init__(
        self,
        keys: KeysCollection,
        windows: WindowSpec | Sequence[WindowSpec] = "brain",
        out_range: Sequence[float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.transform = CTWindow(windows, out_range)

    def inverse(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform.inverse(d[key])
        return d


class InverseCTWindowd(_KeyWiseMapTransform):
    """Dictionary twin of :class:`InverseCTWindow`."""

    backend = CTWindow.backend

    def __init__(
        self,
        keys: KeysCollection,
        windows: WindowSpec | Sequence[WindowSpec] = "brain",
        in_range: Sequence[float] = (0.0, 1.0),
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.transform = InverseCTWindow(windows, in_range)
