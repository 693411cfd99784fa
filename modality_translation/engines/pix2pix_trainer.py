"""The pix2pix training engine (Isola et al. 2017): paired translation with a conditional PatchGAN.

pix2pix learns ``G: source -> target`` from registered pairs. Its discriminator is conditional: it
judges the channel-concatenated pair ``(source, image)``, so it learns whether an image is a
plausible target *for this source*, not merely a plausible target. :class:`Pix2PixTrainer` is a
:class:`~modality_translation.engines.gan_trainer.GANTrainer` whose iteration is:

1. generator: ``fake_B = G(A)``; loss ``adv(D(A, fake_B)) + lambda_reconstruction * rec(fake_B, B)``
   (L1 with lambda = 100 in the paper; L2 selectable), one Adam step, with D frozen;
2. every ``generator_steps_per_discriminator_step``-th iteration, the discriminator loss of the real
   pair ``(A, B)`` against the generated pair ``(A, fake_B)`` (``fake_B`` reused, detached, from step
   1), one Adam step. The paper halves this objective (``discriminator_scale=0.5``, the default here).

The reference implementation updates D before G within an iteration; here G is updated first and D
then judges the same generated images, as the base does for every family (the generated images are
computed once). The generator's noise is dropout (``UNetGenerator(dropout=0.5)``), which inference
may keep active (``VolumeTranslator(keep_dropout=True)``).

For 2.5D training the source has ``2N + 1`` channels (the slice and its N neighbours on each side)
and the target one (the centre slice): the discriminator takes ``2N + 2`` channels.

``engine.state.output`` holds ``loss_G, loss_adv, loss_reconstruction, loss_D`` as floats (``loss`` =
``loss_G``) and the images ``real_A, fake_B, real_B`` (detached, float32). The checkpoint entries are
``generator, discriminator, g_optimizer, d_optimizer`` (and ``g_scaler, d_scaler`` with float16 AMP).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from torch import nn

from modality_translation.engines.gan_trainer import GANTrainer, frozen, has_batch_norm
from modality_translation.losses import AdversarialLoss

#: pix2pix's weight of the L1 term.
PIX2PIX_LAMBDA_L1 = 100.0


def conditional_pair(source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The conditional discriminator's input: source channels, then the judged image's channels."""
    return torch.cat([source, image.to(source.dtype)], dim=1)


class Pix2PixTrainer(GANTrainer):
    """One pix2pix step per iteration: the generator, then (every k-th iteration) the conditional discriminator.

    Batches are dicts of registered pairs: source images under ``source_key`` (``(batch, C, H, W)``,
    ``C = 2N + 1`` for 2.5D) and target images under ``target_key`` (``(batch, 1, H, W)``), in [-1, 1].

    Args:
        device: the device of the networks and data.
        max_epochs: epochs to train.
        train_data_loader: loader of paired batches (e.g. of
            :func:`~modality_translation.data.unpaired.paired_slice_dataset` with ``train=True``).
        generator: ``G: source -> target`` (``modality_translation.networks.UNetGenerator`` with
            ``dropout=0.5``).
        discriminator: conditional discriminator on ``C + 1`` channels (the 70x70 PatchGAN,
            ``modality_translation.networks.PatchGANDiscriminator``), returning logits.
        g_optimizer: the generator's optimiser (Adam 2e-4, betas (0.5, 0.999) in the paper).
        d_optimizer: the discriminator's optimiser.
        adversarial_loss: object with ``generator_loss(fake_logits)`` and
            ``discriminator_loss(real_logits, fake_logits)``; default
            :class:`~modality_translation.losses.AdversarialLoss` in BCE mode with the paper's halved
            discriminator objective (``mode="least_squares"`` for LSGAN).
        reconstruction_loss: ``loss(fake_B, B)``; default L1 (``torch.nn.MSELoss`` for L2).
        lambda_reconstruction: weight of the reconstruction loss (100 in the paper).
        generator_steps_per_discriminator_step: k of the k:1 update ratio (1 in the paper).
        fuse_batches: judge the real and the generated pair as one batch; default (``None``): when
            the discriminator has no batch normalisation.
        kwargs: the base's options (:class:`~modality_translation.engines.gan_trainer.GANTrainer`):
            ``amp``, ``amp_dtype``, ``channels_last``, ``compile_networks``, ``retain_host_memory``,
            ``source_key``, ``target_key``, ``epoch_length``, ``train_handlers``, ``decollate``...

    Raises:
        ValueError: for a negative weight, a k below 1, or an unsupported AMP dtype.
    """

    image_keys = ("real_A", "fake_B", "real_B")
    discriminator_loss_keys = ("loss_D",)
    grid_rows = (("real_A", "fake_B", "real_B"),)
    grid_columns = ("input", "translated", "truth")

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        generator: nn.Module,
        discriminator: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        adversarial_loss: Any | None = None,
        reconstruction_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        lambda_reconstruction: float = PIX2PIX_LAMBDA_L1,
        generator_steps_per_discriminator_step: int = 1,
        fuse_batches: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if lambda_reconstruction < 0:
            raise ValueError(f"lambda_reconstruction must be >= 0, got {lambda_reconstruction}")
        super().__init__(
            device,
            max_epochs,
            train_data_loader,
            networks={"generator": generator, "discriminator": discriminator},
            optimizers={"g_optimizer": g_optimizer, "d_optimizer": d_optimizer},
            generator_steps_per_discriminator_step=generator_steps_per_discriminator_step,
            **kwargs,
        )
        self.adversarial_loss = (
            adversarial_loss if adversarial_loss is not None else AdversarialLoss("bce", discriminator_scale=0.5)
        )
        self.reconstruction_loss = reconstruction_loss if reconstruction_loss is not None else nn.L1Loss()
        self.lambda_reconstruction = float(lambda_reconstruction)
        self.fuse_discriminator = not has_batch_norm(discriminator) if fuse_batches is None else bool(fuse_batches)

    def generator_step(self, source: torch.Tensor, target: torch.Tensor) -> tuple[dict, dict]:
        """Update the generator on ``adv(D(A, G(A))) + lambda * rec(G(A), B)``; return its losses and images."""
        self.zero_grad("g_optimizer")
        with frozen([self.discriminator]):
            with self.autocast():
                fake = self.generator(source)
                logits_fake = self.discriminator(conditional_pair(source, fake))
            self.fire_event(IterationEvents.FORWARD_COMPLETED)
            adversarial = self.adversarial_loss.generator_loss(logits_fake.float())
            reconstruction = self.reconstruction_loss(fake.float(), target.float())
            loss_g = adversarial + self.lambda_reconstruction * reconstruction
            self.fire_event(IterationEvents.LOSS_COMPLETED)
            self.optimizer_step("g_optimizer", loss_g)
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        losses = {"loss_G": loss_g, "loss_adv": adversarial, "loss_reconstruction": reconstruction}
        return losses, {"real_A": source, "fake_B": fake, "real_B": target}

    def discriminator_step(self, source: torch.Tensor, target: torch.Tensor, images: dict) -> dict[str, torch.Tensor]:
        """Update the discriminator on the real pair against the generated pair (reused, detached)."""
        self.zero_grad("d_optimizer")
        real_pair = conditional_pair(source, target)
        fake_pair = conditional_pair(source, images["fake_B"].detach())
        loss_d = self.discriminator_loss(self.adversarial_loss, self.discriminator, real_pair, fake_pair,
                                         self.fuse_discriminator)
        self.optimizer_step("d_optimizer", loss_d)
        return {"loss_D": loss_d}
