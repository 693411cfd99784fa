"""The trainer base on its own: declared objects, frozen networks, output transform."""

import pytest
import torch
from torch import nn

from modality_translation.engines import CycleGANTrainer, GANTrainer, adam_optimizer, frozen, losses_from_output
import modality_translation.engines.gan_trainer as gan_trainer


def test_frozen_restores_each_parameters_flag():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Conv2d(2, 1, 1))
    net[0].weight.requires_grad_(False)  # frozen for good, e.g. a pretrained layer
    with frozen([net]):
        assert not any(p.requires_grad for p in net.parameters())
    assert [p.requires_grad for p in net.parameters()] == [False, True, True, True]


def test_declared_names_become_attributes_and_checkpoint_entries():
    generator, discriminator = nn.Conv2d(1, 1, 1), nn.Conv2d(2, 1, 1)
    trainer = GANTrainer("cpu", 1, [], {"gen": generator, "disc": discriminator},
                         {"g_optimizer": adam_optimizer(generator), "d_optimizer": adam_optimizer(discriminator)},
                         state_objects={"counter": torch.optim.SGD(generator.parameters(), lr=0.1)}, epoch_length=1)
    assert trainer.gen is generator and trainer.networks == (generator, discriminator)
    assert list(trainer.checkpoint_objects()) == ["gen", "disc", "g_optimizer", "d_optimizer", "counter"]
    with pytest.raises(NotImplementedError, match="generator_step"):
        trainer.generator_step(torch.zeros(1), torch.zeros(1))


def test_names_must_be_distinct():
    net = nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="distinct names"):
        GANTrainer("cpu", 1, [], {"net": net}, {"net": adam_optimizer(net)}, epoch_length=1)


def test_losses_from_output_takes_the_floats_but_loss():
    output = {"loss": 1.0, "loss_G": 1.0, "loss_D": 0.5, "d_updated": 1.0, "fake_B": torch.zeros(1)}
    assert losses_from_output()([output, output]) == {"loss_G": 1.0, "loss_D": 0.5, "d_updated": 1.0}
    assert losses_from_output(["loss_D"])(output) == {"loss_D": 0.5}


def _trainer(monkeypatch, device: str, **options) -> list[bool]:
    calls: list[bool] = []
    monkeypatch.setattr(gan_trainer, "retain_freed_host_memory", lambda: calls.append(True) or True)
    nets = [torch.nn.Conv2d(1, 1, 3, padding=1) for _ in range(4)]
    CycleGANTrainer(device, 1, [], *nets, adam_optimizer(nets[:2]), adam_optimizer(nets[2:]), epoch_length=1, **options)
    return calls


def test_trainer_retains_host_memory_on_cpu_by_default(monkeypatch):
    assert _trainer(monkeypatch, "cpu") == [True]
    assert _trainer(monkeypatch, "cpu", retain_host_memory=False) == []
