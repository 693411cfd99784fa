import pytest
import torch
from ignite.engine import Events
from torch import nn
from torch.utils.data import DataLoader

from modality_translation.engines import GANTrainer, Pix2PixTrainer, adam_optimizer
from tests.modality_translation.engines.toy import blob_images, tiny_generator


def conditional_discriminator(channels: int = 2) -> nn.Module:
    """A two-layer PatchGAN-like discriminator of ``channels`` input channels (source + judged image)."""
    return nn.Sequential(nn.Conv2d(channels, 8, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 3, padding=1))


def paired_loader(count: int = 16, batch_size: int = 4, seed: int = 1, source_channels: int = 1) -> DataLoader:
    """Registered pairs of the toy mapping: target = -(centre channel of the source)."""
    sources = torch.cat([blob_images(count, seed=seed + c) for c in range(source_channels)], dim=1)
    centre = sources[:, source_channels // 2: source_channels // 2 + 1]
    return DataLoader([{"A": a, "B": -b} for a, b in zip(sources, centre)], batch_size=batch_size, shuffle=True)


def make_pix2pix(max_epochs=1, loader=None, source_channels=1, **kwargs) -> Pix2PixTrainer:
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Conv2d(source_channels, 1, 1), tiny_generator(dropout=kwargs.pop("dropout", 0.0)))
    discriminator = conditional_discriminator(source_channels + 1)
    return Pix2PixTrainer("cpu", max_epochs, loader if loader is not None else paired_loader(source_channels=source_channels),
                          generator, discriminator, adam_optimizer(generator, 2e-3), adam_optimizer(discriminator, 2e-3),
                          **kwargs)


def l1_error(generator, sources, targets):
    with torch.no_grad():
        return (generator(sources) - targets).abs().mean().item()


def test_is_a_gan_trainer_with_its_own_checkpoint_entries():
    trainer = make_pix2pix()
    assert isinstance(trainer, GANTrainer)
    assert list(trainer.checkpoint_objects()) == ["generator", "discriminator", "g_optimizer", "d_optimizer"]
    assert trainer.networks == (trainer.generator, trainer.discriminator)


def test_short_run_lowers_l1_on_a_learnable_mapping():
    trainer = make_pix2pix(max_epochs=8, loader=paired_loader(count=32))
    held_out = blob_images(8, seed=7)
    before = l1_error(trainer.generator, held_out, -held_out)
    l1 = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: l1.append(e.state.output[0]["loss_reconstruction"]))
    trainer.run()
    after = l1_error(trainer.generator, held_out, -held_out)
    assert after < 0.4 * before, (before, after)
    assert sum(l1[-8:]) < 0.5 * sum(l1[:8])


@pytest.mark.parametrize("source_channels", [1, 3])
def test_discriminator_judges_the_source_with_each_image(source_channels):
    trainer = make_pix2pix(loader=paired_loader(count=4, batch_size=4, source_channels=source_channels),
                           source_channels=source_channels, fuse_batches=False, decollate=False)
    seen = []
    trainer.discriminator.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    trainer.run()
    output = trainer.state.output
    source, fake, target = output["real_A"], output["fake_B"], output["real_B"]
    # Generator step: (A, G(A)); discriminator step: (A, B) then (A, G(A)) detached.
    assert len(seen) == 3 and all(s.shape[1] == source_channels + 1 for s in seen)
    for judged in seen:
        torch.testing.assert_close(judged[:, :source_channels], source)
    torch.testing.assert_close(seen[0][:, source_channels:], fake)
    torch.testing.assert_close(seen[1][:, source_channels:], target)
    torch.testing.assert_close(seen[2][:, source_channels:], fake)


def test_the_discriminator_changes_its_verdict_when_only_the_source_changes():
    trainer = make_pix2pix(loader=paired_loader(count=4), max_epochs=3)
    trainer.run()
    images = blob_images(2, seed=5)
    with torch.no_grad():
        as_paired = trainer.discriminator(torch.cat([images, -images], dim=1))
        other_source = trainer.discriminator(torch.cat([blob_images(2, seed=9), -images], dim=1))
    assert not torch.allclose(as_paired, other_source)


@pytest.mark.parametrize("weight", [100.0, 3.0, 0.0])
def test_reconstruction_weight_is_applied(weight):
    trainer = make_pix2pix(loader=paired_loader(count=4, batch_size=2), lambda_reconstruction=weight, decollate=False)
    trainer.run()
    output = trainer.state.output
    assert output["loss"] == output["loss_G"]
    assert output["loss_G"] == pytest.approx(output["loss_adv"] + weight * output["loss_reconstruction"], rel=1e-5)
    assert output["loss_reconstruction"] > 0


def test_default_is_l1_weighted_100_with_bce_and_halved_discriminator_loss_l2_selectable():
    trainer = make_pix2pix()
    assert trainer.lambda_reconstruction == 100.0 and isinstance(trainer.reconstruction_loss, nn.L1Loss)
    assert trainer.adversarial_loss.mode == "bce" and trainer.adversarial_loss.discriminator_scale == 0.5
    l2 = make_pix2pix(loader=paired_loader(count=2, batch_size=2), reconstruction_loss=nn.MSELoss(), decollate=False)
    l2.run()
    output = l2.state.output
    expected = ((output["fake_B"] - output["real_B"]) ** 2).mean().item()
    # fake_B in the output is the image before the generator's update: the loss that was minimised.
    assert output["loss_reconstruction"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("k, expected_d_steps", [(1, 6), (2, 3), (4, 2)])
def test_update_ratio(k, expected_d_steps):
    trainer = make_pix2pix(max_epochs=3, loader=paired_loader(count=8), generator_steps_per_discriminator_step=k)
    d_steps, records = [], []
    original = trainer.d_optimizer.step
    trainer.d_optimizer.step = lambda *a, **kw: d_steps.append(1) or original(*a, **kw)
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: records.append((e.state.output[0]["d_updated"], e.state.output[0]["loss_D"])))
    trainer.run()
    assert trainer.state.iteration == 6 and len(d_steps) == expected_d_steps
    assert [flag for flag, _ in records] == [1.0 if i % k == 0 else 0.0 for i in range(6)]
    # Between updates the output repeats the last discriminator loss.
    for (flag, loss), (_, previous) in zip(records[1:], records[:-1]):
        assert flag == 1.0 or loss == previous


def test_bfloat16_and_float16_autocast():
    trainer = make_pix2pix(loader=paired_loader(count=4), amp=True)
    trainer.run()
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scalers_enabled
    assert torch.isfinite(torch.tensor(trainer.state.output[0]["loss_G"]))
    half = make_pix2pix(loader=paired_loader(count=4), amp=True, amp_dtype="float16")
    assert {"g_scaler", "d_scaler"} <= set(half.checkpoint_objects())


def test_negative_weight_rejected():
    with pytest.raises(ValueError, match="lambda_reconstruction"):
        make_pix2pix(lambda_reconstruction=-1.0)
