import pytest
import torch
from ignite.engine import Events
from monai.engines.utils import IterationEvents
from torch import nn
from torch.utils.data import DataLoader

from modality_translation.engines import UNIT_LOSS_WEIGHTS, GANTrainer, UNITTrainer, adam_optimizer
from modality_translation.losses import CharbonnierLoss, latent_kl
from modality_translation.networks import UNITDiscriminator, UNITNetwork
from tests.modality_translation.engines.toy import blob_images

SIZE = 16


def unpaired_loader(count: int = 8, batch_size: int = 4) -> DataLoader:
    """Domain A: blobs; domain B: negated blobs of other images (16 x 16)."""
    a, b = blob_images(count, seed=1, size=SIZE), -blob_images(count, seed=2, size=SIZE)
    return DataLoader([{"A": x, "B": y} for x, y in zip(a, b)], batch_size=batch_size, shuffle=True)


def make_unit(max_epochs=1, loader=None, lr=2e-3, attention="none", spectral_norm=(), **kwargs) -> UNITTrainer:
    torch.manual_seed(0)
    unit = UNITNetwork(channels=4, num_res_blocks=1, attention=attention, spectral_norm=spectral_norm)
    d_a, d_b = (UNITDiscriminator(channels=4, num_layers=2, spectral_norm="discriminator" in spectral_norm)
                for _ in range(2))
    return UNITTrainer("cpu", max_epochs, loader if loader is not None else unpaired_loader(), unit, d_a, d_b,
                       adam_optimizer(unit, lr), adam_optimizer([d_a, d_b], lr), **kwargs)


def vae_error(unit: UNITNetwork, x: torch.Tensor) -> float:
    """Mean absolute error of the VAE reconstruction through the latent mean, ``G_A(E_A(x))``."""
    with torch.no_grad():
        return (unit.generator_a(unit.encoder_a(x)) - x).abs().mean().item()


def test_is_a_gan_trainer_with_its_checkpoint_entries_and_the_paper_defaults():
    trainer = make_unit()
    assert isinstance(trainer, GANTrainer)
    assert list(trainer.checkpoint_objects()) == ["unit", "d_a", "d_b", "g_optimizer", "d_optimizer"]
    assert UNIT_LOSS_WEIGHTS == {"lambda_adversarial": 1.0, "lambda_reconstruction": 10.0, "lambda_kl": 0.01,
                                 "lambda_cycle": 10.0, "lambda_cycle_kl": 0.01}
    assert trainer.weights == UNIT_LOSS_WEIGHTS and trainer.lambda_cycle_kl == 0.01
    assert trainer.adversarial_loss.mode == "bce" and trainer.adversarial_loss.discriminator_scale == 1.0
    assert isinstance(trainer.reconstruction_loss, nn.L1Loss) and isinstance(trainer.cycle_loss, nn.L1Loss)
    assert trainer.generator_steps_per_discriminator_step == 1


def test_short_run_lowers_the_reconstruction_loss():
    trainer = make_unit(max_epochs=12, loader=unpaired_loader(count=16), decollate=False)
    held_out = blob_images(8, seed=7, size=SIZE)
    before = vae_error(trainer.unit, held_out)
    logged = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: logged.append(e.state.output["loss_reconstruction"]))
    trainer.run()
    assert len(logged) == 48
    assert sum(logged[-8:]) < 0.7 * sum(logged[:8]), (logged[:8], logged[-8:])
    after = vae_error(trainer.unit, held_out)
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("weights", [
    {},
    {"lambda_adversarial": 2.0, "lambda_reconstruction": 3.0, "lambda_kl": 0.5, "lambda_cycle": 0.0, "lambda_cycle_kl": 7.0},
])
def test_loss_g_is_the_weighted_sum_of_the_logged_terms(weights):
    trainer = make_unit(loader=unpaired_loader(count=4, batch_size=2), decollate=False, **weights)
    trainer.run()
    out = trainer.state.output
    applied = {**UNIT_LOSS_WEIGHTS, **weights}
    expected = (applied["lambda_adversarial"] * out["loss_adv"] + applied["lambda_reconstruction"] * out["loss_reconstruction"]
                + applied["lambda_kl"] * out["loss_kl"] + applied["lambda_cycle"] * out["loss_cycle"]
                + applied["lambda_cycle_kl"] * out["loss_cycle_kl"])
    assert out["loss"] == out["loss_G"] == pytest.approx(expected, rel=1e-5)
    for term in ("adv", "reconstruction", "kl", "cycle", "cycle_kl"):
        assert out[f"loss_{term}"] == pytest.approx(out[f"loss_{term}_A"] + out[f"loss_{term}_B"])
        assert out[f"loss_{term}_A"] > 0
    assert out["loss_D"] == pytest.approx(out["loss_D_A"] + out["loss_D_B"])


def test_logged_terms_are_the_penalties_and_kl_of_the_step_images():
    """With the Charbonnier switch, the reconstruction terms are Charbonnier penalties of the images of the step."""
    trainer = make_unit(loader=unpaired_loader(count=2, batch_size=2), decollate=False,
                        reconstruction_penalty="charbonnier", charbonnier_eps=0.05)
    kl_inputs = []
    trainer.unit.shared_encoder_block.register_forward_hook(lambda module, inputs, output: kl_inputs.append(output.detach()))
    trainer.run()
    out = trainer.state.output
    penalty = CharbonnierLoss(eps=0.05)
    assert isinstance(trainer.reconstruction_loss, CharbonnierLoss) and isinstance(trainer.cycle_loss, CharbonnierLoss)
    # The images of the output are those the losses were computed on, before the update.
    assert out["loss_reconstruction_A"] == pytest.approx(penalty(out["vae_A"], out["real_A"]).item(), rel=1e-5)
    assert out["loss_cycle_B"] == pytest.approx(penalty(out["rec_B"], out["real_B"]).item(), rel=1e-5)
    # The shared encoder block ran twice, on (x_A, x_B) and on (x_BA, x_AB), each time as one batch.
    assert [len(batch) for batch in kl_inputs] == [4, 4]
    mu_a, mu_b = kl_inputs[0].split(2)
    mu_fake_a, mu_fake_b = kl_inputs[1].split(2)
    assert out["loss_kl_A"] == pytest.approx(latent_kl(mu_a).item(), rel=1e-5)
    assert out["loss_kl_B"] == pytest.approx(latent_kl(mu_b).item(), rel=1e-5)
    # A's cycle passes through E_B(x_AB), B's through E_A(x_BA).
    assert out["loss_cycle_kl_A"] == pytest.approx(latent_kl(mu_fake_b).item(), rel=1e-5)
    assert out["loss_cycle_kl_B"] == pytest.approx(latent_kl(mu_fake_a).item(), rel=1e-5)


def test_penalty_switches_are_independent_and_l1_by_default():
    trainer = make_unit(cycle_penalty="charbonnier")
    assert isinstance(trainer.reconstruction_loss, nn.L1Loss) and isinstance(trainer.cycle_loss, CharbonnierLoss)
    assert (trainer.reconstruction_penalty, trainer.cycle_penalty) == ("l1", "charbonnier")


def test_each_discriminator_judges_its_domain_against_the_translation_into_it():
    trainer = make_unit(loader=unpaired_loader(count=2, batch_size=2), fuse_batches=False, decollate=False)
    seen = {"a": [], "b": []}
    trainer.d_a.register_forward_hook(lambda m, inputs, output: seen["a"].append(inputs[0].detach().clone()))
    trainer.d_b.register_forward_hook(lambda m, inputs, output: seen["b"].append(inputs[0].detach().clone()))
    trainer.run()
    out = trainer.state.output
    # Generator step: D(translation); discriminator step: D(real), then D(translation) detached.
    for domain, real, fake in (("a", "real_A", "fake_A"), ("b", "real_B", "fake_B")):
        judged = seen[domain]
        assert len(judged) == 3
        torch.testing.assert_close(judged[0], out[fake])
        torch.testing.assert_close(judged[1], out[real])
        torch.testing.assert_close(judged[2], out[fake])


def test_discriminators_get_no_gradient_in_the_generator_step_and_the_unit_none_in_theirs():
    trainer = make_unit(loader=unpaired_loader(count=2, batch_size=2))
    grads = {}

    def after_generator_step(engine):
        grads["d"] = [p.grad for p in engine.d_a.parameters()]

    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, after_generator_step)
    trainer.run()
    assert all(g is None for g in grads["d"])


def test_switched_networks_train_and_amp_runs():
    trainer = make_unit(loader=unpaired_loader(count=4, batch_size=2), attention="both",
                        spectral_norm=["encoder", "generator", "discriminator"], amp=True, decollate=False)
    trainer.run()
    assert trainer.amp_dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(v)) for k, v in trainer.state.output.items() if k.startswith("loss"))
    assert {"g_scaler", "d_scaler"} <= set(make_unit(amp=True, amp_dtype="float16").checkpoint_objects())


def test_bad_switches_and_weights_are_refused_naming_the_allowed_values():
    with pytest.raises(ValueError, match=r"reconstruction_penalty: reconstruction penalty must be one of \('l1', 'charbonnier'\), got 'l2'"):
        make_unit(reconstruction_penalty="l2")
    with pytest.raises(ValueError, match=r"cycle_penalty: .*\('l1', 'charbonnier'\), got 'ssim'"):
        make_unit(cycle_penalty="ssim")
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        make_unit(lambda_kl=-0.01)
