"""Translate whole 3D volumes with a 2D generator, slice by slice, back onto the input's grid.

The network sees each slice exactly as it saw the training slices: the slices are cut, padded to the
output's aspect ratio in millimetres and resized by ``preprocessing.slices.extract_slices`` (the
function that produced the training slices), and the translated slices go back through its inverse,
``paste_slices``. MONAI's :class:`monai.inferers.SliceInferer` is not used: it runs a sliding window at
the volume's own pixel size, whereas the network was trained on slices resampled to a fixed size, so
it would see anatomy at the wrong scale. :class:`VolumeSliceInferer` is the MONAI ``Inferer`` that does
the resampling, for a ``SupervisedEvaluator``.

Orientation: the training slices come from volumes in canonical orientation (array axes increasing
towards patient Left, Posterior, Superior). An input file in another orientation is permuted and
flipped to it (``nibabel.orientations``, exact: no interpolation), translated, and permuted back, and
the output NIfTI is written with the input's own header and affine, so it has exactly the input's
shape, spacing, origin and direction.

Entry points, from the most to the least wrapped (all built from plain JSON with ``_target_``):
:func:`translate_datalist` (a datalist split -> translated files + ``predictions.json``),
:class:`TranslateVolumed` (one datalist item), :class:`VolumeTranslator` (files, SimpleITK images,
arrays), :func:`translate_slices` (a canonical array on the network scale).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, load_decathlon_datalist
from monai.inferers import Inferer
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from torch import nn

from modality_translation.inference.dicom_output import write_dicom_series
from modality_translation.inference.intensity import IntensityMapping
from modality_translation.networks.init import (
    WeightsFileError,
    load_checked_state_dict,
    read_state_dict_file,
    require_local_file,
)
from preprocessing.atomic import atomic_write_json, atomic_write_with
from preprocessing.errors import GeometryError, InputReadError, PreprocessingError
from preprocessing.slices import AxisSpec, extract_slices, paste_slices


_LPS = axcodes2ornt(("L", "P", "S"))
# Affines of one grid written by different tools differ by float32 rounding of the header fields.
GRID_TOLERANCE_MM = 1e-3


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
    """Input channels of a 2D generator: those of its first convolution kernel (``None`` without one).

    Args:
        weights: the network or its state dict (parameters in definition order, as PyTorch keeps them).
    """
    tensors = weights.state_dict().values() if isinstance(weights, nn.Module) else weights.values()
    kernel = next((t for t in tensors if torch.is_tensor(t) and t.ndim == 4), None)
    return None if kernel is None else int(kernel.shape[1])


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


def _network_device(network: Callable) -> torch.device:
    parameter = next(network.parameters(), None) if isinstance(network, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def translate_slices(
    network: Callable[[torch.Tensor], torch.Tensor],
    volume: np.ndarray,
    spacing: Sequence[float],
    slice_size: int | Sequence[int] = 256,
    axis: AxisSpec = "axial",
    neighbours: int = 0,
    batch_size: int = 16,
    pad_value: float = -1.0,
    interpolation: str = "bilinear",
    amp: bool = False,
) -> np.ndarray:
    """Run a 2D network over every slice of a canonical volume already on the network scale.

    Args:
        network: maps ``(N, 2 * neighbours + 1, rows, columns)`` to ``(N, 1, rows, columns)``; batches go
            to the device of its parameters (the CPU for a parameter-free callable).
        volume: [z, y, x] array in canonical orientation (identity direction), network scale.
        spacing: voxel size (x, y, z) in mm.
        slice_size: (rows, columns) of the network input, or one number for a square.
        axis: slice axis (``"axial"``, ``"coronal"``, ``"sagittal"`` or 0-2 of the [z, y, x] array).
        neighbours: 2.5D half-width: each slice goes with its ``neighbours`` neighbours on each side as channels.
        batch_size: slices per forward pass.
        pad_value: network-scale value of the padding (the background, see ``IntensityMapping.background_value``).
        interpolation: MONAI ``Resize`` mode of the resampling both ways.
        amp: run the network under bfloat16 autocast (outputs are returned as float32).

    Returns:
        float32 [z, y, x] array of the translated slices on the input's grid.

    Raises:
        ValueError: a network output that is not one channel of the input's slice size, a bad argument.
        PreprocessingError: a volume that is not 3D or holds NaN/inf.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    slice_shape = ensure_tuple_rep(slice_size, 2)
    slices, geometries = extract_slices(
        volume, axis=axis, neighbours=neighbours, output_shape=slice_shape, pad_value=pad_value,
        interpolation=interpolation, spacing=spacing,
    )
    stack = np.stack(slices)
    if stack.ndim == 3:
        stack = stack[:, None]
    device = _network_device(network)
    outputs = []
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        for start in range(0, len(stack), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(stack[start : start + batch_size])).to(device)
            output = network(batch)
            expected = (batch.shape[0], 1, *slice_shape)
            if tuple(output.shape) != expected:
                raise ValueError(
                    f"the network returned shape {tuple(output.shape)} for input {tuple(batch.shape)}; expected {expected}"
                )
            outputs.append(output.float().cpu().numpy()[:, 0])
    return paste_slices(list(np.concatenate(outputs)), geometries)


class VolumeSliceInferer(Inferer):
    """MONAI ``Inferer``: a 2D network over all slices of a batch of 3D volumes (e.g. for ``SupervisedEvaluator``).

    The inputs are MONAI channel-first arrays ``(B, 1, X, Y, Z)`` on the network scale (intensity
    transforms such as ``preprocessing.windowing.CTWindowd`` or ``PercentileNormalized`` come before);
    load them with ``Orientationd(axcodes="LPS", labels=None)`` so that the slices are oriented as the training
    slices (rows towards Posterior, columns towards Left). Spacing is read from the ``MetaTensor``'s affine.

    Args:
        slice_size, neighbours, batch_size, pad_value, interpolation, amp: see :func:`translate_slices`.
        spatial_axis: spatial axis of the input perpendicular to the slices (2 = Z, axial for LPS arrays).
        spacing: (X, Y, Z) voxel size for inputs that are plain tensors without an affine.
    """

    def __init__(
        self,
        slice_size: int | Sequence[int] = 256,
        spatial_axis: int = 2,
        neighbours: int = 0,
        batch_size: int = 16,
        pad_value: float = -1.0,
        interpolation: str = "bilinear",
        amp: bool = False,
        spacing: Sequence[float] | None = None,
    ) -> None:
        if spatial_axis not in (0, 1, 2):
            raise ValueError(f"spatial_axis must be 0, 1 or 2, got {spatial_axis}")
        self.spatial_axis = spatial_axis
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.kwargs = dict(slice_size=slice_size, neighbours=neighbours, batch_size=batch_size, pad_value=pad_value,
                           interpolation=interpolation, amp=amp)

    def _spacings(self, inputs: torch.Tensor) -> list[tuple[float, ...]]:
        if isinstance(inputs, MetaTensor):
            pixdim = inputs.pixdim
            per_item = pixdim if isinstance(pixdim, list) else [pixdim] * inputs.shape[0]
            return [tuple(float(s) for s in np.asarray(p)) for p in per_item]
        if self.spacing is None:
            raise ValueError("VolumeSliceInferer: the input has no affine; give spacing=(X, Y, Z) in mm")
        return [self.spacing] * inputs.shape[0]

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Translate ``inputs`` ``(B, 1, X, Y, Z)``; returns ``(B, 1, X, Y, Z)`` with the inputs' metadata.

        Raises:
            ValueError: inputs that are not 5D single-channel, or without spacing.
        """
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"VolumeSliceInferer expects (batch, 1, X, Y, Z) inputs, got {tuple(inputs.shape)}")
        volumes = []
        for volume, spacing_xyz in zip(inputs[:, 0].detach().cpu().float().numpy(), self._spacings(inputs)):
            # [X, Y, Z] is the transpose of the [z, y, x] layout the slice functions use.
            translated = translate_slices(network, volume.T, spacing_xyz, axis=2 - self.spatial_axis, **self.kwargs)
            volumes.append(translated.T)
        return convert_to_dst_type(np.stack(volumes)[:, None], inputs, dtype=torch.float32)[0]


def read_nifti_header(path: str | os.PathLike, what: str = "volume") -> nib.spatialimages.SpatialImage:
    """Open a NIfTI file without reading its voxels (nibabel is lazy): for checks before any work.

    Raises:
        InputReadError: a missing file, not NIfTI, or not a 3D volume (a singleton 4th axis is accepted).
    """
    path = Path(path)
    if not path.is_file():
        raise InputReadError(path, f"{what} file does not exist")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises ImageFileError, OSError, EOFError... on bad files
        raise InputReadError(path, f"not a readable NIfTI {what}: {exc}") from exc
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputReadError(path, f"{what} is not a NIfTI file (read as {type(image).__name__})")
    if len(image.shape) < 3 or any(n != 1 for n in image.shape[3:]):
        raise InputReadError(path, f"{what} must be a 3D volume, got shape {image.shape}")
    return image


def check_same_grid(
    image: nib.spatialimages.SpatialImage, path: str | os.PathLike, reference: nib.spatialimages.SpatialImage,
    reference_path: str | os.PathLike, what: str = "volume",
) -> None:
    """Raise unless two NIfTI files have the same voxel grid (shape, and affine to :data:`GRID_TOLERANCE_MM`).

    Raises:
        GeometryError: naming both files and what differs.
    """
    shape, reference_shape = tuple(image.shape[:3]), tuple(reference.shape[:3])
    if shape != reference_shape:
        raise GeometryError(path, f"{what} shape {shape} differs from {reference_shape} of {os.fspath(reference_path)}")
    if not np.allclose(image.affine, reference.affine, atol=GRID_TOLERANCE_MM):
        raise GeometryError(
            path,
            f"{what} affine {np.round(image.affine, 4).tolist()} differs from "
            f"{np.round(reference.affine, 4).tolist()} of {os.fspath(reference_path)}",
        )


def check_files_on_grid(
    reference: str | os.PathLike, reference_what: str, others: Sequence[tuple[str | os.PathLike, str]] = ()
) -> None:
    """Raise unless ``reference`` is a readable 3D NIfTI and every other file lies on its voxel grid.

    Reads headers only: the check a datalist command runs on every item before any work.

    Args:
        reference: the file whose grid the others must share (a prediction, a volume to translate).
        reference_what: what ``reference`` is, for messages.
        others: ``(path, what it is)`` of the files that must lie on the reference grid (a target, a mask).

    Raises:
        InputReadError: a missing or unreadable file, or one that is not a 3D volume.
        GeometryError: a file on another grid (both files named).
    """
    reference_header = read_nifti_header(reference, reference_what)
    for path, what in others:
        check_same_grid(read_nifti_header(path, what), path, reference_header, reference, what)


@dataclass(frozen=True)
class CanonicalVolume:
    """A NIfTI volume brought to canonical orientation, with what is needed to go back to its file grid.

    Attributes:
        path: the file.
        nifti: the nibabel image (header and affine of the file).
        array: float32 [z, y, x] array, axes increasing towards patient Superior, Posterior, Left.
        spacing: voxel size (x, y, z) of ``array`` in mm.
        to_canonical: nibabel orientation transform from the file's voxel axes to canonical.
    """

    path: Path
    nifti: nib.spatialimages.SpatialImage
    array: np.ndarray
    spacing: tuple[float, float, float]
    to_canonical: np.ndarray

    def to_file_order(self, canonical: np.ndarray) -> np.ndarray:
        """Permute/flip a canonical [z, y, x] array back to the file's voxel order (exact)."""
        canonical_ijk = np.asarray(canonical).transpose(2, 1, 0)
        return apply_orientation(canonical_ijk, ornt_transform(_LPS, io_orientation(self.nifti.affine)))


def read_volume(path: str | os.PathLike, what: str = "volume") -> CanonicalVolume:
    """Read a NIfTI volume and permute/flip it to canonical orientation (no interpolation).

    An oblique grid is brought to the closest canonical axes; its slices are then slightly oblique,
    which the network tolerates better than the blur a resampling would add.

    Raises:
        InputReadError: missing, unreadable, truncated, not 3D, or NaN/infinite voxels.
    """
    nifti = read_nifti_header(path, what)
    try:
        data = nifti.get_fdata(dtype=np.float32).reshape(nifti.shape[:3])
    except Exception as exc:  # truncated gzip (EOFError), short file (OSError), bad zlib stream...
        raise InputReadError(path, f"cannot read the {what} voxels (truncated or corrupt file?): {exc}") from exc
    n_bad = int(np.count_nonzero(~np.isfinite(data)))
    if n_bad:
        raise InputReadError(path, f"{n_bad} voxels of the {what} are NaN or infinite")
    to_canonical = ornt_transform(io_orientation(nifti.affine), _LPS)
    canonical_ijk = apply_orientation(data, to_canonical)
    voxel_sizes = np.linalg.norm(nifti.affine[:3, :3], axis=0)
    spacing = [0.0, 0.0, 0.0]
    for file_axis, (canonical_axis, _) in enumerate(to_canonical):
        spacing[int(canonical_axis)] = float(voxel_sizes[file_axis])
    array = np.ascontiguousarray(canonical_ijk.transpose(2, 1, 0), dtype=np.float32)
    return CanonicalVolume(Path(path), nifti, array, tuple(spacing), to_canonical)  # type: ignore[arg-type]


def write_volume_like(reference: CanonicalVolume, canonical: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a canonical [z, y, x] array as a float32 NIfTI on the reference file's grid, atomically.

    The reference's header (affine, qform/sform codes, units) is reused as it is, so the output has
    exactly the reference's shape, spacing, origin and direction.

    Raises:
        ValueError: an array whose shape is not the reference's canonical shape.
    """
    if np.shape(canonical) != reference.array.shape:
        raise ValueError(f"array shape {np.shape(canonical)} differs from the reference's {reference.array.shape}")
    header = reference.nifti.header.copy()
    header.set_data_dtype(np.float32)
    data = np.ascontiguousarray(reference.to_file_order(canonical), dtype=np.float32)
    image = type(reference.nifti)(data, reference.nifti.affine, header)
    path = Path(path)
    atomic_write_with(path, lambda tmp: nib.save(image, tmp))
    return path


class VolumeTranslator:
    """A generator with everything needed to translate volumes of one modality into another.

    Args:
        network: the 2D generator (e.g. ``modality_translation.networks.ResNetGenerator``).
        source_modality: modality of the inputs (``"ct"``, ``"t1"``, ``"t2"``...).
        target_modality: modality of the outputs.
        weights: local weights file loaded into ``network`` (see :func:`load_network_weights`);
            ``None`` keeps the network's current weights.
        weights_key: the entry of a multi-network checkpoint (``"g_ab"`` or ``"g_ba"`` in a
            ``modality_translation.engines`` training checkpoint).
        slice_size: network input size, one number (square) or (rows, columns): the training slice size.
        axis: slice axis of the canonical volume, ``"axial"`` (default), ``"coronal"``, ``"sagittal"``.
        neighbours: 2.5D half-width the network was trained with (input channels ``2N + 1``).
        batch_size: slices per forward pass.
        interpolation: MONAI ``Resize`` mode of the slice resampling.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda:0"``...
        amp: bfloat16 autocast (on GPUs with bfloat16 support; on the CPU it is slow but works).
        keep_dropout: keep dropout layers active (pix2pix uses dropout as its noise at test time);
            normalisation layers stay in evaluation mode.
        preprocessing: what the cohort's preprocessing recorded, from which the intensity mappings are
            derived (window, normalisation): its ``dataset.json`` or configuration, a mapping or a file
            path (see :meth:`IntensityMapping.from_preprocessing_config`).
        source_intensity: :class:`IntensityMapping` of the input, or keyword arguments overriding the
            ones derived from ``preprocessing`` (e.g. ``{"on_network_scale": true}`` for the cohort's
            normalised ``t1`` or windowed ``ct`` volumes).
        target_intensity: the same for the output (e.g. ``{"window": "bone"}``).

    Raises:
        FileNotFoundError, WeightsFileError: a missing or unusable weights file (before any work).
        ValueError: invalid options, or a ``neighbours`` count whose ``2N + 1`` channels differ from the
            input channels of the weights (or network): inference must use the training's count.
    """

    def __init__(
        self,
        network: nn.Module,
        source_modality: str,
        target_modality: str,
        weights: str | os.PathLike | None = None,
        weights_key: str | None = None,
        slice_size: int | Sequence[int] = 256,
        axis: AxisSpec = "axial",
        neighbours: int = 0,
        batch_size: int = 16,
        interpolation: str = "bilinear",
        device: str | torch.device | None = "auto",
        amp: bool = False,
        keep_dropout: bool = False,
        preprocessing: Mapping[str, Any] | str | os.PathLike | None = None,
        source_intensity: IntensityMapping | Mapping[str, Any] | None = None,
        target_intensity: IntensityMapping | Mapping[str, Any] | None = None,
    ) -> None:
        self.source = IntensityMapping.resolve(source_modality, source_intensity, preprocessing)
        self.target = IntensityMapping.resolve(target_modality, target_intensity, preprocessing)
        if weights is not None:
            state = read_network_weights(weights, weights_key)
            # Before the shape checks of loading: a neighbour count mismatch is named as such.
            check_neighbours(state, neighbours, weights)
            load_checked_state_dict(network, state, weights)
        check_neighbours(network, neighbours, type(network).__name__)
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        if keep_dropout:
            for module in self.network.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd):
                    module.train()
        self.slice_kwargs = dict(
            slice_size=slice_size, axis=axis, neighbours=neighbours, batch_size=batch_size,
            pad_value=self.source.background_value, interpolation=interpolation, amp=amp,
        )

    def translate_array(self, volume: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None = None) -> np.ndarray:
        """Translate a canonical [z, y, x] volume in the source modality's units.

        Args:
            volume: CT in HU or raw MR intensities (or the normalised/windowed volume with the source's
                ``on_network_scale``).
            spacing: voxel size (x, y, z) in mm.
            mask: MR head mask used for the normalisation (computed when ``None``).

        Returns:
            float32 [z, y, x] volume in the target's units (HU for CT, network scale for MR).
        """
        network_input = self.source.to_network(volume, mask)
        output = translate_slices(self.network, network_input, spacing, **self.slice_kwargs)
        return self.target.from_network(output)

    def translate_image(self, image: sitk.Image, mask: sitk.Image | None = None) -> sitk.Image:
        """Translate a SimpleITK image; the result has the image's size, spacing, origin and direction.

        Raises:
            GeometryError: a mask on another grid.
        """
        if mask is not None and (mask.GetSize() != image.GetSize() or not np.allclose(
                np.r_[mask.GetOrigin(), mask.GetSpacing(), mask.GetDirection()],
                np.r_[image.GetOrigin(), image.GetSpacing(), image.GetDirection()], atol=GRID_TOLERANCE_MM)):
            raise GeometryError(None, "the head mask and the image to translate lie on different grids")
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        canonical = sitk.DICOMOrient(image, "LPS")
        canonical_mask = None if mask is None else sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS")) > 0
        output = self.translate_array(sitk.GetArrayFromImage(canonical), canonical.GetSpacing(), canonical_mask)
        result = sitk.GetImageFromArray(output)
        result.CopyInformation(canonical)
        result = sitk.DICOMOrient(result, orientation)
        # Permuting back is exact on voxels; copying the header avoids origin round-off from the flips.
        result.CopyInformation(image)
        return result

    def translate_file(
        self, input_path: str | os.PathLike, output_path: str | os.PathLike, mask_path: str | os.PathLike | None = None
    ) -> Path:
        """Translate a NIfTI volume and write the result (float32 NIfTI, the input's grid) atomically.

        Args:
            input_path: the source volume.
            output_path: where to write (``.nii.gz`` or ``.nii``).
            mask_path: MR head mask on the input's grid (computed when ``None``).

        Returns:
            ``output_path``.

        Raises:
            InputReadError: an unreadable input or mask.
            GeometryError: a mask on another grid (both files named).
            IntensityMismatchError: input values that cannot be of the source modality on its scale
                (``IntensityMapping.check_intensities``: e.g. a CT in HU for an MR model).
        """
        mask = None
        if mask_path is not None:
            check_files_on_grid(input_path, "volume", [(mask_path, "head mask")])
            mask = read_volume(mask_path, "head mask").array > 0
        volume = read_volume(input_path)
        self.source.check_intensities(volume.array, input_path, "volume to translate")
        output = self.translate_array(volume.array, volume.spacing, mask)
        return write_volume_like(volume, output, output_path)


def subject_name(item: Mapping[Hashable, Any], subject_key: str = "subject", fallback_key: Hashable | None = None) -> str:
    """The subject of a datalist item: ``item[subject_key]``, else the stem of the file ``item[fallback_key]``.

    Raises:
        KeyError: neither key is in the item.
    """
    subject = item.get(subject_key)
    if subject is None:
        if fallback_key is None or fallback_key not in item:
            raise KeyError(f"datalist item has no {subject_key!r} entry to name its subject: {dict(item)}")
        return Path(str(item[fallback_key])).name.split(".")[0]
    # load_decathlon_datalist turns every value naming an existing path into an absolute path, and a
    # cohort has one folder per subject: keep the name only.
    return Path(str(subject)).name


class TranslateVolumed(MapTransform):
    """Dictionary transform: translate the volume file of each key, write it, store the output path.

    For an item ``{"subject": "sub-01", "t1": ".../t1.nii.gz", "t1_mask": ...}`` and ``keys="t1"``,
    writes ``<output_dir>/sub-01/<output_key>.nii.gz`` and sets ``item[output_key]`` to its path.

    Args:
        keys: keys of the input volume paths.
        translator: the :class:`VolumeTranslator`.
        output_dir: root folder of the outputs (one sub-folder per subject).
        output_keys: item key (and file stem) of each output; default ``"pred"``.
        mask_keys: key of each input's head mask path (``None``: masks are computed).
        subject_key: key of the subject name (default ``"subject"``; the input file's stem if absent).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        translator: VolumeTranslator,
        output_dir: str | os.PathLike,
        output_keys: KeysCollection = "pred",
        mask_keys: KeysCollection | None = None,
        subject_key: str = "subject",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.translator = translator
        self.output_dir = Path(output_dir)
        self.output_keys = ensure_tuple_rep(output_keys, len(self.keys))
        self.mask_keys = ensure_tuple_rep(mask_keys, len(self.keys))
        self.subject_key = subject_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, output_key, mask_key in self.key_iterator(d, self.output_keys, self.mask_keys):
            subject = subject_name(d, self.subject_key, key)
            output_path = self.output_dir / subject / f"{output_key}.nii.gz"
            mask_path = None if mask_key is None else d[mask_key]
            d[output_key] = str(self.translator.translate_file(d[key], output_path, mask_path))
        return d


def load_datalist_items(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    split: str = "test",
    base_dir: str | os.PathLike | None = None,
    path_keys: Mapping[str, str] | None = None,
    subject_key: str = "subject",
) -> list[dict[str, Any]]:
    """The items of one split of a MONAI datalist, with their files checked and their subjects named.

    Args:
        datalist: a datalist JSON file (``monai.data.load_decathlon_datalist``) or a list of items.
        split: the split of a datalist file.
        base_dir: folder relative paths are relative to (default: the datalist file's folder).
        path_keys: item key -> what the file is (for messages); each must name an existing file, and
            is replaced by its absolute path.
        subject_key: item key of the subject name; set on every item (see :func:`subject_name`, with
            the first of ``path_keys`` as the fallback), and subjects must be unique.

    Returns:
        Copies of the items.

    Raises:
        InputReadError: a missing or unreadable datalist file, a missing file of ``path_keys``.
        PreprocessingError: a split that is absent or empty, an item without a key, a repeated subject.
    """
    if isinstance(datalist, (str, os.PathLike)):
        path = Path(datalist)
        if not path.is_file():
            raise InputReadError(path, "datalist file does not exist")
        try:
            items = load_decathlon_datalist(path, is_segmentation=False, data_list_key=split, base_dir=base_dir)
        except ValueError as exc:
            raise PreprocessingError(path, f"datalist has no split {split!r}") from exc
        except (OSError, TypeError) as exc:
            raise InputReadError(path, f"cannot read the datalist: {exc}") from exc
        if not items:
            raise PreprocessingError(path, f"datalist split {split!r} is empty")
        base_dir = path.parent if base_dir is None else base_dir
    else:
        items = list(datalist)
        if not items:
            raise PreprocessingError(None, f"datalist split {split!r} is empty: no item to process")
    base = None if base_dir is None else Path(base_dir)
    path_keys = dict(path_keys or {})
    checked = []
    for item in items:
        item = dict(item)
        subject = subject_name(item, subject_key, next(iter(path_keys), None))
        for key, what in path_keys.items():
            item[key] = str(resolve_item_path(item, key, base, what, subject))
        item[subject_key] = subject
        checked.append(item)
    subjects = [item[subject_key] for item in checked]
    repeated = sorted({s for s in subjects if subjects.count(s) > 1})
    if repeated:
        raise PreprocessingError(None, f"subjects listed more than once in split {split!r}: {', '.join(repeated)}")
    return checked


def resolve_item_path(item: Mapping[str, Any], key: str, base_dir: Path | None, what: str, subject: str) -> Path:
    """The existing file ``item[key]`` (relative paths against ``base_dir``).

    Raises:
        PreprocessingError: the item has no ``key``.
        InputReadError: the file does not exist (named with ``what``, the key and the subject).
    """
    if key not in item:
        raise PreprocessingError(None, f"datalist item of subject {subject!r} has no {key!r} ({what})")
    path = Path(item[key])
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise InputReadError(path, f"{what} ({key!r} of subject {subject!r}) does not exist")
    return path


def translate_datalist(
    translator: VolumeTranslator,
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    source_key: str,
    output_key: str = "pred",
    mask_key: str | None = None,
    split: str = "test",
    base_dir: str | os.PathLike | None = None,
    subject_key: str = "subject",
    write_dicom: bool = False,
    dicom_series_description: str | None = None,
    predictions_file: str = "predictions.json",
) -> list[dict[str, Any]]:
    """Translate the source volume of every item of a datalist split.

    All inputs are checked first (files exist, masks on the input's grid, values that can be of the
    source modality on its scale: ``IntensityMapping.check_intensities``), so a bad item stops the run
    before any output is written. Writes ``<output_dir>/<subject>/<output_key>.nii.gz`` per item, with
    ``write_dicom`` also a DICOM series in ``<output_dir>/<subject>/<output_key>_dicom/``
    (:func:`~modality_translation.inference.dicom_output.write_dicom_series`; the subject name, a
    pseudonym in a preprocessed cohort, as patient ID; a CT output gets the target window for display),
    and ``<output_dir>/<predictions_file>``: a datalist ``{split: items}`` whose items are the
    input items plus ``output_key`` (and ``<output_key>_dicom``), the input of ``evaluate_translation``.

    Args:
        translator: the :class:`VolumeTranslator`.
        datalist: a datalist JSON file (e.g. the preprocessing's ``dataset.json``) or a list of items.
        output_dir: output folder.
        source_key: item key of the volume to translate (``"t1"``, ``"ct"``...).
        output_key: item key and file stem of the output.
        mask_key: item key of the source's head mask (``"t1_mask"``); ``None`` computes the masks.
        split: datalist split (``"test"``, ``"validation"``, ``"training"``).
        base_dir: folder relative paths are relative to (default: the datalist file's folder).
        subject_key: item key of the subject name.
        write_dicom: also write each output as a synthetic DICOM series.
        dicom_series_description: its SeriesDescription (must contain "SYNTHETIC"); default
            ``"SYNTHETIC <TARGET> FROM <SOURCE>"``.
        predictions_file: name of the output datalist.

    Returns:
        The output items.

    Raises:
        InputReadError, PreprocessingError, GeometryError: before any work, for a missing file or key,
            an empty split or a mask on another grid.
        IntensityMismatchError: before any work, a volume whose values cannot be of the source
            modality (e.g. a CT in HU listed as the T2 of an MR -> CT model), the file named.
    """
    path_keys = {source_key: "volume to translate", **({mask_key: "head mask"} if mask_key is not None else {})}
    items = load_datalist_items(datalist, split, base_dir, path_keys, subject_key)
    for item in items:
        check_files_on_grid(item[source_key], "volume", [(item[mask_key], "head mask")] if mask_key is not None else [])
    for item in items:  # reads the voxels: after the header checks of every item
        translator.source.check_intensities(read_volume(item[source_key]).array, item[source_key], "volume to translate")

    transform = TranslateVolumed(source_key, translator, output_dir, output_key, mask_key, subject_key)
    outputs = []
    for item in items:
        output = transform(item)
        if write_dicom:
            folder = Path(output_dir) / output[subject_key] / f"{output_key}_dicom"
            target = translator.target
            write_dicom_series(
                sitk.ReadImage(output[output_key]), folder, target.modality, dicom_series_description,
                source_modality=translator.source.modality, patient_id=output[subject_key],
                window=(target.window.center, target.window.width) if target.is_ct else None,
            )
            output[f"{output_key}_dicom"] = str(folder)
        outputs.append(output)
    atomic_write_json(Path(output_dir) / predictions_file, {split: outputs})
    return outputs
