"""Generator weights for inference: the device, local weights files, and the checks made before loading."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from modality_translation.networks.init import WeightsFileError, load_checked_state_dict, read_state_dict_file, require_local_file
from modality_translation.networks.windowed_ct import windowed_input_channels


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``): CUDA if available, else the CPU; anything else is passed to ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_network_weights(weights: str | os.PathLike, key: str | None = None) -> Mapping[str, torch.Tensor]:
    """Read a local weights file: a plain state dict, or the entry ``key`` of a checkpoint of several.

    Args:
        weights: a state-dict file (``torch.save(net.state_dict())``), or a checkpoint holding several
            state dicts (e.g. a training checkpoint ``{"g_ab": ..., "g_ba": ..., "g_optimizer": ...}``)
            from which ``key`` selects one.
        key: entry of a checkpoint; ``None`` for a plain state dict.

    Returns:
        The state dict, on the CPU.

    Raises:
        FileNotFoundError: the file does not exist (nothing is ever downloaded).
        WeightsFileError: not a state dict, or no entry ``key``.
    """
    if key is None:
        return read_state_dict_file(weights)
    path = require_local_file(weights, "weights file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises several unrelated types for a corrupt or foreign file
        raise WeightsFileError(path, f"cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(checkpoint, Mapping) or key not in checkpoint:
        entries = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise WeightsFileError(path, f"has no entry {key!r}; it holds {entries}")
    state = checkpoint[key]
    if not isinstance(state, Mapping):
        raise WeightsFileError(path, f"entry {key!r} is a {type(state).__name__}, not a state dict")
    return state


def load_network_weights(network: nn.Module, weights: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load a local weights file into ``network``, checking names and shapes.

    Args:
        network: the generator.
        weights: the file (see :func:`read_network_weights`).
        key: entry of a checkpoint; ``None`` for a plain state dict.

    Returns:
        ``network``, with the weights loaded.

    Raises:
        FileNotFoundError: the file does not exist (nothing is ever downloaded).
        WeightsFileError: not a state dict, no entry ``key``, or names/shapes that differ from the network.
    """
    load_checked_state_dict(network, read_network_weights(weights, key), weights)
    return network


def input_channels(weights: nn.Module | Mapping[str, torch.Tensor]) -> int | None:
    """Input channels of a 2D generator: those of its first convolution kernel (``None`` without one), per
    channel given to it (a :class:`~modality_translation.networks.WindowedCTNetwork` expands each CT channel
    into its windows).

    Args:
        weights: the network or its state dict (parameters in definition order, as PyTorch keeps them).
    """
    tensors = weights.state_dict().values() if isinstance(weights, nn.Module) else weights.values()
    kernel = next((t for t in tensors if torch.is_tensor(t) and t.ndim == 4), None)
    return None if kernel is None else int(kernel.shape[1]) // windowed_input_channels(weights)


def check_neighbours(weights: nn.Module | Mapping[str, torch.Tensor], neighbours: int, what: str | os.PathLike) -> None:
    """Raise unless a generator takes ``2 * neighbours + 1`` input channels (2.5D: the slice and its neighbours).

    Inference must cut its slices with the neighbour count of the training; a different count would
    feed the channels the network learnt as other slices.

    Args:
        weights: the network or its state dict.
        neighbours: the neighbour count of the inference.
        what: the weights file or network, for the message.

    Raises:
        ValueError: naming the count the weights were trained with.
    """
    channels = input_channels(weights)
    if channels is not None and channels != 2 * neighbours + 1:
        trained = f"{(channels - 1) // 2} neighbour(s) per side" if channels % 2 else f"{channels} input channels"
        raise ValueError(
            f"{what}: the generator was trained with {trained} ({channels} input channels), but inference was set "
            f"to neighbours={neighbours} ({2 * neighbours + 1} channels); use the training's neighbour count"
        )


