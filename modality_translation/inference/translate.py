"""Translate whole 3D volumes with a 2D generator, slice by slice, back onto the input's grid.

The network sees each slice exactly as it saw the training slices: the slices are cut, padded to the
output's aspect ratio in millimetres and resized by ``preprocessing.slices.extract_slices`` (the
function that produced the training slices), and the translated slices go back through its inverse,
``paste_slices``. MONAI's :class:`monai.inferers.SliceInferer` is not used: it runs a sliding window at
the volume's own pixel size, whereas the network was trained on slices resampled to a fixed size, so
it would see anatomy at the wrong scale. :class:`VolumeSliceInferer` is the MONAI ``Inferer`` that does
the resampling, for a ``SupervisedEvaluator``.

Entry points: :class:`VolumeTranslator` (files, SimpleITK images, arrays) and :func:`translate_slices`
(a canonical array on the network scale); reading and writing files is in
:mod:`modality_translation.inference.io`, datalists in :mod:`modality_translation.inference.datalist_translation`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from torch import nn

from medgan_common.errors import GeometryError
from modality_translation.inference.background import fill_outside_head
from modality_translation.inference.intensity import IntensityMapping
from modality_translation.inference.io import GRID_TOLERANCE_MM, check_files_on_grid, read_volume, write_volume_like
from modality_translation.inference.weights import check_neighbours, read_network_weights, resolve_device
from modality_translation.networks.init import load_checked_state_dict
from preprocessing.slices import AxisSpec, extract_slices, paste_slices


def _network_device(network: Callable) -> torch.device:
    parameter = next(network.parameters(), None) if isinstance(network, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


def translate_stack(
    network: Callable[[torch.Tensor], torch.Tensor],
    stack: np.ndarray,
    batch_size: int = 16,
    amp: bool = False,
    channels_last: bool = False,
    flip_average: bool = False,
) -> np.ndarray:
    """Run a 2D network over a stack of slices, batch by batch.

    Args:
        network: maps ``(N, C, rows, columns)`` to ``(N, 1, rows, columns)``; batches go to the device of
            its parameters (the CPU for a parameter-free callable).
        stack: float32 ``(N, C, rows, columns)`` slices on the network scale.
        batch_size: slices per forward pass.
        amp: run the network under bfloat16 autocast.
        channels_last: give the network its batches in channels-last layout (the network's parameters are
            left as they are; oneDNN convolutions follow the input's layout).
        flip_average: test-time flip averaging: each slice is also translated flipped along its columns
            (the left-right flip of the training augmentation for axial and coronal slices), flipped
            back, and the two outputs averaged; twice the network time.

    Returns:
        float32 ``(N, rows, columns)`` array of the network outputs.

    Raises:
        ValueError: a network output that is not one channel of the input's slice size, a bad argument.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if stack.ndim != 4:
        raise ValueError(f"translate_stack expects (N, C, rows, columns) slices, got shape {stack.shape}")
    device = _network_device(network)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    outputs = np.empty((stack.shape[0], *stack.shape[2:]), dtype=np.float32)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
        for start in range(0, len(stack), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(stack[start : start + batch_size], dtype=np.float32))
            batch = batch.to(device).contiguous(memory_format=memory_format)
            output = network(batch)
            if flip_average:
                output = (output + torch.flip(network(torch.flip(batch, dims=(-1,))), dims=(-1,))) / 2
            expected = (batch.shape[0], 1, *stack.shape[2:])
            if tuple(output.shape) != expected:
                raise ValueError(
                    f"the network returned shape {tuple(output.shape)} for input {tuple(batch.shape)}; expected {expected}"
                )
            outputs[start : start + len(batch)] = output[:, 0].float().cpu().numpy()
    return outputs


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
    channels_last: bool = False,
    flip_average: bool = False,
) -> np.ndarray:
    """Run a 2D network over every slice of a canonical volume already on the network scale.

    Three steps: :func:`preprocessing.slices.extract_slices`, :func:`translate_stack`,
    :func:`preprocessing.slices.paste_slices`. On a CPU with AVX-512 BF16 / AMX, ``amp=True`` with
    ``batch_size=32`` needs 2.4 times less CPU time than float32 for the U-Net-256 (see "Inference
    speed" in docs/library.md); the default stays float32, whose results it reproduces exactly.

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
        channels_last: feed the network channels-last batches (see :func:`translate_stack`).
        flip_average: average each slice's translation with that of its column-flipped copy
            (test-time flip averaging, see :func:`translate_stack`).

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
    outputs = translate_stack(network, stack, batch_size=batch_size, amp=amp, channels_last=channels_last,
                              flip_average=flip_average)
    return paste_slices(list(outputs), geometries)


class VolumeSliceInferer(Inferer):
    """MONAI ``Inferer``: a 2D network over all slices of a batch of 3D volumes (e.g. for ``SupervisedEvaluator``).

    The inputs are MONAI channel-first arrays ``(B, 1, X, Y, Z)`` on the network scale (intensity
    transforms such as ``preprocessing.windowing.CTWindowd`` or ``PercentileNormalized`` come before);
    load them with ``Orientationd(axcodes="LPS", labels=None)`` so that the slices are oriented as the training
    slices (rows towards Posterior, columns towards Left). Spacing is read from the ``MetaTensor``'s affine.

    Args:
        slice_size, neighbours, batch_size, pad_value, interpolation, amp, flip_average: see
            :func:`translate_slices`.
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
        flip_average: bool = False,
    ) -> None:
        if spatial_axis not in (0, 1, 2):
            raise ValueError(f"spatial_axis must be 0, 1 or 2, got {spatial_axis}")
        self.spatial_axis = spatial_axis
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.kwargs = dict(slice_size=slice_size, neighbours=neighbours, batch_size=batch_size, pad_value=pad_value,
                           interpolation=interpolation, amp=amp, flip_average=flip_average)

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
        amp: bfloat16 autocast (GPUs with bfloat16 support; CPUs with AVX-512 BF16 or AMX, where it is
            2-3 times faster than float32, see :func:`translate_slices`).
        keep_dropout: keep dropout layers active (pix2pix uses dropout as its noise at test time);
            normalisation layers stay in evaluation mode.
        flip_average: test-time flip averaging: every slice is translated as it is and flipped left-right
            (the training's flip augmentation), and the two translations averaged
            (:func:`translate_stack`); twice the network time.
        background_outside_head: set the output to the target's air (:attr:`IntensityMapping.air_value`)
            farther than ``head_margin_mm`` from the input's head
            (:func:`modality_translation.inference.background.fill_outside_head`): a generator's texture in
            the air around the head is not written. The head mask is the one given with the volume, else
            the input's own (:meth:`IntensityMapping.input_head_mask`).
        head_margin_mm: widening of the head mask before the background is set.
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
        flip_average: bool = False,
        preprocessing: Mapping[str, Any] | str | os.PathLike | None = None,
        source_intensity: IntensityMapping | Mapping[str, Any] | None = None,
        target_intensity: IntensityMapping | Mapping[str, Any] | None = None,
        background_outside_head: bool = False,
        head_margin_mm: float = 3.0,
    ) -> None:
        if head_margin_mm < 0:
            raise ValueError(f"head_margin_mm must be >= 0, got {head_margin_mm}")
        self.background_outside_head = bool(background_outside_head)
        self.head_margin_mm = float(head_margin_mm)
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
            flip_average=flip_average,
        )

    def with_intensities(self, source: IntensityMapping, target: IntensityMapping) -> VolumeTranslator:
        """The same network and slice settings with other intensity mappings (e.g. raw scans instead of a
        cohort's normalised volumes); the padding follows the new source's background."""
        other = copy.copy(self)
        other.source, other.target = source, target
        other.slice_kwargs = {**self.slice_kwargs, "pad_value": source.background_value}
        return other

    def translate_array(self, volume: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None = None) -> np.ndarray:
        """Translate a canonical [z, y, x] volume in the source modality's units.

        Args:
            volume: CT in HU or raw MR intensities (or the normalised/windowed volume with the source's
                ``on_network_scale``).
            spacing: voxel size (x, y, z) in mm.
            mask: head mask of the input, used by the MR normalisation and by
                ``background_outside_head`` (computed when ``None`` and needed).

        Returns:
            float32 [z, y, x] volume in the target's units (HU for CT, network scale for MR).
        """
        if mask is None and self.background_outside_head:
            mask = self.source.input_head_mask(volume)
        network_input = self.source.to_network(volume, mask)
        output = self.target.from_network(translate_slices(self.network, network_input, spacing, **self.slice_kwargs))
        if self.background_outside_head:
            # spacing is (x, y, z); the canonical array's axes are [z, y, x].
            output = fill_outside_head(output, mask, self.target.air_value, tuple(spacing)[::-1], self.head_margin_mm)
        return output

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


