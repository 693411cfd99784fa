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

TorchScript names the types it compiles after the ones already compiled in the process (a second
export of the same network gets ``___torch_mangle_<n>`` names), so an export's bytes depend on what
the process exported before. :func:`save_torchscript` therefore exports in a fresh Python process
(``python -m modality_translation.bundle.torchscript``): the same bundle gives the same files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
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
from modality_translation.networks.init import WeightsFileError
from modality_translation.networks.unit_network import UNITNetwork
from modality_translation.networks.unit_translation import UNITTranslation

__all__ = [
    "TORCHSCRIPT_NAMES",
    "TOLERANCE",
    "ExportedGenerator",
    "export_generators",
    "generator_input_shapes",
    "inference_parser",
    "save_torchscript",
    "translator_ids",
]

#: TorchScript file of each direction, under ``models/``.
TORCHSCRIPT_NAMES = {"forward": "model.ts", "reverse": "model_reverse.ts"}

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


def _generators(bundle_dir: Path, settings: Mapping[str, Any] | None, load_weights: bool):
    """``(direction, network in eval mode, input shape)`` for each translator of the bundle's inference config."""
    config_file = bundle_dir / "configs" / "inference.json"
    parser = inference_parser(bundle_dir, settings)
    for direction, translator in translator_ids(parser, config_file).items():
        # A UNIT bundle's reverse network loads its weights in its own expression; the others name them.
        network = parser.get_parsed_content(f"{translator}#network", instantiate=True)
        weights = parser.get_parsed_content(f"{translator}#weights", instantiate=True)
        if load_weights and weights is not None:
            load_network_weights(network, weights, parser.get_parsed_content(f"{translator}#weights_key") or None)
        size = int(parser.get_parsed_content(f"{translator}#slice_size"))
        yield direction, network.to("cpu").eval(), (1, _source_channels(network), size, size)


def generator_input_shapes(bundle_dir: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """``{direction: (1, channels, size, size)}``: the slice each generator of the bundle takes, from its configs.

    Args:
        bundle_dir: the bundle folder.
        settings: the training record's settings, applied as overrides.
    """
    return {direction: shape for direction, _, shape in _generators(Path(bundle_dir), settings, load_weights=False)}


def export_generators(bundle_dir: str | os.PathLike, settings: Mapping[str, Any] | None = None) -> dict[str, ExportedGenerator]:
    """Export the generator of each translation direction of a trained bundle to TorchScript, in this process.

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
    model = bundle_dir / "models" / "model.pt"
    return {
        direction: _export(network, shape, f"{model} ({direction} generator)")
        for direction, network, shape in _generators(bundle_dir, settings, load_weights=True)
    }


def save_torchscript(
    bundle_dir: str | os.PathLike, output_dir: str | os.PathLike, settings: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Export a bundle's generators in a fresh Python process and save them as ``output_dir/model{,_reverse}.ts``.

    Args:
        bundle_dir: the bundle folder, with ``configs/inference.json`` and ``models/model.pt``.
        output_dir: where the ``.ts`` files go (an existing folder).
        settings: the training record's settings, applied as overrides.
        extra_files: ``{name: text}`` stored in each archive (MONAI reads ``metadata.json`` from there).

    Returns:
        ``{direction: {"file", "method", "input_shape", "max_difference"}}``.

    Raises:
        BundleIntegrityError, FileNotFoundError, WeightsFileError: as :func:`export_generators`.
    """
    request = {"bundle_dir": str(Path(bundle_dir).resolve()), "output_dir": str(Path(output_dir).resolve()),
               "settings": dict(settings or {}), "extra_files": dict(extra_files or {})}
    # The child imports this very library, wherever it was imported from here.
    library_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [library_root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "modality_translation.bundle.torchscript"], input=json.dumps(request),
                            capture_output=True, text=True, env=env)
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise BundleIntegrityError(bundle_dir, f"the TorchScript export failed (exit {result.returncode}): "
                                   f"{result.stderr.strip()[-2000:]}") from None
    if "error" in answer:
        error = answer["error"]
        if error["type"] == "WeightsFileError":
            raise WeightsFileError(error["path"], error["reason"])
        if error["type"] == "FileNotFoundError":
            raise FileNotFoundError(error["message"])
        raise BundleIntegrityError(error.get("path"), error.get("reason") or error["message"])
    return answer["exported"]


def _main() -> int:
    """The child of :func:`save_torchscript`: a JSON request on stdin, a JSON answer as the last line of stdout."""
    argparse.ArgumentParser(description="Export a bundle's generators (a JSON request on stdin); used by save_torchscript").parse_args()
    request = json.loads(sys.stdin.read())
    try:
        exported = export_generators(request["bundle_dir"], request["settings"])
        answer = {}
        for direction, generator in exported.items():
            path = Path(request["output_dir"]) / TORCHSCRIPT_NAMES[direction]
            path.write_bytes(generator.to_bytes(request["extra_files"]))
            answer[direction] = {"file": str(path), "method": generator.method, "input_shape": list(generator.input_shape),
                                 "max_difference": generator.max_difference}
        print(json.dumps({"exported": answer}))
    except (BundleIntegrityError, WeightsFileError, FileNotFoundError) as exc:
        print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc), "path": getattr(exc, "path", None),
                                    "reason": getattr(exc, "reason", None)}}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
