"""Where a network's parameters start from: random initialisation, or a local weights file.

``init_weights`` follows the pix2pix / CycleGAN reference code (``networks.init_weights``): convolution and
linear weights from N(0, gain) (or Xavier / Kaiming / orthogonal), biases 0, batch-norm scales from
N(1, gain). MONAI's :func:`monai.networks.utils.normal_init` implements the ``"normal"`` rule but writes
to ``module.weight``, which for a spectral-normalised layer is recomputed from the parametrisation's
``original`` on every access, so the initialisation would be silently lost; hence the rule is kept here.

Pretrained weights are only ever read from a local state-dict file (``torch.save(model.state_dict())``
format, read with ``weights_only=True`` so that a file cannot run code); nothing is downloaded.
``read_state_dict_file`` and ``load_checked_state_dict`` give errors that name the file and say what
does not match, instead of PyTorch's generic ``load_state_dict`` message.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from functools import partial

import torch
from torch import nn
from torch.nn.utils import parametrize

from medgan_common.errors import PreprocessingError

INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")

# How many offending keys an error message lists before it says "and N more".
_KEYS_SHOWN = 5


class WeightsFileError(PreprocessingError):
    """A weights file exists but cannot be used: not a state dict, or keys/shapes that do not match the network.

    A ``ValueError`` with ``path`` and ``reason`` attributes, like every input error of the project.
    """


def _weight_tensor(module: nn.Module) -> torch.Tensor:
    # With spectral normalisation ``module.weight`` is recomputed from ``original`` on every access, so
    # initialising it would be lost; the trainable tensor is the parametrisation's ``original``.
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _init_module(module: nn.Module, init_type: str, gain: float) -> None:
    class_name = module.__class__.__name__
    has_weight = getattr(module, "weight", None) is not None
    if has_weight and ("Conv" in class_name or "Linear" in class_name):
        weight = _weight_tensor(module).data
        if init_type == "normal":
            nn.init.normal_(weight, 0.0, gain)
        elif init_type == "xavier":
            nn.init.xavier_normal_(weight, gain=gain)
        elif init_type == "kaiming":
            nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
        elif init_type == "orthogonal":
            nn.init.orthogonal_(weight, gain=gain)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias.data)
    elif "BatchNorm" in class_name and has_weight:
        nn.init.normal_(module.weight.data, 1.0, gain)
        nn.init.zeros_(module.bias.data)


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise the weights of every convolution, linear and batch-norm layer of ``net`` in place.

    Args:
        net: the network.
        init_type: ``"normal"`` (N(0, gain), the pix2pix/CycleGAN default), ``"xavier"`` (Xavier normal
            with this gain), ``"kaiming"`` (Kaiming normal, fan-in; ``gain`` unused) or ``"orthogonal"``.
        gain: standard deviation (``"normal"``) or gain (``"xavier"``, ``"orthogonal"``); batch-norm
            scales are drawn from N(1, gain) in every case.

    Returns:
        ``net`` itself, so that the call can be chained.

    Raises:
        ValueError: for an unknown ``init_type``.
    """
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type must be one of {INIT_TYPES}, got {init_type!r}")
    net.apply(partial(_init_module, init_type=init_type, gain=gain))
    return net


def require_local_file(path: str | os.PathLike, what: str) -> str:
    """Return ``path`` as a string if it is an existing file.

    Raises:
        FileNotFoundError: ``[Errno 2] <what> not found: '<path>'`` otherwise; weights are never
            downloaded, so a missing file is always the user's to provide.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", path)
    return path


def read_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict (a mapping of parameter names to tensors) saved with ``torch.save``.

    Args:
        path: local file, e.g. a torchvision ``resnet18`` or ``vgg19`` state dict.

    Returns:
        The mapping of parameter names to tensors, on the CPU.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        WeightsFileError: if the file cannot be read with ``torch.load(weights_only=True)`` or does not
            hold a mapping of strings to tensors (a whole pickled model, a training checkpoint, ...).
    """
    path = require_local_file(path, "weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises several unrelated types for a corrupt or foreign file
        raise WeightsFileError(path, f"cannot be read as a PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping):
        raise WeightsFileError(path, f"holds a {type(state).__name__}, not a state dict (a mapping of names to tensors)")
    not_tensors = [key for key, value in state.items() if not isinstance(key, str) or not torch.is_tensor(value)]
    if not_tensors:
        raise WeightsFileError(
            path,
            "is not a state dict: entries that are not tensors: " + _list_keys(not_tensors)
            + " (a training checkpoint must be reduced to its model state dict first)",
        )
    return dict(state)


def load_checked_state_dict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    ignore: Callable[[str], bool] = lambda key: False,
) -> None:
    """Copy ``state`` into ``module`` after checking that keys and shapes match exactly.

    Args:
        module: the network to load into; all of its parameters and buffers must be in ``state``.
        state: parameter names to tensors, e.g. from :func:`read_state_dict_file`.
        path: the file ``state`` came from, for the error messages.
        ignore: says which keys of ``state`` that ``module`` lacks are expected and skipped (a
            classifier head, layers beyond a truncated network); any other extra key is an error.

    Raises:
        WeightsFileError: listing missing keys, unexpected keys or shape mismatches.
    """
    expected = module.state_dict()
    for name, submodule in module.named_modules():
        # a module's own check of what its buffers record names the problem better than a key list
        check = getattr(submodule, "check_saved_state", None)
        if callable(check):
            try:
                check(state, f"{name}." if name else "")
            except ValueError as error:
                raise WeightsFileError(path, str(error)) from None
    # Batch-norm step counters are not weights, and files saved before PyTorch 0.4.1 (among them
    # torchvision's ImageNet ResNets) do not have them: the network's own counter is kept.
    state = {**{key: value for key, value in expected.items() if key.endswith("num_batches_tracked")}, **state}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected and not ignore(key)]
    mismatched = [
        f"{key} (file {tuple(state[key].shape)}, network {tuple(expected[key].shape)})"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + _list_keys(missing))
    if unexpected:
        problems.append("unexpected keys: " + _list_keys(unexpected))
    if mismatched:
        problems.append("shape mismatches: " + _list_keys(mismatched))
    if problems:
        raise WeightsFileError(path, "does not match the network; " + "; ".join(problems))
    try:
        module.load_state_dict({key: state[key] for key in expected}, strict=True)
    except ValueError as error:  # a module refusing what its buffers record (e.g. WindowedCTNetwork's windows)
        raise WeightsFileError(path, str(error)) from None


def _list_keys(keys: list) -> str:
    shown = ", ".join(str(key) for key in keys[:_KEYS_SHOWN])
    if len(keys) > _KEYS_SHOWN:
        shown += f" and {len(keys) - _KEYS_SHOWN} more"
    return shown
