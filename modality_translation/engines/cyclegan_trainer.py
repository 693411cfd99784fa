"""The CycleGAN training engine (Zhu et al. 2017) on MONAI / Ignite.

MONAI's ``GanTrainer`` and ``AdversarialTrainer`` train one generator against one discriminator;
CycleGAN trains two generators (``G_AB``: A -> B, ``G_BA``: B -> A) against two discriminators
(``D_A`` judges domain A, ``D_B`` domain B). :class:`CycleGANTrainer` is a ``monai.engines.Trainer``
whose iteration is one CycleGAN step:

1. generators: ``fake_B = G_AB(A)``, ``rec_A = G_BA(fake_B)``, ``fake_A = G_BA(B)``, ``rec_B = G_AB(fake_A)``
   (and ``G_AB(B)``, ``G_BA(A)`` for the identity loss);
2. generator loss ``adv(D_B(fake_B)) + adv(D_A(fake_A)) + lambda_cycle * (cycle(rec_A, A) + cycle(rec_B, B))
   + lambda_identity * (identity(G_AB(B), B) + identity(G_BA(A), A))``, one Adam step for both generators;
3. every ``generator_steps_per_discriminator_step``-th iteration (1, k + 1, 2k + 1, ...), the
   discriminator loss of each domain on its real images against generated images drawn from an
   :class:`~modality_translation.engines.image_pool.ImagePool`, one Adam step for both discriminators.

What keeps an iteration cheap: the generated images are computed once and reused, detached, by the
discriminator step; the discriminators' parameters do not require gradients during the generator
step (its backward pass computes no discriminator weight gradients); when the networks have no batch
normalisation (whose statistics depend on the batch), the six generator passes of step 1 become
three batched calls (``G_BA([B, A])``, then ``G_AB([A, fake_A, B])``, then ``G_BA(fake_B)``), which
halves the weight-gradient computations and accumulations, and each discriminator judges its real and
generated images as one batch; gradients are released (``set_to_none``) rather than zeroed; optional
mixed precision (``bfloat16`` autocast, or ``float16`` with a gradient scaler per optimiser) and
channels-last memory layout. Losses are computed in float32 outside autocast: SSIM's variance terms
lose their precision in 16-bit arithmetic.

``engine.state.output`` holds every loss as a float (``loss`` = ``loss_G``, so MONAI's default output
transforms work) and the images ``real_A, fake_B, rec_A, real_B, fake_A, rec_B`` (detached,
float32); with ``decollate=True`` (MONAI's default) it is decollated into one dict per sample,
the losses replicated, as for MONAI's own trainers. :func:`losses_from_output` picks the losses for
``StatsHandler`` / ``TensorBoardStatsHandler``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.engines.workflow import Workflow
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from modality_translation.host_memory import retain_freed_host_memory
from modality_translation.engines.image_pool import ImagePool
from modality_translation.losses import AdversarialLoss

try:  # Ignite is a MONAI engine dependency; imported here for the event names only.
    from ignite.engine import Events
except ImportError as error:  # pragma: no cover - MONAI engines need ignite
    raise ImportError("modality_translation.engines needs pytorch-ignite (MONAI's engine dependency)") from error

IMAGE_KEYS = ("real_A", "fake_B", "rec_A", "real_B", "fake_A", "rec_B")
LOSS_KEYS = (
    "loss",
    "loss_G",
    "loss_adv_AB",
    "loss_adv_BA",
    "loss_cycle",
    "loss_cycle_A",
    "loss_cycle_B",
    "loss_identity",
    "loss_D",
    "loss_D_A",
    "loss_D_B",
    "d_updated",
)


def _plain_tensor(value: Any) -> torch.Tensor:
    # MetaTensor routes every operation through __torch_function__ to track metadata, which costs
    # noticeably in a network's many small operations; the trainer needs only the pixels.
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


class UnpairedBatch:
    """``prepare_batch`` for translation batches: the two images of ``batchdata`` as plain tensors on ``device``.

    Args:
        source_key: batch key of the domain A images.
        target_key: batch key of the domain B images (or of the paired truth, for evaluation).
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
        """Return ``(A, B)``; ``B`` is ``None`` when the batch has no ``target_key``.

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


def has_batch_norm(*networks: nn.Module) -> bool:
    """Whether any network holds a batch-normalisation layer (its output then depends on the batch)."""
    return any(isinstance(m, _BatchNorm) for net in networks for m in net.modules())


def _set_requires_grad(networks: Iterable[nn.Module], flag: bool) -> None:
    for net in networks:
        for parameter in net.parameters():
            parameter.requires_grad_(flag)


def _paired_forward(net: nn.Module, first: torch.Tensor, second: torch.Tensor, fuse: bool):
    """``net(first), net(second)``; one batched call when ``fuse`` and the shapes match."""
    if fuse and first.shape == second.shape:
        return net(torch.cat([first, second])).split(first.shape[0])
    return net(first), net(second)


def losses_from_output(keys: Sequence[str] | None = None) -> Callable[[Any], dict[str, float]]:
    """Output transform for ``StatsHandler`` / ``TensorBoardStatsHandler``: the loss floats of an iteration.

    Works on the trainer's output dict and on its decollated list (the losses are replicated).

    Args:
        keys: loss keys to keep (default: every key of :data:`LOSS_KEYS` present, except ``loss``).

    Returns:
        A callable mapping ``engine.state.output`` to ``{name: float}``.
    """

    def transform(output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, list) else output
        wanted = keys if keys is not None else [k for k in LOSS_KEYS if k != "loss" and k in first]
        return {key: float(first[key]) for key in wanted}

    return transform


class CycleGANTrainer(Trainer):
    """One CycleGAN step per iteration: both generators, then (every k-th iteration) both discriminators.

    The networks must already be on ``device``. Batches are dicts with domain A images under
    ``source_key`` and domain B images under ``target_key``, ``(batch, channels, *spatial)`` in [-1, 1].

    Args:
        device: the device of the networks and data.
        max_epochs: epochs to train.
        train_data_loader: loader of unpaired batches (e.g. of
            :class:`~modality_translation.data.unpaired.UnpairedDataset`); a dataset with ``set_epoch``
            is told the epoch when each epoch starts.
        g_ab: generator A -> B.
        g_ba: generator B -> A.
        d_a: discriminator of domain A (logits).
        d_b: discriminator of domain B.
        g_optimizer: optimiser of both generators (see :func:`~modality_translation.engines.schedules.adam_optimizer`).
        d_optimizer: optimiser of both discriminators.
        adversarial_loss: object with ``generator_loss(fake_logits)`` and
            ``discriminator_loss(real_logits, fake_logits)``; default
            :class:`~modality_translation.losses.AdversarialLoss` (BCE, as the seed studies).
        cycle_loss: ``loss(reconstructed, original)``; default L1 (CycleGAN). The CT<->MRI bundle passes
            SSIM + perceptual (:class:`~modality_translation.losses.CycleConsistencyLoss`).
        identity_loss: ``loss(G_AB(B), B)``; default L1.
        lambda_cycle: weight of the cycle loss (10 in CycleGAN and the seeds).
        lambda_identity: weight of the identity loss; CycleGAN's default is 0.5 * lambda_cycle = 5;
            0 skips the identity forward passes.
        generator_steps_per_discriminator_step: k of the k:1 update ratio (the CT<->MRI study: 4).
        pool_size: history buffer size of each discriminator (50; 0 disables it).
        pool_seed: seed of the buffers' random generators (domain B's buffer uses ``pool_seed + 1``).
        amp: mixed precision: autocast to ``amp_dtype``; float16 uses a gradient scaler per optimiser.
        amp_dtype: ``"float16"`` or ``"bfloat16"``; default float16 on CUDA, bfloat16 on CPU.
        channels_last: convert the networks and 2D batches to channels-last memory layout.
        compile_networks: compile each network's forward in place with :func:`torch.compile`
            (parameters and checkpoint keys unchanged). The first iteration, and the first one of
            each new batch shape or train/eval mode, waits for compilation (minutes on a 2-core
            CPU); later iterations are faster (docs/library.md, benchmarks). On CPU it needs a
            C++ compiler.
        retain_host_memory: keep freed host memory in the process for the next iterations
            (:func:`~modality_translation.host_memory.retain_freed_host_memory`, glibc
            only, process-wide); default (``None``): when training on CPU, where it saves the page
            faults of every iteration's new activations.
        fuse_batches: pass pairs of images through a network as one batch; default (``None``):
            when no network has batch normalisation.
        source_key: batch key of the domain A images.
        target_key: batch key of the domain B images.
        epoch_length: iterations per epoch (default: the loader's length).
        non_blocking: non-blocking host-to-device copies.
        prepare_batch: ``prepare_batch(batchdata, device, non_blocking, **kwargs) -> (A, B)``; default
            :class:`UnpairedBatch`.
        iteration_update: replaces :meth:`_iteration` when given.
        postprocessing: MONAI post-transforms of the output.
        key_train_metric: Ignite metric computed on the outputs (e.g. on ``fake_B``).
        additional_metrics: more metrics.
        metric_cmp_fn: comparison of key metric values.
        train_handlers: MONAI / Ignite handlers attached to this engine.
        event_names: additional Ignite events.
        event_to_attr: map of events to state attributes.
        decollate: decollate the output into per-sample dicts after each iteration.
        optim_set_to_none: release gradients instead of zeroing them.
        to_kwargs: more arguments of the batch's ``Tensor.to``.

    Raises:
        ValueError: for a k below 1, negative weights, or an unsupported AMP dtype.
        RuntimeError: ``compile_networks`` on CPU without a C++ compiler.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        g_ab: nn.Module,
        g_ba: nn.Module,
        d_a: nn.Module,
        d_b: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        adversarial_loss: Any | None = None,
        cycle_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        identity_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 5.0,
        generator_steps_per_discriminator_step: int = 1,
        pool_size: int = 50,
        pool_seed: int = 0,
        amp: bool = False,
        amp_dtype: str | torch.dtype | None = None,
        channels_last: bool = False,
        compile_networks: bool = False,
        retain_host_memory: bool | None = None,
        fuse_batches: bool | None = None,
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
        if lambda_cycle < 0 or lambda_identity < 0:
            raise ValueError(f"loss weights must be >= 0, got lambda_cycle={lambda_cycle}, lambda_identity={lambda_identity}")
        device = torch.device(device)
        memory_format = torch.channels_last if channels_last else None
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch or UnpairedBatch(source_key, target_key, memory_format),
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
        self.g_ab, self.g_ba, self.d_a, self.d_b = g_ab, g_ba, d_a, d_b
        if channels_last:
            for net in self.networks:
                net.to(memory_format=torch.channels_last)
        if compile_networks:
            compile_in_place(self.networks, device)
        if retain_host_memory if retain_host_memory is not None else device.type == "cpu":
            retain_freed_host_memory()
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.adversarial_loss = adversarial_loss if adversarial_loss is not None else AdversarialLoss()
        self.cycle_loss = cycle_loss if cycle_loss is not None else nn.L1Loss()
        self.identity_loss = identity_loss if identity_loss is not None else nn.L1Loss()
        self.lambda_cycle = float(lambda_cycle)
        self.lambda_identity = float(lambda_identity)
        self.generator_steps_per_discriminator_step = k
        self.pool_a = ImagePool(pool_size, seed=pool_seed)
        self.pool_b = ImagePool(pool_size, seed=pool_seed + 1)
        self.amp_dtype = resolve_amp_dtype(device, amp_dtype)
        use_scaler = bool(amp) and self.amp_dtype == torch.float16
        self.g_scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.d_scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.fuse_generators = not has_batch_norm(g_ab, g_ba) if fuse_batches is None else bool(fuse_batches)
        self.fuse_discriminators = not has_batch_norm(d_a, d_b) if fuse_batches is None else bool(fuse_batches)
        self.optim_set_to_none = optim_set_to_none
        self._last_d_losses = {"loss_D": float("nan"), "loss_D_A": float("nan"), "loss_D_B": float("nan")}

        @self.on(Events.EPOCH_STARTED)
        def _set_dataset_epoch(engine: CycleGANTrainer) -> None:
            # Before the epoch's data iterator exists: the seeded datasets draw this epoch's samples.
            dataset = getattr(engine.data_loader, "dataset", None)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(engine.state.epoch)

        if train_handlers is not None:
            self._register_handlers(train_handlers)

    @property
    def generators(self) -> tuple[nn.Module, nn.Module]:
        """``(G_AB, G_BA)``."""
        return self.g_ab, self.g_ba

    @property
    def discriminators(self) -> tuple[nn.Module, nn.Module]:
        """``(D_A, D_B)``."""
        return self.d_a, self.d_b

    @property
    def networks(self) -> tuple[nn.Module, ...]:
        """``(G_AB, G_BA, D_A, D_B)``."""
        return (*self.generators, *self.discriminators)

    @property
    def scalers_enabled(self) -> bool:
        """Whether float16 gradient scaling is active."""
        return self.g_scaler.is_enabled()

    def checkpoint_objects(self) -> dict[str, Any]:
        """The trainer's objects with training state, for :mod:`~modality_translation.engines.checkpoint`.

        Networks, optimisers, image pools, and the gradient scalers when float16 AMP is on.
        """
        objects: dict[str, Any] = {
            "g_ab": self.g_ab,
            "g_ba": self.g_ba,
            "d_a": self.d_a,
            "d_b": self.d_b,
            "g_optimizer": self.g_optimizer,
            "d_optimizer": self.d_optimizer,
            "pool_a": self.pool_a,
            "pool_b": self.pool_b,
        }
        if self.scalers_enabled:
            objects.update(g_scaler=self.g_scaler, d_scaler=self.d_scaler)
        return objects

    def run(self) -> None:  # type: ignore[override]
        """Train from the engine's current state (a resumed state continues where it stopped)."""
        # Trainer.run would create one CUDA GradScaler; this trainer has one scaler per optimiser.
        Workflow.run(self)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context of the forward passes (a no-op without AMP)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.state.device.type, dtype=self.amp_dtype)

    def is_discriminator_iteration(self, iteration: int) -> bool:
        """Whether the discriminators are updated at (1-based) ``iteration``: 1, k + 1, 2k + 1, ..."""
        return (iteration - 1) % self.generator_steps_per_discriminator_step == 0

    def _generator_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> tuple[dict, dict]:
        """Update both generators; return their loss tensors and the images of the step."""
        use_identity = self.lambda_identity > 0
        _set_requires_grad(self.discriminators, False)
        self.g_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self.autocast():
            if self.fuse_generators and (not use_identity or real_a.shape == real_b.shape):
                # Three calls instead of six: fake_A (and idt_A) first, so that G_AB can translate
                # real_A, fake_A (and real_B) in one batch; G_BA then reconstructs A.
                if use_identity:
                    fake_a, idt_a = self.g_ba(torch.cat([real_b, real_a])).split(real_b.shape[0])
                    fake_b, rec_b, idt_b = self.g_ab(torch.cat([real_a, fake_a, real_b])).split(real_a.shape[0])
                else:
                    fake_a = self.g_ba(real_b)
                    fake_b, rec_b = self.g_ab(torch.cat([real_a, fake_a])).split(real_a.shape[0])
            else:
                fake_b, fake_a = self.g_ab(real_a), self.g_ba(real_b)
                rec_b = self.g_ab(fake_a)
                if use_identity:
                    idt_b, idt_a = self.g_ab(real_b), self.g_ba(real_a)
            rec_a = self.g_ba(fake_b)
            logits_fake_b = self.d_b(fake_b)
            logits_fake_a = self.d_a(fake_a)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)

        images = {"real_A": real_a, "fake_B": fake_b, "rec_A": rec_a, "real_B": real_b, "fake_A": fake_a, "rec_B": rec_b}
        adv_ab = self.adversarial_loss.generator_loss(logits_fake_b.float())
        adv_ba = self.adversarial_loss.generator_loss(logits_fake_a.float())
        cycle_a = self.cycle_loss(rec_a.float(), real_a.float())
        cycle_b = self.cycle_loss(rec_b.float(), real_b.float())
        loss_g = adv_ab + adv_ba + self.lambda_cycle * (cycle_a + cycle_b)
        losses = {"loss_adv_AB": adv_ab, "loss_adv_BA": adv_ba, "loss_cycle_A": cycle_a, "loss_cycle_B": cycle_b}
        if use_identity:
            identity = self.identity_loss(idt_b.float(), real_b.float()) + self.identity_loss(idt_a.float(), real_a.float())
            loss_g = loss_g + self.lambda_identity * identity
            losses["loss_identity"] = identity
        self.fire_event(IterationEvents.LOSS_COMPLETED)

        self.g_scaler.scale(loss_g).backward()
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self.g_scaler.step(self.g_optimizer)
        self.g_scaler.update()
        _set_requires_grad(self.discriminators, True)

        losses["loss_G"] = loss_g
        return losses, images

    def _discriminator_loss(self, net: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            logits_real, logits_fake = _paired_forward(net, real, fake, self.fuse_discriminators)
        return self.adversarial_loss.discriminator_loss(logits_real.float(), logits_fake.float())

    def _discriminator_step(self, real_a, real_b, fake_a, fake_b) -> dict[str, torch.Tensor]:
        """Update both discriminators on real images and pooled generated ones; return their losses."""
        self.d_optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        # Generated images are reused from the generator step, detached: no second generator pass.
        loss_d_a = self._discriminator_loss(self.d_a, real_a, self.pool_a.query(fake_a))
        loss_d_b = self._discriminator_loss(self.d_b, real_b, self.pool_b.query(fake_b))
        self.d_scaler.scale(loss_d_a + loss_d_b).backward()
        self.d_scaler.step(self.d_optimizer)
        self.d_scaler.update()
        return {"loss_D_A": loss_d_a, "loss_D_B": loss_d_b}

    def _iteration(self, engine: CycleGANTrainer, batchdata: dict) -> dict[str, Any]:
        """One CycleGAN step on ``batchdata``; returns (and stores in ``engine.state.output``) losses and images.

        Raises:
            ValueError: when ``batchdata`` is None or lacks the domain B images.
        """
        if batchdata is None:
            raise ValueError("must provide batch data for the current iteration")
        real_a, real_b = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if real_b is None:
            raise ValueError("the batch has no domain B images")
        for net in engine.networks:
            net.train()
        engine.state.output = output = {}

        losses, images = engine._generator_step(real_a, real_b)
        updated = engine.is_discriminator_iteration(engine.state.iteration)
        if updated:
            losses.update(engine._discriminator_step(real_a, real_b, images["fake_A"], images["fake_B"]))
        # One device-to-host transfer for all the loss values.
        values = dict(zip(losses, torch.stack([value.detach().float() for value in losses.values()]).tolist()))
        values["loss_cycle"] = values["loss_cycle_A"] + values["loss_cycle_B"]
        values.setdefault("loss_identity", 0.0)
        if updated:
            values["loss_D"] = values["loss_D_A"] + values["loss_D_B"]
            engine._last_d_losses = {key: values[key] for key in ("loss_D", "loss_D_A", "loss_D_B")}

        # The D losses of an iteration without D update are those of the last update.
        output.update(values, **engine._last_d_losses, d_updated=float(updated), loss=values["loss_G"])
        output.update({key: images[key].detach().float() for key in IMAGE_KEYS})
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
