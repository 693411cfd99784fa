"""The UNIT training engine (Liu et al. 2017): two VAE-GANs sharing a latent space, on the trainer base.

UNIT learns unpaired translation between domains A and B with the networks of
:class:`~modality_translation.networks.unit_network.UNITNetwork` (encoders ``E_A``, ``E_B`` and
generators ``G_A``, ``G_B`` whose last / first blocks are shared) and one discriminator per domain
(``D_A``, ``D_B``). :class:`UNITTrainer` is a
:class:`~modality_translation.engines.gan_trainer.GANTrainer` whose iteration is:

1. the training pass of the UNIT network: ``mu_A = E_A(x_A)``, ``z_A = mu_A + eta`` (``eta ~ N(0, I)``),
   likewise for B; VAE reconstructions ``G_A(z_A)``, ``G_B(z_B)``; translations ``x_AB = G_B(z_A)``,
   ``x_BA = G_A(z_B)``; cycle ``x_ABA = G_A(E_B(x_AB) + eta)``, ``x_BAB = G_B(E_A(x_BA) + eta)``;
2. one Adam step of the encoders and generators on

       lambda_adversarial * (adv(D_B(x_AB)) + adv(D_A(x_BA)))
     + lambda_reconstruction * (rec(G_A(z_A), x_A) + rec(G_B(z_B), x_B))
     + lambda_kl * (KL(mu_A) + KL(mu_B))
     + lambda_cycle * (cyc(x_ABA, x_A) + cyc(x_BAB, x_B))
     + lambda_cycle_kl * (KL(E_B(x_AB)) + KL(E_A(x_BA)))

   with the discriminators frozen, where ``KL(mu) = KL(N(mu, I) || N(0, I))`` per latent element
   (:func:`~modality_translation.losses.latent_kl`) and ``rec``, ``cyc`` are L1 or the Charbonnier
   penalty (``reconstruction_penalty``, ``cycle_penalty``: the "Modified UNIT" switch);
3. every ``generator_steps_per_discriminator_step``-th iteration, one Adam step of both discriminators
   on ``adv_D(D_A(x_A), D_A(x_BA)) + adv_D(D_B(x_B), D_B(x_AB))``, the translations reused, detached.

Weights (the defaults): adversarial 1, reconstruction 10, KL 0.01, cycle 10, cycle KL 0.01, the
values of the authors' public configurations. The paper writes them as lambda_0 = 10 (GAN),
lambda_1 = lambda_3 = 0.1 (KL), lambda_2 = lambda_4 = 100 (reconstruction): the same ratios, ten
times larger, which Adam's step, invariant to the scale of the loss, does not see. Adversarial loss:
BCE on logits (the paper's GAN objective and the course study's), D loss = real + fake.

Order of the updates: the authors' code updates the discriminators first, then recomputes every
image for the generator update; here, as in every trainer of the library, the generators are
updated first and the discriminators judge the same translations, computed once.

``engine.state.output`` holds every loss as a float (``loss`` = ``loss_G``; sums ``loss_adv``,
``loss_reconstruction``, ``loss_kl``, ``loss_cycle``, ``loss_cycle_kl``, ``loss_D``) and the images
``real_A, vae_A, fake_B, rec_A, real_B, vae_B, fake_A, rec_B`` (``rec`` = cycle reconstruction,
``vae`` = VAE reconstruction; detached, float32). The checkpoint entries are ``unit, d_a, d_b,
g_optimizer, d_optimizer`` (and ``g_scaler, d_scaler`` with float16 AMP).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from torch import nn

from modality_translation.engines.gan_trainer import GANTrainer, frozen, has_batch_norm
from modality_translation.losses import AdversarialLoss, latent_kl, reconstruction_penalty

#: UNIT's loss weights (the authors' public configurations; the paper's values divided by 10).
UNIT_LOSS_WEIGHTS = {
    "lambda_adversarial": 1.0,
    "lambda_reconstruction": 10.0,
    "lambda_kl": 0.01,
    "lambda_cycle": 10.0,
    "lambda_cycle_kl": 0.01,
}

#: Loss terms of the generator step, per domain, and the weight each is multiplied by.
_TERMS = {
    "adv": "lambda_adversarial",
    "reconstruction": "lambda_reconstruction",
    "kl": "lambda_kl",
    "cycle": "lambda_cycle",
    "cycle_kl": "lambda_cycle_kl",
}


class UNITTrainer(GANTrainer):
    """One UNIT step per iteration: encoders and generators, then (every k-th iteration) both discriminators.

    Batches are dicts of unpaired images: domain A under ``source_key``, domain B under
    ``target_key``, ``(batch, channels, *spatial)`` in [-1, 1], spatial sizes multiples of 4.

    Args:
        device: the device of the networks and data.
        max_epochs: epochs to train.
        train_data_loader: loader of unpaired batches (e.g. of
            :func:`~modality_translation.data.unpaired.unpaired_slice_dataset`).
        unit: the encoders and generators (:class:`~modality_translation.networks.UNITNetwork`), or a
            ``DistributedDataParallel`` wrapper of it: the trainer only calls it.
        d_a: discriminator of domain A (logits).
        d_b: discriminator of domain B.
        g_optimizer: optimiser of the UNIT network (Adam, lr 1e-4, betas (0.5, 0.999) in the paper).
        d_optimizer: optimiser of both discriminators.
        adversarial_loss: object with ``generator_loss(fake_logits)`` and
            ``discriminator_loss(real_logits, fake_logits)``; default BCE
            (:class:`~modality_translation.losses.AdversarialLoss`).
        reconstruction_penalty: penalty of the VAE reconstructions: ``"l1"`` (UNIT) or ``"charbonnier"``.
        cycle_penalty: penalty of the cycle reconstructions; default: ``reconstruction_penalty``.
        charbonnier_eps: the Charbonnier smoothing constant.
        lambda_adversarial: weight of the generators' adversarial terms (1).
        lambda_reconstruction: weight of the VAE reconstruction terms (10).
        lambda_kl: weight of the KL terms of the encoded images (0.01).
        lambda_cycle: weight of the cycle reconstruction terms (10); 0 skips nothing (the pass is
            one call) but removes the terms from the loss.
        lambda_cycle_kl: weight of the KL terms of the encoded translations (0.01).
        generator_steps_per_discriminator_step: k of the k:1 update ratio (1 in UNIT).
        fuse_batches: judge real and generated images as one batch; default (``None``): when the
            discriminators have no batch normalisation.
        kwargs: the base's options (:class:`~modality_translation.engines.gan_trainer.GANTrainer`):
            ``amp``, ``amp_dtype``, ``channels_last``, ``compile_networks``, ``retain_host_memory``,
            ``source_key``, ``target_key``, ``epoch_length``, ``train_handlers``, ``decollate``...

    Raises:
        ValueError: for a negative weight, an unknown penalty (naming the allowed ones), a k below 1,
            or an unsupported AMP dtype.
    """

    image_keys = ("real_A", "vae_A", "fake_B", "rec_A", "real_B", "vae_B", "fake_A", "rec_B")
    discriminator_loss_keys = ("loss_D", "loss_D_A", "loss_D_B")
    grid_rows = (("real_A", "vae_A", "fake_B", "rec_A"), ("real_B", "vae_B", "fake_A", "rec_B"))
    grid_columns = ("input", "VAE-reconstructed", "translated", "cycle-reconstructed")

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        unit: nn.Module,
        d_a: nn.Module,
        d_b: nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        adversarial_loss: Any | None = None,
        reconstruction_penalty: str = "l1",
        cycle_penalty: str | None = None,
        charbonnier_eps: float = 1e-3,
        lambda_adversarial: float = UNIT_LOSS_WEIGHTS["lambda_adversarial"],
        lambda_reconstruction: float = UNIT_LOSS_WEIGHTS["lambda_reconstruction"],
        lambda_kl: float = UNIT_LOSS_WEIGHTS["lambda_kl"],
        lambda_cycle: float = UNIT_LOSS_WEIGHTS["lambda_cycle"],
        lambda_cycle_kl: float = UNIT_LOSS_WEIGHTS["lambda_cycle_kl"],
        generator_steps_per_discriminator_step: int = 1,
        fuse_batches: bool | None = None,
        **kwargs: Any,
    ) -> None:
        weights = {
            "lambda_adversarial": lambda_adversarial,
            "lambda_reconstruction": lambda_reconstruction,
            "lambda_kl": lambda_kl,
            "lambda_cycle": lambda_cycle,
            "lambda_cycle_kl": lambda_cycle_kl,
        }
        if any(not weight >= 0 for weight in weights.values()):
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        cycle_penalty = reconstruction_penalty if cycle_penalty is None else cycle_penalty
        reconstruction_loss = _penalty(reconstruction_penalty, charbonnier_eps, "reconstruction_penalty")
        cycle_loss = _penalty(cycle_penalty, charbonnier_eps, "cycle_penalty")
        super().__init__(
            device,
            max_epochs,
            train_data_loader,
            networks={"unit": unit, "d_a": d_a, "d_b": d_b},
            optimizers={"g_optimizer": g_optimizer, "d_optimizer": d_optimizer},
            generator_steps_per_discriminator_step=generator_steps_per_discriminator_step,
            **kwargs,
        )
        self.reconstruction_loss, self.cycle_loss = reconstruction_loss, cycle_loss
        self.reconstruction_penalty = reconstruction_penalty.lower()
        self.cycle_penalty = cycle_penalty.lower()
        self.weights = {name: float(weight) for name, weight in weights.items()}
        for name, weight in self.weights.items():
            setattr(self, name, weight)
        self.adversarial_loss = adversarial_loss if adversarial_loss is not None else AdversarialLoss("bce")
        self.fuse_discriminators = not has_batch_norm(d_a, d_b) if fuse_batches is None else bool(fuse_batches)

    @property
    def discriminators(self) -> tuple[nn.Module, nn.Module]:
        """``(D_A, D_B)``."""
        return self.d_a, self.d_b

    def generator_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> tuple[dict, dict]:
        """Update the encoders and generators on UNIT's objective; return its terms and the images of the step."""
        self.zero_grad("g_optimizer")
        with frozen(self.discriminators):
            with self.autocast():
                out = self.unit(real_a, real_b)
                logits_fake_a = self.d_a(out["fake_a"])
                logits_fake_b = self.d_b(out["fake_b"])
            self.fire_event(IterationEvents.FORWARD_COMPLETED)
            a, b = real_a.float(), real_b.float()
            losses = {
                # Domain A's terms: D_A judges B translated into A, the cycle starts from A.
                "loss_adv_A": self.adversarial_loss.generator_loss(logits_fake_a.float()),
                "loss_adv_B": self.adversarial_loss.generator_loss(logits_fake_b.float()),
                "loss_reconstruction_A": self.reconstruction_loss(out["vae_a"].float(), a),
                "loss_reconstruction_B": self.reconstruction_loss(out["vae_b"].float(), b),
                "loss_kl_A": latent_kl(out["mu_a"].float()),
                "loss_kl_B": latent_kl(out["mu_b"].float()),
                "loss_cycle_A": self.cycle_loss(out["cyc_a"].float(), a),
                "loss_cycle_B": self.cycle_loss(out["cyc_b"].float(), b),
                # The cycle of A passes through E_B(x_AB); that of B through E_A(x_BA).
                "loss_cycle_kl_A": latent_kl(out["mu_fake_b"].float()),
                "loss_cycle_kl_B": latent_kl(out["mu_fake_a"].float()),
            }
            loss_g = sum(
                self.weights[weight] * (losses[f"loss_{term}_A"] + losses[f"loss_{term}_B"]) for term, weight in _TERMS.items()
            )
            self.fire_event(IterationEvents.LOSS_COMPLETED)
            self.optimizer_step("g_optimizer", loss_g)
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        losses["loss_G"] = loss_g
        images = {
            "real_A": real_a, "vae_A": out["vae_a"], "fake_B": out["fake_b"], "rec_A": out["cyc_a"],
            "real_B": real_b, "vae_B": out["vae_b"], "fake_A": out["fake_a"], "rec_B": out["cyc_b"],
        }
        return losses, images

    def discriminator_step(self, real_a: torch.Tensor, real_b: torch.Tensor, images: dict) -> dict[str, torch.Tensor]:
        """Update both discriminators on real images against the step's translations (detached); return their losses."""
        self.zero_grad("d_optimizer")
        loss_d_a = self.discriminator_loss(self.adversarial_loss, self.d_a, real_a, images["fake_A"], self.fuse_discriminators)
        loss_d_b = self.discriminator_loss(self.adversarial_loss, self.d_b, real_b, images["fake_B"], self.fuse_discriminators)
        self.optimizer_step("d_optimizer", loss_d_a + loss_d_b)
        return {"loss_D_A": loss_d_a, "loss_D_B": loss_d_b}

    def combine_losses(self, values: dict[str, float], discriminator_updated: bool) -> dict[str, float]:
        """Add the sums of both domains: ``loss_adv``, ``loss_reconstruction``, ``loss_kl``, ``loss_cycle``,
        ``loss_cycle_kl`` and (after a discriminator update) ``loss_D``."""
        for term in _TERMS:
            values[f"loss_{term}"] = values[f"loss_{term}_A"] + values[f"loss_{term}_B"]
        if discriminator_updated:
            values["loss_D"] = values["loss_D_A"] + values["loss_D_B"]
        return values


def _penalty(name: str, charbonnier_eps: float, argument: str) -> nn.Module:
    """:func:`reconstruction_penalty`, its error naming the trainer argument."""
    try:
        return reconstruction_penalty(name, charbonnier_eps)
    except ValueError as error:
        raise ValueError(f"{argument}: {error}") from None
