"""The trainer base of every GAN family: the loop and its machinery, with the family's step left open.

MONAI's ``Trainer`` runs the Ignite loop; a trainer only supplies the iteration. :class:`GANTrainer`
supplies the part of the iteration that every translation GAN shares, so that a family (CycleGAN,
pix2pix, UNIT...) writes only its own update rule:

- it declares its networks, optimisers and other training state (``networks``, ``optimizers``,
  ``state_objects``) by name: they become attributes, the checkpoint's entries
  (:meth:`checkpoint_objects`, used by :mod:`~modality_translation.engines.checkpoint`) and the
  modules put in training mode each iteration;
- it implements :meth:`generator_step` and :meth:`discriminator_step`; the base calls the second on
  iterations 1, k + 1, 2k + 1, ... (``generator_steps_per_discriminator_step`` = k, the CT<->MRI
  study's 4:1 ratio) and keeps the last discriminator losses in the output in between;
- it names its losses and images (``image_keys``, ``discriminator_loss_keys``) and may add derived
  values (:meth:`combine_losses`).

The base provides the batch (:class:`SourceTargetBatch`: plain tensors, optional channels-last), mixed
precision (:meth:`autocast`; bfloat16 by default on CPU, float16 on CUDA with one
``torch.amp.GradScaler`` per optimiser, :meth:`optimizer_step`), frozen networks during another
network's step (:func:`frozen`), batched calls of one network on two inputs (:func:`paired_forward`), a
discriminator's loss on real and generated images (:meth:`GANTrainer.discriminator_loss`),
``torch.compile`` of the networks in place (:func:`compile_in_place`), host-memory retention on CPU,
the epoch handed to seeded datasets, and the output: every loss as a float (one device-to-host
transfer), ``loss`` = ``loss_G`` (so MONAI's default output transforms work), ``d_updated``, and the
images detached in float32, decollated per sample by default as MONAI's own trainers do. Handlers do
the rest: ``StatsHandler`` / ``TensorBoardStatsHandler`` with :func:`losses_from_output`,
``LrScheduleHandler``, ``ValidationHandler``, the checkpoint handlers and
:class:`~modality_translation.engines.image_grid.TranslationGridHandler` (which reads ``grid_rows``
and ``grid_columns``). Under ``torch.distributed`` the bundle wraps each network in
``DistributedDataParallel``; the base needs nothing more.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.engines.workflow import Workflow
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medgan_common.host_memory import retain_freed_host_memory
from modality_translation.networks.layers import reused_weight_casts

try:  # Ignite is a MONAI engine dependency; imported here for the event names only.
    from ignite.engine import Events
except ImportError as error:  # pragma: no cover - MONAI engines need ignite
    raise ImportError("modality_translation.engines needs pytorch-ignite (MONAI's engine dependency)") from error

#: Output keys that are not losses although they are floats.
_NOT_LOSSES = ("loss",)


def _plain_tensor(value: Any) -> torch.Tensor:
    # MetaTensor routes every operation through __torch_function__ to track metadata, which costs
    # noticeably in a network's many small operations; the trainer needs only the pixels.
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


class SourceTargetBatch:
    """``prepare_batch`` for translation batches: the two images of ``batchdata`` as plain tensors on ``device``.

    The same for unpaired (CycleGAN: two domains) and paired batches (pix2pix, validation: source and
    its truth).

    Args:
        source_key: batch key of the source (domain A) images.
        target_key: batch key of the target (domain B) images, or of the paired truth.
        memory_format: memory layout of the returned tensors (e.g. ``torch.channels_last``).
    """

    def __init__(self, source_key: str = "A", target_key: str = "B", memory_format: torch.memory_format | None = None):
        self.source_key = source_key
        self.target_key = target_key
        self.memory_format = memory_format

    def _to(self, value: Any, device: Any, non_blocking: bool, **kwargs: Any) -> torch.Tensor:
        tensor = _plain_tensor(value).to(device=device, non_blocking=non_blocking, **kwargs)
        if self.memory_format is not None and tensor.ndim == 4:
            tensor = tensor.contiguous(memory_format=self.memory_format)
        return tensor

    def __call__(self, batchdata: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any):
        """Return ``(source, target)``; ``target`` is ``None`` when the batch has no ``target_key``.

        Raises:
            KeyError: the batch has no ``source_key``.
        """
        if self.source_key not in batchdata:
            raise KeyError(f"batch has no {self.source_key!r} images (keys: {sorted(batchdata)})")
        source = self._to(batchdata[self.source_key], device, non_blocking, **kwargs)
        target = batchdata.get(self.target_key)
        return source, None if target is None else self._to(target, device, non_blocking, **kwargs)


def compile_in_place(networks: Sequence[nn.Module], device: torch.device) -> None:
    """``torch.compile`` each network's forward in place (``nn.Module.compile``: same parameters, same keys).

    Raises:
        RuntimeError: on CPU without a C++ compiler, which the compiled CPU kernels need (checked
            here, rather than failing inside the first iteration).
    """
    if device.type == "cpu":
        from torch._inductor import config as inductor_config

        configured = inductor_config.cpp.cxx
        names = [os.environ.get("CXX"), *(configured if isinstance(configured, tuple) else (configured,)), "g++", "clang++"]
        if not any(shutil.which(name) for name in names if name):
            raise RuntimeError("compile_networks needs a C++ compiler on CPU (g++ or clang++, or set CXX); "
                               "install one or train without compile_networks")
    for net in networks:
        net.compile()


def resolve_amp_dtype(device: torch.device, amp_dtype: str | torch.dtype | None) -> torch.dtype:
    """Autocast dtype: the given one, else float16 on CUDA and bfloat16 elsewhere.

    Raises:
        ValueError: for a dtype other than float16 / bfloat16.
    """
    if amp_dtype is None:
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    dtype = getattr(torch, amp_dtype) if isinstance(amp_dtype, str) else amp_dtype
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp_dtype must be float16 or bfloat16, got {amp_dtype!r}")
    return dtype


@contextlib.contextmanager
def _mixed_precision_region(device_type: str, dtype: torch.dtype) -> Iterator[None]:
    """Autocast, with the small-map convolutions' own weight casts kept for the region as autocast keeps its own."""
    with torch.autocast(device_type=device_type, dtype=dtype), reused_weight_casts():
        yield


def has_batch_norm(*networks: nn.Module) -> bool:
    """Whether any network holds a batch-normalisation layer (its output then depends on the batch)."""
    return any(isinstance(m, _BatchNorm) for net in networks for m in net.modules())


@contextlib.contextmanager
def frozen(networks: Iterable[nn.Module]) -> Iterator[None]:
    """Parameters of ``networks`` do not require gradients inside the block; their flags are restored after it.

    A generator step backpropagates through the discriminator to its input; with the
    discriminator frozen, that backward pass computes no discriminator weight gradients. Parameters
    frozen for good (e.g. a pretrained backbone) stay frozen.
    """
    parameters = [p for net in networks for p in net.parameters()]
    flags = [p.requires_grad for p in parameters]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)


def paired_forward(net: nn.Module, first: torch.Tensor, second: torch.Tensor, fuse: bool):
    """``net(first), net(second)``; one batched call when ``fuse`` and the shapes match."""
    if fuse and first.shape == second.shape:
        return net(torch.cat([first, second])).split(first.shape[0])
    return net(first), net(second)


def losses_from_output(keys: Sequence[str] | None = None) -> Callable[[Any], dict[str, float]]:
    """Output transform for ``StatsHandler`` / ``TensorBoardStatsHandler``: the loss floats of an iteration.

    Works on a trainer's output dict and on its decollated list (the losses are replicated).

    Args:
        keys: loss keys to keep (default: every float of the output, i.e. the trainer's losses and
            ``d_updated``, except ``loss``, which repeats ``loss_G``).

    Returns:
        A callable mapping ``engine.state.output`` to ``{name: float}``.
    """

    def transform(output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, list) else output
        wanted = keys if keys is not None else [
            key for key, value in first.items() if isinstance(value, float) and key not in _NOT_LOSSES
        ]
        return {key: float(first[key]) for key in wanted}

    return transform


def scaler_name(optimizer_name: str) -> str:
    """Checkpoint name of the gradient scaler of an optimiser (``"g_optimizer"`` -> ``"g_scaler"``)."""
    return optimizer_name.removesuffix("_optimizer") + "_scaler"


class GANTrainer(Trainer):
    """Base of the GAN trainers: one generator update per iteration, a discriminator update every k-th.

    A family subclasses it, passes its networks and optimisers by name to ``__init__``, sets the
    class attributes below and implements :meth:`generator_step` and :meth:`discriminator_step`
    (docs/library.md, "How to add a GAN family"). The networks must already be on ``device``.
    Batches are dicts with the source images under ``source_key`` and the target images under
    ``target_key``, ``(batch, channels, *spatial)`` in [-1, 1].

    Class attributes:
        image_keys: output keys of the images of :meth:`generator_step` (detached, float32).
        discriminator_loss_keys: losses of :meth:`discriminator_step` (with derived ones of
            :meth:`combine_losses`); kept from the last update on iterations without one (NaN before).
        grid_rows: image keys of the grid rows of :class:`TranslationGridHandler`, one tuple per row kind.
        grid_columns: the grid's column titles.

    Args:
        device: the device of the networks and data.
        max_epochs: epochs to train.
        train_data_loader: loader of batches; a dataset with ``set_epoch`` is told the epoch when each
            epoch starts (the seeded datasets of :mod:`modality_translation.data`).
        networks: ``{name: network}``, set as attributes; generators first by convention. Their order is
            the checkpoint's.
        optimizers: ``{name: optimiser}``, set as attributes; each gets a gradient scaler
            (:func:`scaler_name`) when float16 AMP is on.
        state_objects: more objects with training state (``state_dict`` / ``load_state_dict``, e.g.
            image pools), set as attributes and saved in checkpoints.
        generator_steps_per_discriminator_step: k of the k:1 update ratio.
        amp: mixed precision: autocast to ``amp_dtype``; float16 uses a gradient scaler per optimiser.
        amp_dtype: ``"float16"`` or ``"bfloat16"``; default float16 on CUDA, bfloat16 on CPU.
        channels_last: convert the networks and 2D batches to channels-last memory layout.
        compile_networks: compile each network's forward in place with :func:`torch.compile`
            (parameters and checkpoint keys unchanged). The first iteration, and the first one of
            each new batch shape or train/eval mode, waits for compilation (minutes on a 2-core
            CPU). On CPU it needs a C++ compiler.
        retain_host_memory: keep freed host memory in the process for the next iterations
            (:func:`~medgan_common.host_memory.retain_freed_host_memory`, glibc only,
            process-wide); default (``None``): when training on CPU, where it saves the page faults
            of every iteration's new activations.
        source_key: batch key of the source images.
        target_key: batch key of the target images.
        epoch_length: iterations per epoch (default: the loader's length).
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: ``prepare_batch(batchdata, device, non_blocking, **kwargs) -> (source, target)``;
            default :class:`SourceTargetBatch`.
        iteration_update: replaces :meth:`_iteration` when given.
        postprocessing: MONAI post-transforms of the output.
        key_train_metric: Ignite metric computed on the outputs.
        additional_metrics: more metrics.
        metric_cmp_fn: comparison of key metric values.
        train_handlers: MONAI / Ignite handlers attached to this engine.
        event_names: additional Ignite events.
        event_to_attr: map of events to state attributes.
        decollate: decollate the output into per-sample dicts after each iteration.
        optim_set_to_none: release gradients instead of zeroing them.
        to_kwargs: more arguments of the batch's ``Tensor.to``.

    Raises:
        ValueError: for a k below 1, a name used twice, or an unsupported AMP dtype.
        RuntimeError: ``compile_networks`` on CPU without a C++ compiler.
    """

    image_keys: tuple[str, ...] = ()
    discriminator_loss_keys: tuple[str, ...] = ("loss_D",)
    grid_rows: tuple[tuple[str, ...], ...] = ()
    grid_columns: tuple[str, ...] = ()

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        state_objects: Mapping[str, Any] | None = None,
        generator_steps_per_discriminator_step: int = 1,
        amp: bool = False,
        amp_dtype: str | torch.dtype | None = None,
        channels_last: bool = False,
        compile_networks: bool = False,
        retain_host_memory: bool | None = None,
        source_key: str = "A",
        target_key: str = "B",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        iteration_update: Callable | None = None,
        postprocessing: Callable | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = True,
        optim_set_to_none: bool = True,
        to_kwargs: dict | None = None,
    ) -> None:
        k = int(generator_steps_per_discriminator_step)
        if k != generator_steps_per_discriminator_step or k < 1:
            raise ValueError(f"generator_steps_per_discriminator_step must be an integer >= 1, got {generator_steps_per_discriminator_step}")
        state_objects = dict(state_objects or {})
        names = [*networks, *optimizers, *state_objects]
        if len(set(names)) != len(names):
            raise ValueError(f"networks, optimisers and state objects need distinct names, got {names}")
        device = torch.device(device)
        memory_format = torch.channels_last if channels_last else None
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch or SourceTargetBatch(source_key, target_key, memory_format),
            iteration_update=iteration_update,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=None,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
        )
        self.network_names = tuple(networks)
        self.optimizer_names = tuple(optimizers)
        self.state_object_names = tuple(state_objects)
        for name, obj in {**networks, **optimizers, **state_objects}.items():
            setattr(self, name, obj)
        if channels_last:
            for net in self.networks:
                net.to(memory_format=torch.channels_last)
        if compile_networks:
            compile_in_place(self.networks, device)
        if retain_host_memory if retain_host_memory is not None else device.type == "cpu":
            retain_freed_host_memory()
        self.generator_steps_per_discriminator_step = k
        self.amp_dtype = resolve_amp_dtype(device, amp_dtype)
        use_scaler = bool(amp) and self.amp_dtype == torch.float16
        self.scalers = {name: torch.amp.GradScaler(device.type, enabled=use_scaler) for name in optimizers}
        self.optim_set_to_none = optim_set_to_none
        self._last_discriminator_losses = {key: float("nan") for key in self.discriminator_loss_keys}

        @self.on(Events.EPOCH_STARTED)
        def _set_dataset_epoch(engine: GANTrainer) -> None:
            # Before the epoch's data iterator exists: the seeded datasets draw this epoch's samples.
            dataset = getattr(engine.data_loader, "dataset", None)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(engine.state.epoch)

        if train_handlers is not None:
            self._register_handlers(train_handlers)

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        """The declared networks, in declaration order."""
        return tuple(getattr(self, name) for name in self.network_names)

    @property
    def scalers_enabled(self) -> bool:
        """Whether float16 gradient scaling is active."""
        return any(scaler.is_enabled() for scaler in self.scalers.values())

    def checkpoint_objects(self) -> dict[str, Any]:
        """The trainer's objects with training state, for :mod:`~modality_translation.engines.checkpoint`.

        Networks, optimisers and state objects under their declared names, and the gradient scalers
        when float16 AMP is on.
        """
        names = (*self.network_names, *self.optimizer_names, *self.state_object_names)
        objects: dict[str, Any] = {name: getattr(self, name) for name in names}
        if self.scalers_enabled:
            objects.update({scaler_name(name): scaler for name, scaler in self.scalers.items()})
        return objects

    def run(self) -> None:  # type: ignore[override]
        """Train from the engine's current state (a resumed state continues where it stopped)."""
        # Trainer.run would create one CUDA GradScaler; this trainer has one scaler per optimiser.
        Workflow.run(self)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context of the forward passes (a no-op without AMP), with :func:`reused_weight_casts`."""
        if not self.amp:
            return contextlib.nullcontext()
        return _mixed_precision_region(self.state.device.type, self.amp_dtype)

    def zero_grad(self, optimizer_name: str) -> None:
        """Release (or zero) the gradients of an optimiser's parameters before its step's forward pass."""
        getattr(self, optimizer_name).zero_grad(set_to_none=self.optim_set_to_none)

    def optimizer_step(self, optimizer_name: str, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and step the optimiser, through its gradient scaler (a no-op one without float16)."""
        scaler = self.scalers[optimizer_name]
        scaler.scale(loss).backward()
        scaler.step(getattr(self, optimizer_name))
        scaler.update()

    def discriminator_loss(
        self, criterion: Any, net: nn.Module, real: torch.Tensor, fake: torch.Tensor, fuse: bool
    ) -> torch.Tensor:
        """``criterion.discriminator_loss`` of ``net``'s logits for real and (detached) generated images.

        The forward pass runs under :meth:`autocast`, real and generated images in one call when
        ``fuse`` (:func:`paired_forward`), the loss in float32.

        Args:
            criterion: object with ``discriminator_loss(real_logits, fake_logits)`` (e.g.
                :class:`~modality_translation.losses.AdversarialLoss`).
            net: the discriminator.
            real: real images (or conditional pairs).
            fake: generated images, detached here.
            fuse: judge both in one batch (only without batch normalisation).

        Returns:
            The scalar loss.
        """
        with self.autocast():
            logits_real, logits_fake = paired_forward(net, real, fake.detach(), fuse)
        return criterion.discriminator_loss(logits_real.float(), logits_fake.float())

    def is_discriminator_iteration(self, iteration: int) -> bool:
        """Whether the discriminators are updated at (1-based) ``iteration``: 1, k + 1, 2k + 1, ..."""
        return (iteration - 1) % self.generator_steps_per_discriminator_step == 0

    def generator_step(self, source: torch.Tensor, target: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Update the generators on one batch.

        Args:
            source: the source images.
            target: the target images (another domain's for unpaired training, the truth for paired).

        Returns:
            ``(losses, images)``: loss tensors (``"loss_G"`` among them), and the images of the step
            (every key of ``image_keys``), which :meth:`discriminator_step` reuses.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement generator_step")

    def discriminator_step(
        self, source: torch.Tensor, target: torch.Tensor, images: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Update the discriminators; ``images`` are those of this iteration's :meth:`generator_step`.

        Returns:
            Loss tensors.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement discriminator_step")

    def combine_losses(self, values: dict[str, float], discriminator_updated: bool) -> dict[str, float]:
        """Derived values of an iteration's losses (sums of parts, zeros of switched-off terms).

        Args:
            values: the losses of the steps, as floats.
            discriminator_updated: whether :meth:`discriminator_step` ran.

        Returns:
            ``values`` with the derived entries added.
        """
        return values

    def _iteration(self, engine: GANTrainer, batchdata: dict) -> dict[str, Any]:
        """One training step on ``batchdata``; returns (and stores in ``engine.state.output``) losses and images.

        Raises:
            ValueError: when ``batchdata`` is None or lacks the target images.
        """
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        source, target = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if target is None:
            raise ValueError("the batch has no target images")
        for net in engine.networks:
            net.train()
        engine.state.output = output = {}

        losses, images = engine.generator_step(source, target)
        updated = engine.is_discriminator_iteration(engine.state.iteration)
        if updated:
            losses.update(engine.discriminator_step(source, target, images))
        # One device-to-host transfer for all the loss values.
        values = dict(zip(losses, torch.stack([value.detach().float() for value in losses.values()]).tolist()))
        values = engine.combine_losses(values, updated)
        if updated:
            engine._last_discriminator_losses = {key: values[key] for key in engine.discriminator_loss_keys}

        # The discriminator losses of an iteration without update are those of the last update.
        output.update(values, **engine._last_discriminator_losses, d_updated=float(updated), loss=values["loss_G"])
        output.update({key: images[key].detach().float() for key in engine.image_keys})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
