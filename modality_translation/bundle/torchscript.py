"""A trained bundle's generators as TorchScript: built from ``configs/inference.json``, loaded, exported and checked.

The network of each translation direction is the one inference would run: the translator's
``network`` entry of ``inference.json`` (``translator`` for one direction; ``translators#forward`` and
``translators#reverse`` for two), with the weights its ``weights`` / ``weights_key`` entries name (the
whole ``models/model.pt`` without a key; a UNIT bundle's reverse translator has its weights loaded
by its own ``network`` expression). The training record's settings (e.g. ``image_size``,
``generator_channels``) are applied as config overrides, so the network has the trained shapes.

``torch.jit.script`` is tried first (it keeps the control flow); the project's generators check their
input sizes in Python, which scripting rejects, so they are usually traced on a dummy slice of the
configured size and channels. Either way the exported module must reproduce the eager network on a
random slice within :data:`TOLERANCE`, or the export is refused.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from modality_translation.bundle.errors import BundleIntegrityError
from modality_translation.inference.weights import input_channels, load_network_weights
from modality_translation.networks.unit_network import UNITNetwork
from modality_translation.networks.unit_translation import UNITTranslation

__all__ = ["TOLERANCE", "ExportedGenerator", "export_generators", "inference_parser", "translator_ids"]

#: Largest absolute difference allowed between the TorchScript and the eager output.
TOLERANCE = 1e-5
# Seed of the random slices used to trace and to compare: the export is reproducible.
_SEED = 0


@dataclass(frozen=True)
class ExportedGenerator:
    """One direction's generator as TorchScript.

    Attributes:
        module: the TorchScript module (eval mode, on the CPU).
        method: ``"script"`` or ``"trace"``.
        input_shape: the slice shape it was exported and checked with, ``(1, channels, size, size)``.
        max_difference: largest absolute difference from the eager network on a random slice.
    """

    module: torch.jit.ScriptModule
    method: str
    input_shape: tuple[int, ...]
    max_difference: float

    def to_bytes(self, extra_files: Mapping[str, str] | None = None) -> bytes:
        """The ``.ts`` file's bytes (``torch.jit.save``), with ``extra_files`` stored in the archive as MONAI does."""
        buffer = io.BytesIO()
        torch.jit.save(self.module, buffer, _extra_files={name: text.encode("utf-8") for name, text in (extra_files or {}).items()})
        return buffer.getvalue()


def inference_parser(bundle_dir: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> ConfigParser:
    """``configs/inference.json`` of ``bundle_dir`` parsed with its root and weights file pinned to that folder.

    Args:
        bundle_dir: the bundle folder.
        settings: config ids -> values to override (the training record's settings); ids the config
            does not have are left out (a record can hold settings of the training only).
    """
    bundle_dir = Path(bundle_dir).resolve()
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    overrides = {key: value for key, value in (settings or {}).items() if key in parser}
    overrides.update({"bundle_root": str(bundle_dir), "ckpt_path": str(bundle_dir / "models" / "model.pt")})
    parser.update(overrides)
    return parser


def translator_ids(parser: ConfigParser, config_file: str | os.PathLike = "inference.json") -> dict[str, str]:
    """``{"forward": id}`` or ``{"forward": id, "reverse": id}``: the translator entries of an inference config.

    Raises:
        BundleIntegrityError: the config has neither ``translator`` nor ``translators#forward``.
    """
    if "translators#forward" in parser:
        return {direction: f"translators#{direction}" for direction in ("forward", "reverse") if f"translators#{direction}" in parser}
    if "translator" in parser:
        return {"forward": "translator"}
    raise BundleIntegrityError(config_file, "has no 'translator' (or 'translators#forward') entry to build the generator from")


def _source_channels(network: nn.Module) -> int:
    """Channels of the images ``network`` translates (the first convolution of the encoder it reads with)."""
    if isinstance(network, UNITTranslation) and isinstance(network.network, UNITNetwork):
        return input_channels(network.network.encoder(network.direction.partition("_to_")[0]))
    if isinstance(network, UNITNetwork):
        return input_channels(network.encoder(network.direction.partition("_to_")[0]))
    channels = input_channels(network)
    if channels is None:
        raise ValueError(f"{type(network).__name__} has no 2D convolution to read its input channels from")
    return channels


def _to_torchscript(network: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    try:
        return torch.jit.script(network), "script"
    except Exception:  # TorchScript's compiler raises several types for Python it does not support
        pass
    with warnings.catch_warnings():
        # The size checks in the networks' forward are Python conditions: constant for the traced
        # size, which is the configured one, so the tracer's warnings about them are expected.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(network, example, check_trace=False), "trace"


def _export(network: nn.Module, shape: tuple[int, ...], what: str) -> ExportedGenerator:
    generator = torch.Generator().manual_seed(_SEED)
    example = torch.rand(shape, generator=generator) * 2 - 1
    check = torch.rand(shape, generator=generator) * 2 - 1
    module, method = _to_torchscript(network, example)
    with torch.no_grad():
        expected, found = network(check), module(check)
    difference = float((expected - found).abs().max()) if expected.shape == found.shape else float("inf")
    if not difference <= TOLERANCE:
        raise BundleIntegrityError(
            what, f"the TorchScript generator ({method}) differs from the eager one by {difference:.3g} "
            f"(tolerance {TOLERANCE:g}) on a random {tuple(shape)} slice"
        )
    return ExportedGenerator(module, method, tuple(shape), difference)


def export_generators(bundle_dir: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> dict[str, ExportedGenerator]:
    """Export the generator of each translation direction of a trained bundle to TorchScript.

    Args:
        bundle_dir: the bundle folder, with ``configs/inference.json`` and ``models/model.pt``.
        settings: the training record's settings (inference-config ids -> values), applied as overrides.

    Returns:
        ``{"forward": ...}``, plus ``"reverse"`` for a bundle that translates both ways.

    Raises:
        BundleIntegrityError: no translator in the config, or a TorchScript output that differs from the
            eager network's.
        FileNotFoundError, WeightsFileError: ``models/model.pt`` missing, or not the configured network's
            weights (names, shapes or entry).
    """
    bundle_dir = Path(bundle_dir)
    config_file = bundle_dir / "configs" / "inference.json"
    parser = inference_parser(bundle_dir, settings)
    exported = {}
    for direction, translator in translator_ids(parser, config_file).items():
        network = parser.get_parsed_content(f"{translator}#network", instantiate=True)
        weights = parser.get_parsed_content(f"{translator}#weights", instantiate=True)
        if weights is not None:
            load_network_weights(network, weights, parser.get_parsed_content(f"{translator}#weights_key") or None)
        network = network.to("cpu").eval()
        size = int(parser.get_parsed_content(f"{translator}#slice_size"))
        shape = (1, _source_channels(network), size, size)
        exported[direction] = _export(network, shape, f"{bundle_dir / 'models' / 'model.pt'} ({direction} generator)")
    return exported
