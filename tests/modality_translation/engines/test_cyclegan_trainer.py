import logging
import shutil

import pytest
import torch
from ignite.engine import Events
from monai.handlers import StatsHandler, TensorBoardStatsHandler, from_engine
from torch import nn
from torch.utils.data import DataLoader

from modality_translation.engines import IMAGE_KEYS, CycleGANTrainer, adam_optimizer, losses_from_output
from modality_translation.engines.gan_trainer import compile_in_place
from modality_translation.losses import CycleConsistencyLoss
from tests.modality_translation.engines.toy import (
    blob_images,
    make_trainer,
    tiny_discriminator,
    tiny_generator,
    unpaired_loader,
)


def translation_error(generator, images):
    """Mean |G_AB(A) - (-A)|: the toy mapping's error."""
    with torch.no_grad():
        return (generator(images) + images).abs().mean().item()


def count_steps(optimizer):
    counter = {"steps": 0}
    original = optimizer.step

    def step(*args, **kwargs):
        counter["steps"] += 1
        return original(*args, **kwargs)

    optimizer.step = step
    return counter


def test_learns_the_toy_mapping():
    trainer = make_trainer(max_epochs=10, loader=unpaired_loader(count=32), lambda_identity=0.0)
    held_out = blob_images(8, seed=3)
    before = translation_error(trainer.g_ab, held_out)
    cycle_losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: cycle_losses.append(e.state.output[0]["loss_cycle"]))
    trainer.run()
    after = translation_error(trainer.g_ab, held_out)
    assert trainer.state.iteration == 80
    assert after < 0.4 * before, (before, after)
    assert sum(cycle_losses[-8:]) < 0.5 * sum(cycle_losses[:8])


@pytest.mark.parametrize("k, expected_d_steps", [(1, 10), (4, 3), (3, 4)])
def test_generator_discriminator_update_ratio(k, expected_d_steps):
    trainer = make_trainer(max_epochs=5, loader=unpaired_loader(count=8), generator_steps_per_discriminator_step=k)
    g_steps, d_steps = count_steps(trainer.g_optimizer), count_steps(trainer.d_optimizer)
    flags = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: flags.append(e.state.output[0]["d_updated"]))
    trainer.run()
    assert trainer.state.iteration == 10
    assert g_steps["steps"] == 10
    assert d_steps["steps"] == expected_d_steps
    assert flags == [1.0 if i % k == 0 else 0.0 for i in range(10)]


def test_discriminators_untouched_by_the_generator_step():
    trainer = make_trainer(max_epochs=1, loader=unpaired_loader(count=12), generator_steps_per_discriminator_step=3)
    snapshots = []

    def snapshot(engine):
        parameters = list(engine.d_a.parameters()) + list(engine.d_b.parameters())
        weights = torch.cat([p.detach().flatten() for p in parameters])
        grads = torch.cat([p.grad.flatten() for p in parameters])
        snapshots.append((weights, grads, all(p.requires_grad for p in parameters)))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, snapshot)
    trainer.run()
    (w1, g1, _), (w2, g2, _), (w3, g3, _) = snapshots
    # Iteration 1 updates D; the generator steps of iterations 2 and 3 neither step D nor add to its
    # gradients (its parameters do not require grad during them).
    assert torch.equal(w1, w2) and torch.equal(w2, w3)
    assert torch.equal(g1, g2) and torch.equal(g2, g3)
    assert all(s[2] for s in snapshots), "discriminator parameters must require grad again after the G step"


def test_output_holds_losses_as_floats_and_detached_images():
    trainer = make_trainer(max_epochs=1, loader=unpaired_loader(count=4, batch_size=2), decollate=False)
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(e.state.output))
    trainer.run()
    output = outputs[-1]
    for key in ("loss", "loss_G", "loss_D", "loss_D_A", "loss_D_B", "loss_cycle", "loss_identity", "loss_adv_AB", "loss_adv_BA"):
        assert isinstance(output[key], float), key
    assert output["loss"] == output["loss_G"]
    assert output["loss_D"] == pytest.approx(output["loss_D_A"] + output["loss_D_B"])
    assert output["loss_cycle"] == pytest.approx(output["loss_cycle_A"] + output["loss_cycle_B"])
    total = output["loss_adv_AB"] + output["loss_adv_BA"] + 10.0 * output["loss_cycle"] + 5.0 * output["loss_identity"]
    assert output["loss_G"] == pytest.approx(total, rel=1e-5)
    for key in IMAGE_KEYS:
        assert output[key].shape == (2, 1, 32, 32), key
        assert not output[key].requires_grad
        assert output[key].dtype == torch.float32
    assert torch.all(output["fake_B"].abs() <= 1.0)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_decollated_output_works_with_monai_handlers(tmp_path):
    trainer = make_trainer(max_epochs=1, loader=unpaired_loader(count=4, batch_size=2))
    records = _Records()
    for name, transform in (("loss_stats", from_engine(["loss"], first=True)), ("all_losses", losses_from_output())):
        StatsHandler(name=name, output_transform=transform, iteration_log=True).attach(trainer)
        logging.getLogger(name).addHandler(records)
    TensorBoardStatsHandler(log_dir=str(tmp_path), output_transform=losses_from_output(["loss_G", "loss_D"])).attach(trainer)
    try:
        trainer.run()
    finally:
        for name in ("loss_stats", "all_losses"):
            logging.getLogger(name).removeHandler(records)
    assert isinstance(trainer.state.output, list) and len(trainer.state.output) == 2
    assert trainer.state.output[0]["fake_B"].shape == (1, 32, 32)
    text = "\n".join(records.messages)
    assert "Loss: " in text and "loss_G: " in text and "loss_D_A: " in text
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_bfloat16_autocast_on_cpu_trains():
    trainer = make_trainer(max_epochs=1, loader=unpaired_loader(count=8), amp=True)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scalers_enabled
    before = [p.detach().clone() for p in trainer.g_ab.parameters()]
    trainer.run()
    output = trainer.state.output[0]
    assert all(torch.isfinite(torch.tensor(output[k])) for k in ("loss_G", "loss_D", "loss_cycle"))
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.g_ab.parameters()))
    assert output["fake_B"].dtype == torch.float32


def test_float16_autocast_uses_one_gradient_scaler_per_optimizer():
    # The scalers start at 2**16 and halve on each overflow: the first few steps are skipped.
    trainer = make_trainer(max_epochs=6, loader=unpaired_loader(count=8), amp=True, amp_dtype="float16")
    assert trainer.scalers_enabled and trainer.g_scaler is not trainer.d_scaler
    assert {"g_scaler", "d_scaler"} <= set(trainer.checkpoint_objects())
    before = [p.detach().clone() for p in trainer.g_ab.parameters()]
    trainer.run()
    output = trainer.state.output[0]
    assert all(torch.isfinite(torch.tensor(output[k])) for k in ("loss_G", "loss_D"))
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.g_ab.parameters()))
    assert "g_scaler" not in make_trainer().checkpoint_objects()


def test_unsupported_amp_dtype_and_ratio_rejected():
    with pytest.raises(ValueError, match="amp_dtype"):
        make_trainer(amp=True, amp_dtype="float64")
    with pytest.raises(ValueError, match="generator_steps_per_discriminator_step"):
        make_trainer(generator_steps_per_discriminator_step=0)


def _one_iteration(fuse, channels_last=False, compile_networks=False):
    torch.manual_seed(0)
    nets = [tiny_generator(norm=True), tiny_generator(norm=True), tiny_discriminator(), tiny_discriminator()]
    trainer = CycleGANTrainer(
        "cpu", 1, unpaired_loader(count=2, batch_size=2, shuffle=False), *nets,
        # Plain SGD: Adam's first step is about lr * sign(gradient), which magnifies rounding differences.
        torch.optim.SGD([p for n in nets[:2] for p in n.parameters()], lr=0.1),
        torch.optim.SGD([p for n in nets[2:] for p in n.parameters()], lr=0.1),
        fuse_batches=fuse, channels_last=channels_last, compile_networks=compile_networks, decollate=False,
    )
    trainer.run()
    return trainer.state.output, [p.detach().clone() for net in nets for p in net.parameters()]


def test_batched_generator_calls_equal_separate_calls():
    fused_output, fused_weights = _one_iteration(fuse=True)
    separate_output, separate_weights = _one_iteration(fuse=False)
    for key in ("loss_G", "loss_D_A", "loss_D_B", "loss_identity"):
        assert fused_output[key] == pytest.approx(separate_output[key], rel=1e-5, abs=1e-6), key
    for fused, separate in zip(fused_weights, separate_weights):
        torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-5)


def test_channels_last_gives_the_same_step():
    reference_output, _ = _one_iteration(fuse=True)
    channels_last_output, _ = _one_iteration(fuse=True, channels_last=True)
    assert channels_last_output["loss_G"] == pytest.approx(reference_output["loss_G"], rel=1e-5)
    torch.testing.assert_close(channels_last_output["fake_B"], reference_output["fake_B"], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("g++", "clang++")), reason="no C++ compiler")
def test_compiled_networks_give_the_same_step_and_keep_their_checkpoint_keys():
    reference_output, reference_weights = _one_iteration(fuse=True)
    compiled_output, compiled_weights = _one_iteration(fuse=True, compile_networks=True)
    assert compiled_output["loss_G"] == pytest.approx(reference_output["loss_G"], rel=1e-4)
    for compiled, reference in zip(compiled_weights, reference_weights):
        torch.testing.assert_close(compiled, reference, rtol=1e-3, atol=1e-4)
    net = tiny_generator()
    keys = list(net.state_dict())
    compile_in_place([net], torch.device("cpu"))
    assert list(net.state_dict()) == keys  # checkpoints load into uncompiled networks and back


def test_compiling_without_a_cpp_compiler_is_refused_before_training(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        make_trainer(compile_networks=True)


def test_batch_norm_networks_are_not_batched_together():
    generator = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1), nn.Tanh())
    trainer = CycleGANTrainer(
        "cpu", 1, unpaired_loader(count=2), generator, tiny_generator(), tiny_discriminator(), tiny_discriminator(),
        adam_optimizer(generator), adam_optimizer(tiny_discriminator()),
    )
    assert not trainer.fuse_generators and trainer.fuse_discriminators


def test_configurable_cycle_loss_is_used():
    calls = []
    l1 = nn.L1Loss()

    def cycle(reconstructed, original):
        calls.append(reconstructed.shape)
        return l1(reconstructed, original)

    trainer = make_trainer(loader=unpaired_loader(count=4), cycle_loss=cycle, lambda_identity=0.0)
    trainer.run()
    assert len(calls) == 2 * trainer.state.iteration  # both directions every iteration

    # Domain A may have its own cycle loss (the CT <-> MR bundle compares CTs through their windows).
    domains = []

    def recording(name):
        def loss(reconstructed, original):
            domains.append(name)
            return l1(reconstructed, original)
        return loss

    trainer = make_trainer(loader=unpaired_loader(count=4), cycle_loss=recording("B"), cycle_loss_a=recording("A"),
                           lambda_identity=0.0)
    trainer.run()
    assert domains == ["A", "B"] * trainer.state.iteration

    ssim_trainer = make_trainer(loader=unpaired_loader(count=4), cycle_loss=CycleConsistencyLoss(l1_weight=0, ssim_weight=1, ssim_win_size=7))
    ssim_trainer.run()
    output = ssim_trainer.state.output[0]
    assert 0.0 < output["loss_cycle_A"] <= 2.0  # 1 - SSIM


@pytest.mark.parametrize(
    "lambda_identity, fuse, expected_calls",
    [(0.0, True, [8]), (5.0, True, [12]), (0.0, False, [4, 4]), (5.0, False, [4, 4, 4])],
)
def test_generator_calls_per_iteration(lambda_identity, fuse, expected_calls):
    """G_AB translates A, fake_A (and B for the identity loss): batched into one call when allowed."""
    trainer = make_trainer(loader=unpaired_loader(count=4, batch_size=4), lambda_identity=lambda_identity,
                           fuse_batches=fuse, decollate=False)
    calls = []
    trainer.g_ab.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    trainer.run()
    assert calls == expected_calls
    assert (trainer.state.output["loss_identity"] == 0.0) == (lambda_identity == 0.0)


def test_dataset_is_told_the_epoch():
    class Recording(torch.utils.data.Dataset):
        def __init__(self):
            self.epochs = []
            self.images = [{"A": x, "B": -x} for x in blob_images(2, seed=0)]

        def set_epoch(self, epoch):
            self.epochs.append(epoch)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            return self.images[index]

    dataset = Recording()
    make_trainer(max_epochs=3, loader=DataLoader(dataset, batch_size=2)).run()
    assert dataset.epochs == [1, 2, 3]


def test_checkpoint_entries_keep_their_names_on_the_trainer_base():
    """Checkpoints written before the trainer base load unchanged: the same entry names."""
    assert list(make_trainer().checkpoint_objects()) == [
        "g_ab", "g_ba", "d_a", "d_b", "g_optimizer", "d_optimizer", "pool_a", "pool_b"]
    half = make_trainer(amp=True, amp_dtype="float16")
    assert list(half.checkpoint_objects())[-2:] == ["g_scaler", "d_scaler"]
    assert half.checkpoint_objects()["g_scaler"] is half.g_scaler


def test_background_consistency_loss_keeps_the_background_of_the_input():
    """Where the input is background (-1), the translation is pulled to -1; elsewhere it is free."""
    trainer = make_trainer(loader=unpaired_loader(count=4), lambda_background=1.0, lambda_identity=0.0)
    source = torch.full((2, 1, 8, 8), -1.0)
    source[:, :, 2:6, 2:6] = 0.3  # the head
    translated = torch.zeros(2, 1, 8, 8)
    translated[:, :, 2:6, 2:6] = 0.9
    # 48 background pixels of each image at distance 1 from -1; the head's values do not count.
    assert trainer.background_loss(translated, source).item() == pytest.approx(1.0)
    translated[source == -1.0] = -1.0
    assert trainer.background_loss(translated, source).item() == pytest.approx(0.0)
    trainer.run()
    output = trainer.state.output[0]
    assert output["loss_background"] >= 0.0  # logged every iteration
    with pytest.raises(ValueError, match="lambda_background"):
        make_trainer(lambda_background=-1.0)


def test_background_outside_the_head_leaves_its_dark_interior_free():
    """background_region="outside": a ring of tissue with air-dark pixels inside counts only the air around it."""
    from modality_translation.engines.cyclegan_trainer import outside_foreground

    source = torch.full((1, 1, 9, 9), -1.0)
    source[:, :, 2:7, 2:7] = 0.3  # the head
    source[:, :, 4, 3:6] = -1.0  # a dark structure inside it (cortical bone in T2)
    translated = torch.full((1, 1, 9, 9), -1.0)
    translated[:, :, 2:7, 2:7] = 0.5
    outside = make_trainer(lambda_background=1.0, background_region="outside")
    everywhere = make_trainer(lambda_background=1.0)
    # The 3 dark pixels inside the head are translated to 0.5: a loss of 1.5 each for "air" only.
    assert outside.background_loss(translated, source).item() == pytest.approx(0.0)
    assert everywhere.background_loss(translated, source).item() == pytest.approx(3 * 1.5 / (81 - 25 + 3))
    region = outside_foreground(source <= -0.98)
    assert region.sum().item() == 81 - 25 and not region[0, 0, 4, 3:6].any()
    with pytest.raises(ValueError, match="background_region"):
        make_trainer(background_region="inside")


def test_cycle_noise_reaches_the_reconstruction_only():
    """cycle_noise_std perturbs what the other generator reconstructs from, not the translation judged by D."""
    outputs = {}
    for noise in (0.0, (0.0, 0.5), (0.5, 0.0)):
        torch.manual_seed(0)
        nets = [tiny_generator(), tiny_generator(), tiny_discriminator(), tiny_discriminator()]
        trainer = CycleGANTrainer(
            "cpu", 1, unpaired_loader(count=2, batch_size=2, shuffle=False), *nets,
            torch.optim.SGD([p for n in nets[:2] for p in n.parameters()], lr=0.0),
            torch.optim.SGD([p for n in nets[2:] for p in n.parameters()], lr=0.0),
            lambda_identity=0.0, cycle_noise_std=noise, decollate=False,
        )
        trainer.run()
        outputs[noise] = trainer.state.output
    clean, noisy_b, noisy_a = outputs[0.0], outputs[(0.0, 0.5)], outputs[(0.5, 0.0)]
    for output in (noisy_b, noisy_a):  # the translations themselves are unchanged
        torch.testing.assert_close(output["fake_B"], clean["fake_B"])
        torch.testing.assert_close(output["fake_A"], clean["fake_A"])
    # Noise on fake_B changes rec_A only; noise on fake_A changes rec_B only.
    assert not torch.allclose(noisy_b["rec_A"], clean["rec_A"])
    torch.testing.assert_close(noisy_b["rec_B"], clean["rec_B"])
    assert not torch.allclose(noisy_a["rec_B"], clean["rec_B"])
    torch.testing.assert_close(noisy_a["rec_A"], clean["rec_A"])
    for bad in (-0.1, (0.1, -0.1), (0.1, 0.1, 0.1)):
        with pytest.raises(ValueError, match="cycle_noise_std"):
            make_trainer(cycle_noise_std=bad)


def test_structure_loss_weighted_into_the_generator_loss_and_logged():
    """lambda_structure adds MIND(real_A, fake_B) + MIND(fake_A, real_B); its gradient reaches the generators."""
    calls = []

    def structure(image_a, image_b):
        calls.append((image_a.shape, image_b.shape, image_a.requires_grad, image_b.requires_grad))
        return (image_a - image_b).abs().mean()

    trainer = make_trainer(loader=unpaired_loader(count=2), lambda_structure=2.0, lambda_identity=0.0,
                           structure_loss=structure)
    trainer.run()
    output = trainer.state.output[0]
    # One call per direction per iteration: (real_A, fake_B) needs grad on B only, (fake_A, real_B) on A only.
    assert [c[2:] for c in calls[:2]] == [(False, True), (True, False)]
    assert output["loss_structure"] > 0.0
    plain = make_trainer(loader=unpaired_loader(count=2), lambda_identity=0.0)
    plain.run()
    assert plain.state.output[0]["loss_structure"] == 0.0
    with pytest.raises(ValueError, match="lambda_structure"):
        make_trainer(lambda_structure=-0.5)
    with pytest.raises(ValueError, match="lambda_structure"):
        make_trainer(lambda_structure=(1.0, 1.0, 1.0))


def test_structure_loss_of_one_direction_only():
    """lambda_structure=(w, 0): only MIND(real_A, fake_B), weighted by w; (0, w): only MIND(fake_A, real_B)."""
    for weights, expected in (((3.0, 0.0), (False, True)), ((0.0, 3.0), (True, False))):
        calls = []

        def structure(image_a, image_b, calls=calls):
            calls.append((image_a.requires_grad, image_b.requires_grad))
            return (image_a - image_b).abs().mean()

        trainer = make_trainer(loader=unpaired_loader(count=2), lambda_structure=weights, lambda_identity=0.0,
                               structure_loss=structure)
        trainer.run()
        assert calls and set(calls) == {expected}, weights
        output = trainer.state.output[0]
        assert output["loss_structure"] > 0.0
        # The generator loss holds the weighted term: against weight 1, on the same seed and the same
        # single iteration, it is larger by exactly twice the logged (unweighted) term.
        once = make_trainer(loader=unpaired_loader(count=2), lambda_structure=tuple(w / 3.0 for w in weights),
                            lambda_identity=0.0, structure_loss=structure)
        once.run()
        assert trainer.state.iteration == once.state.iteration == 1
        reference = once.state.output[0]
        assert float(reference["loss_structure"]) == pytest.approx(float(output["loss_structure"]), rel=1e-6)
        assert float(output["loss_G"] - reference["loss_G"]) == pytest.approx(2.0 * float(output["loss_structure"]), rel=1e-4)
