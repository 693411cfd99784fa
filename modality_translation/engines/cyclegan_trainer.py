"""The CycleGAN training engine (Zhu et al. 2017) on MONAI / Ignite.

MONAI's ``GanTrainer`` and ``AdversarialTrainer`` train one generator against one discriminator;
CycleGAN trains two generators (``G_AB``: A -> B, ``G_BA``: B -> A) against two discriminators
(``D_A`` judges domain A, ``D_B`` domain B). :class:`CycleGANTrainer` is a ``monai.engines.Trainer``
on the trainer base :class:`~modality_translation.engines.gan_trainer.GANTrainer`, whose iteration
is one CycleGAN step:

1. generators: ``fake_B = G_AB(A)``, ``rec_A = G_BA(fake_B)``, ``fake_A = G_BA(B)``, ``rec_B = G_AB(fake_A)``
   (and ``G_AB(B)``, ``G_BA(A)`` for the identity loss); with ``cycle_noise_std`` the reconstructions
   are made from ``fake + noise`` (the discriminators still judge the noiseless ``fake``);
2. generator loss ``adv(D_B(fake_B)) + adv(D_A(fake_A)) + lambda_cycle * (cycle(rec_A, A) + cycle(rec_B, B))
   + lambda_identity * (identity(G_AB(B), B) + identity(G_BA(A), A))`` (+ ``lambda_background`` times the
   background consistency loss and ``lambda_structure`` times ``structure(A, fake_B)`` and
   ``structure(fake_A, B)``, one weight per direction, both off by default), one Adam step for both generators;
3. every ``generator_steps_per_discriminator_step``-th iteration (1, k + 1, 2k + 1, ...; the base decides), the
   discriminator loss of each domain on its real images against generated images drawn from an
   :class:`~modality_translation.engines.image_pool.ImagePool`, one Adam step for both discriminators.

What keeps an iteration cheap: the generated images are computed once and reused, detached, by the
discriminator step; the discriminators' parameters do not require gradients during the generator
step (its backward pass computes no discriminator weight gradients); when the networks have no batch
normalisation (whose statistics depend on the batch), the six generator passes of step 1 become
three batched calls (``G_BA([B, A])``, then ``G_AB([A, fake_A, B])``, then ``G_BA(fake_B)``), which
halves the weight-gradient computations and accumulations, and each discriminator judges its real and
generated images as one batch. Mixed precision, channels-last layout, compilation, gradient release
and the output come from the base. Losses are computed in float32 outside autocast: SSIM's variance
terms lose their precision in 16-bit arithmetic.

``engine.state.output`` holds every loss as a float (``loss`` = ``loss_G``) and the images
``real_A, fake_B, rec_A, real_B, fake_A, rec_B`` (detached, float32). The checkpoint entries are
``g_ab, g_ba, d_a, d_b, g_optimizer, d_optimizer, pool_a, pool_b`` (and ``g_scaler, d_scaler`` with
float16 AMP).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from torch import nn

from modality_translation.engines.gan_trainer import GANTrainer, frozen, has_batch_norm
from modality_translation.engines.image_pool import ImagePool
from modality_translation.losses import AdversarialLoss, MINDStructureLoss

BACKGROUND_REGIONS = ("air", "outside")
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
    "loss_background",
    "loss_D",
    "loss_D_A",
    "loss_D_B",
    "d_updated",
)


def _per_direction(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """One value for both directions, or two; each >= 0."""
    values = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(values) != 2 or min(values) < 0:
        raise ValueError(f"{name} must be one value >= 0 or two (one per direction), got {value}")
    return float(values[0]), float(values[1])


class CycleGANTrainer(GANTrainer):
    """One CycleGAN step per iteration: both generators, then (every k-th iteration) both discriminators.

    The networks must already be on ``device``. Batches are dicts with domain A images under
    ``source_key`` and domain B images under ``target_key``, ``(batch, channels, *spatial)`` in [-1, 1].

    Args:
        device: the device of the networks and data.
        max_epochs: epochs to train.
        train_data_loader: loader of unpaired batches (e.g. of
            :class:`~modality_translation.data.unpaired.UnpairedDataset`).
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
        cycle_loss_a: the cycle loss of domain A (``rec_A`` against ``A``) when it differs from domain B's;
            default ``cycle_loss``. The CT <-> MR bundle compares CTs through their window channels
            (:class:`~modality_translation.losses.TransformedLoss`).
        identity_loss: ``loss(G_AB(B), B)``; default L1.
        lambda_cycle: weight of the cycle loss (10 in CycleGAN and the seeds).
        lambda_identity: weight of the identity loss; CycleGAN's default is 0.5 * lambda_cycle = 5;
            0 skips the identity forward passes.
        lambda_background: weight of the background consistency loss (0: off): where an input is
            background (every channel within ``background_tolerance`` of ``background_value``), its
            translation must be background too, L1 over those pixels, both directions. Air is the
            darkest value of CT and MR alike (-1 on the network scale outside the head), so the loss
            pins the head's outline: the generators cannot grow or shrink the head, which unpaired
            training otherwise allows (a skull drawn at the scalp, a brain drawn inside the skull).
        background_value: the network-scale value of the background.
        background_tolerance: how far from ``background_value`` an input pixel may be and count as
            background (0.02 on [-1, 1] is 30 HU in a 3000 HU window).
        background_region: which background pixels the loss covers: ``"air"``, every one; ``"outside"``,
            only those outside the head: reached from the image's border along their row or column
            without crossing a foreground pixel. Inside the head, tissue can be as dark as air in
            one modality and not in the other (cortical bone is black in T2, white in CT); ``"air"``
            there pulls the synthetic CT's skull towards air.
        structure_loss: ``loss(image of domain A, image of domain B)`` comparing a translation with its
            input across modalities; default :class:`~modality_translation.losses.MINDStructureLoss`.
        lambda_structure: weight of the structure loss (0: off): one value for both directions, or
            ``(A -> B, B -> A)``: the weight of ``structure(A, fake_B)`` and of ``structure(fake_A, B)``.
            Each translation keeps its input's edges where it is free to move them (the
            structure-constrained CycleGAN); one direction alone when only one input shows the edges
            the other modality draws (a CT's faint grey-white boundary is the synthetic T2's strongest,
            while a synthetic CT should not draw the T2's).
        cycle_noise_std: standard deviation of the Gaussian noise added to each translation before the
            other generator reconstructs the input from it, on the network scale of the translation's
            domain: one value for both, or ``(A, B)`` (noise on ``fake_A`` and on ``fake_B``); 0: off.
            A CycleGAN can satisfy its cycle loss by hiding the input in low-amplitude patterns of a
            translation that does not show it (Chu et al. 2017, "CycleGAN, a master of
            steganography"): the translation then draws what the discriminator expects at that place
            instead of the input's anatomy. Noise above those patterns' amplitude erases them, so the
            reconstruction must come from what the translation visibly shows.
        generator_steps_per_discriminator_step: k of the k:1 update ratio (the CT<->MRI study: 4).
        pool_size: history buffer size of each discriminator (50; 0 disables it).
        pool_seed: seed of the buffers' random generators (domain B's buffer uses ``pool_seed + 1``).
        fuse_batches: pass pairs of images through a network as one batch; default (``None``):
            when no network has batch normalisation.
        kwargs: the base's options (:class:`~modality_translation.engines.gan_trainer.GANTrainer`):
            ``amp``, ``amp_dtype``, ``channels_last``, ``compile_networks``, ``retain_host_memory``,
            ``source_key``, ``target_key``, ``epoch_length``, ``train_handlers``, ``decollate``...

    Raises:
        ValueError: for a k below 1, negative weights or noise, an unknown background region, or an
            unsupported AMP dtype.
        RuntimeError: ``compile_networks`` on CPU without a C++ compiler.
    """

    image_keys = IMAGE_KEYS
    discriminator_loss_keys = ("loss_D", "loss_D_A", "loss_D_B")
    grid_rows = (("real_A", "fake_B", "rec_A"), ("real_B", "fake_A", "rec_B"))
    grid_columns = ("input", "translated", "cycle-reconstructed")

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
        cycle_loss_a: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        identity_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        lambda_cycle: float = 10.0,
        lambda_identity: float = 5.0,
        lambda_background: float = 0.0,
        background_value: float = -1.0,
        background_tolerance: float = 0.02,
        background_region: str = "air",
        structure_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        lambda_structure: float | tuple[float, float] = 0.0,
        cycle_noise_std: float | tuple[float, float] = 0.0,
        generator_steps_per_discriminator_step: int = 1,
        pool_size: int = 50,
        pool_seed: int = 0,
        fuse_batches: bool | None = None,
        **kwargs: Any,
    ) -> None:
        structure_weights = _per_direction(lambda_structure, "lambda_structure")
        if min(lambda_cycle, lambda_identity, lambda_background) < 0:
            raise ValueError(f"loss weights must be >= 0, got lambda_cycle={lambda_cycle}, lambda_identity={lambda_identity}, "
                             f"lambda_background={lambda_background}")
        if background_region not in BACKGROUND_REGIONS:
            raise ValueError(f"background_region must be one of {BACKGROUND_REGIONS}, got {background_region!r}")
        noise = _per_direction(cycle_noise_std, "cycle_noise_std")
        super().__init__(
            device,
            max_epochs,
            train_data_loader,
            networks={"g_ab": g_ab, "g_ba": g_ba, "d_a": d_a, "d_b": d_b},
            optimizers={"g_optimizer": g_optimizer, "d_optimizer": d_optimizer},
            state_objects={"pool_a": ImagePool(pool_size, seed=pool_seed), "pool_b": ImagePool(pool_size, seed=pool_seed + 1)},
            generator_steps_per_discriminator_step=generator_steps_per_discriminator_step,
            **kwargs,
        )
        self.adversarial_loss = adversarial_loss if adversarial_loss is not None else AdversarialLoss()
        self.cycle_loss = cycle_loss if cycle_loss is not None else nn.L1Loss()
        self.cycle_loss_a = cycle_loss_a if cycle_loss_a is not None else self.cycle_loss
        self.identity_loss = identity_loss if identity_loss is not None else nn.L1Loss()
        self.lambda_cycle = float(lambda_cycle)
        self.lambda_identity = float(lambda_identity)
        self.lambda_background = float(lambda_background)
        self.background_value = float(background_value)
        self.background_tolerance = float(background_tolerance)
        self.background_region = background_region
        self.structure_loss = structure_loss if structure_loss is not None else MINDStructureLoss()
        self.lambda_structure_ab, self.lambda_structure_ba = structure_weights
        self.cycle_noise_std_a, self.cycle_noise_std_b = noise
        self.fuse_generators = not has_batch_norm(g_ab, g_ba) if fuse_batches is None else bool(fuse_batches)
        self.fuse_discriminators = not has_batch_norm(d_a, d_b) if fuse_batches is None else bool(fuse_batches)

    @property
    def generators(self) -> tuple[nn.Module, nn.Module]:
        """``(G_AB, G_BA)``."""
        return self.g_ab, self.g_ba

    @property
    def discriminators(self) -> tuple[nn.Module, nn.Module]:
        """``(D_A, D_B)``."""
        return self.d_a, self.d_b

    @property
    def g_scaler(self) -> torch.amp.GradScaler:
        """The generators' gradient scaler."""
        return self.scalers["g_optimizer"]

    @property
    def d_scaler(self) -> torch.amp.GradScaler:
        """The discriminators' gradient scaler."""
        return self.scalers["d_optimizer"]

    def generator_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> tuple[dict, dict]:
        """Update both generators; return their loss tensors and the images of the step."""
        use_identity = self.lambda_identity > 0
        self.zero_grad("g_optimizer")
        with frozen(self.discriminators):
            with self.autocast():
                if self.fuse_generators and (not use_identity or real_a.shape == real_b.shape):
                    # Three calls instead of six: fake_A (and idt_A) first, so that G_AB can translate
                    # real_A, fake_A (and real_B) in one batch; G_BA then reconstructs A.
                    if use_identity:
                        fake_a, idt_a = self.g_ba(torch.cat([real_b, real_a])).split(real_b.shape[0])
                        fake_b, rec_b, idt_b = self.g_ab(
                            torch.cat([real_a, self.with_noise(fake_a, self.cycle_noise_std_a), real_b])
                        ).split(real_a.shape[0])
                    else:
                        fake_a = self.g_ba(real_b)
                        fake_b, rec_b = self.g_ab(
                            torch.cat([real_a, self.with_noise(fake_a, self.cycle_noise_std_a)])
                        ).split(real_a.shape[0])
                else:
                    fake_b, fake_a = self.g_ab(real_a), self.g_ba(real_b)
                    rec_b = self.g_ab(self.with_noise(fake_a, self.cycle_noise_std_a))
                    if use_identity:
                        idt_b, idt_a = self.g_ab(real_b), self.g_ba(real_a)
                rec_a = self.g_ba(self.with_noise(fake_b, self.cycle_noise_std_b))
                logits_fake_b = self.d_b(fake_b)
                logits_fake_a = self.d_a(fake_a)
            self.fire_event(IterationEvents.FORWARD_COMPLETED)

            images = {"real_A": real_a, "fake_B": fake_b, "rec_A": rec_a, "real_B": real_b, "fake_A": fake_a, "rec_B": rec_b}
            adv_ab = self.adversarial_loss.generator_loss(logits_fake_b.float())
            adv_ba = self.adversarial_loss.generator_loss(logits_fake_a.float())
            cycle_a = self.cycle_loss_a(rec_a.float(), real_a.float())
            cycle_b = self.cycle_loss(rec_b.float(), real_b.float())
            loss_g = adv_ab + adv_ba + self.lambda_cycle * (cycle_a + cycle_b)
            losses = {"loss_adv_AB": adv_ab, "loss_adv_BA": adv_ba, "loss_cycle_A": cycle_a, "loss_cycle_B": cycle_b}
            if use_identity:
                identity = self.identity_loss(idt_b.float(), real_b.float()) + self.identity_loss(idt_a.float(), real_a.float())
                loss_g = loss_g + self.lambda_identity * identity
                losses["loss_identity"] = identity
            if self.lambda_background > 0:
                background = self.background_loss(fake_b, real_a) + self.background_loss(fake_a, real_b)
                loss_g = loss_g + self.lambda_background * background
                losses["loss_background"] = background
            # Logged unweighted like the other terms: the sum over the directions that have a weight.
            terms = [(weight, self.structure_loss(*images)) for weight, images in (
                (self.lambda_structure_ab, (real_a, fake_b)), (self.lambda_structure_ba, (fake_a, real_b))) if weight > 0]
            if terms:
                loss_g = loss_g + sum(weight * term for weight, term in terms)
                losses["loss_structure"] = sum(term for _, term in terms)
            self.fire_event(IterationEvents.LOSS_COMPLETED)
            self.optimizer_step("g_optimizer", loss_g)
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        losses["loss_G"] = loss_g
        return losses, images

    @staticmethod
    def with_noise(images: torch.Tensor, std: float) -> torch.Tensor:
        """``images`` plus Gaussian noise of standard deviation ``std`` (the torch generator, checkpointed)."""
        return images + std * torch.randn_like(images) if std > 0 else images

    def background_loss(self, translated: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """Mean absolute distance of ``translated`` from the background value where ``source`` is background."""
        mask = (source.float() <= self.background_value + self.background_tolerance).all(dim=1, keepdim=True)
        if self.background_region == "outside":
            mask = outside_foreground(mask)
        error = (translated.float() - self.background_value).abs() * mask
        return error.sum() / (mask.sum() * translated.shape[1]).clamp(min=1)

    def discriminator_step(self, real_a: torch.Tensor, real_b: torch.Tensor, images: dict) -> dict[str, torch.Tensor]:
        """Update both discriminators on real images and pooled generated ones; return their losses."""
        self.zero_grad("d_optimizer")
        # Generated images are reused from the generator step, detached: no second generator pass.
        loss_d_a = self.discriminator_loss(self.adversarial_loss, self.d_a, real_a, self.pool_a.query(images["fake_A"]),
                                           self.fuse_discriminators)
        loss_d_b = self.discriminator_loss(self.adversarial_loss, self.d_b, real_b, self.pool_b.query(images["fake_B"]),
                                           self.fuse_discriminators)
        self.optimizer_step("d_optimizer", loss_d_a + loss_d_b)
        return {"loss_D_A": loss_d_a, "loss_D_B": loss_d_b}

    def combine_losses(self, values: dict[str, float], discriminator_updated: bool) -> dict[str, float]:
        """Add ``loss_cycle`` (both directions), ``loss_identity``, ``loss_background`` and ``loss_structure``
        (0 when off) and ``loss_D`` (both domains)."""
        values["loss_cycle"] = values["loss_cycle_A"] + values["loss_cycle_B"]
        values.setdefault("loss_identity", 0.0)
        values.setdefault("loss_background", 0.0)
        values.setdefault("loss_structure", 0.0)
        if discriminator_updated:
            values["loss_D"] = values["loss_D_A"] + values["loss_D_B"]
        return values


def outside_foreground(background: torch.Tensor) -> torch.Tensor:
    """The pixels of ``background`` that lie outside the foreground along their row or their column.

    A pixel counts when, along its row or its column, no foreground pixel lies between it and the
    image's border: the air around a head, not the dark structures within it. (A flood fill from the
    border would also reach air in concavities; this row-and-column test needs no iteration and
    keeps everything between two foreground pixels of a line.)

    Args:
        background: boolean ``(batch, 1, *spatial)`` map of 2D images, true where the image is background.

    Returns:
        A boolean map of the same shape, a subset of ``background``.
    """
    foreground = (~background).to(torch.uint8)
    outside = torch.zeros_like(background)
    for dim in (-1, -2):
        before = foreground.cummax(dim=dim).values == 0
        after = foreground.flip(dim).cummax(dim=dim).values.flip(dim) == 0
        outside = outside | before | after
    return outside & background
