"""Validation of a translation generator against paired truth: SSIM and PSNR every N epochs.

:class:`TranslationEvaluator` is a ``monai.engines.Evaluator`` that translates the source images of
each batch (and, given the reverse generator, translates them back) under ``torch.inference_mode``
with the networks in eval mode, and exposes the result under MONAI's standard output keys
(``image``, ``pred``, ``label``) so that MONAI metric handlers work unchanged. By default it computes
SSIM (key metric) and PSNR of ``pred`` against ``label`` with data range 2.0, the span of images in
[-1, 1]; both are MONAI's (:class:`monai.metrics.SSIMMetric`, :class:`monai.handlers.PeakSignalToNoiseRatio`).
Run it from the trainer with ``monai.handlers.ValidationHandler(validator=..., interval=N)``.

The truth comes from the datalist's validation split
(:func:`~modality_translation.data.unpaired.paired_slice_dataset`); without truth (``label`` absent)
only translations are produced, e.g. for image grids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import Evaluator
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.handlers import IgniteMetricHandler, PeakSignalToNoiseRatio, from_engine
from monai.metrics import SSIMMetric
from monai.utils.enums import CommonKeys
from torch import nn

from modality_translation.engines.gan_trainer import SourceTargetBatch, resolve_amp_dtype

#: Intensity span of images in [-1, 1], for SSIM and PSNR.
UNIT_RANGE_SPAN = 2.0


def translation_metrics(data_range: float = UNIT_RANGE_SPAN, spatial_dims: int = 2, prefix: str = "val_") -> dict:
    """SSIM and PSNR handlers of ``pred`` against ``label`` (SSIM first: it is the key metric).

    Args:
        data_range: intensity span of the images (2.0 for [-1, 1]).
        spatial_dims: 2 for slices, 3 for volumes.
        prefix: prefix of the metric names in ``engine.state.metrics``.

    Returns:
        ``{prefix + "ssim": handler, prefix + "psnr": handler}``.
    """
    pair = from_engine([CommonKeys.PRED, CommonKeys.LABEL])
    return {
        f"{prefix}ssim": IgniteMetricHandler(
            metric_fn=SSIMMetric(spatial_dims=spatial_dims, data_range=data_range), output_transform=pair
        ),
        f"{prefix}psnr": PeakSignalToNoiseRatio(max_val=data_range, output_transform=pair),
    }


class TranslationEvaluator(Evaluator):
    """Translate validation batches with ``generator`` and score them against paired truth.

    Args:
        device: the device of the networks and data.
        val_data_loader: loader of ``{source_key: source, target_key: truth}`` batches.
        generator: the A -> B generator evaluated.
        reverse_generator: the B -> A generator; when given, the output also holds the cycle
            reconstruction ``rec_A`` (for image grids).
        source_key: batch key of the source images.
        target_key: batch key of the paired truth (may be absent from the batches: no metrics then).
        data_range: intensity span for the default metrics (2.0 for [-1, 1]).
        spatial_dims: 2 or 3, for the default SSIM.
        key_val_metric: key metric; default SSIM of :func:`translation_metrics` (``None`` and
            ``additional_metrics`` ``None``: SSIM key metric and PSNR); ``{}`` for no metric.
        additional_metrics: more metrics; default PSNR when ``key_val_metric`` is defaulted.
        val_handlers: handlers of the evaluator (e.g. a ``CheckpointSaver`` of the best generator).
        amp: autocast the translation.
        amp_dtype: ``"float16"`` or ``"bfloat16"``; default float16 on CUDA, bfloat16 on CPU.
        epoch_length: iterations per validation (default: the loader's length).
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: default :class:`~modality_translation.engines.gan_trainer.SourceTargetBatch`.
        postprocessing: MONAI post-transforms of the output.
        metric_cmp_fn: comparison of key metric values (higher SSIM is better).
        decollate: decollate the output into per-sample dicts.
        to_kwargs: more arguments of the batch's ``Tensor.to``.
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        generator: nn.Module,
        reverse_generator: nn.Module | None = None,
        source_key: str = "A",
        target_key: str = "B",
        data_range: float = UNIT_RANGE_SPAN,
        spatial_dims: int = 2,
        key_val_metric: dict | None = None,
        additional_metrics: dict | None = None,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: str | torch.dtype | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        postprocessing: Callable | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        decollate: bool = True,
        to_kwargs: dict | None = None,
    ) -> None:
        if key_val_metric is None and additional_metrics is None:
            metrics = translation_metrics(data_range, spatial_dims)
            first = next(iter(metrics))
            key_val_metric, additional_metrics = {first: metrics.pop(first)}, metrics
        super().__init__(
            device=torch.device(device),
            val_data_loader=val_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch or SourceTargetBatch(source_key, target_key),
            postprocessing=postprocessing,
            key_val_metric=key_val_metric or None,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            amp=amp,
            decollate=decollate,
            to_kwargs=to_kwargs,
        )
        self.generator = generator
        self.reverse_generator = reverse_generator
        self.amp_dtype = resolve_amp_dtype(self.state.device, amp_dtype)

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        """The generators used."""
        return (self.generator,) if self.reverse_generator is None else (self.generator, self.reverse_generator)

    def _iteration(self, engine: TranslationEvaluator, batchdata: dict) -> dict[str, Any]:
        """Translate one batch; output ``image`` (source), ``pred`` (translation), ``label`` (truth, if any).

        The output also names the images as the trainers do: ``real_A``, ``fake_B``, ``rec_A``, ``real_B`` (the truth).

        Raises:
            ValueError: when ``batchdata`` is None.
        """
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        source, truth = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        output: dict[str, Any] = {CommonKeys.IMAGE: source, "real_A": source}
        if truth is not None:
            # ``real_B`` stays on the network scale for image grids; post-transforms may shift ``label``.
            output[CommonKeys.LABEL] = output["real_B"] = truth
        engine.state.output = output
        autocast = torch.autocast(engine.state.device.type, dtype=engine.amp_dtype, enabled=bool(engine.amp))
        with engine.mode(*engine.networks), torch.inference_mode(), autocast:
            fake = engine.generator(source)
            reconstructed = None if engine.reverse_generator is None else engine.reverse_generator(fake)
        output[CommonKeys.PRED] = output["fake_B"] = fake.float()
        if reconstructed is not None:
            output["rec_A"] = reconstructed.float()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
