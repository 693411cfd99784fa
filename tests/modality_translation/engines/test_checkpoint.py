import os
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.handlers import LrScheduleHandler
from monai.transforms import Compose, RandFlipd, RandSpatialCropd, SpatialPadd
from torch.utils.data import DataLoader

from modality_translation.data import UnpairedDataset
from modality_translation.engines import (
    AtomicDiskSaver,
    GlobalRNGState,
    TrainingCheckpointLoader,
    TrainingCheckpointSaver,
    checkpoint_path,
    latest_checkpoint,
    linear_decay_scheduler,
    training_objects,
)
from tests.modality_translation.engines.toy import blob_images, make_trainer


def seeded_loader():
    """Unpaired, shuffled, randomly augmented batches: every random source a resume must restore."""

    def domain(images):
        transform = Compose([
            SpatialPadd("image", (36, 36), mode="reflect"),
            RandSpatialCropd("image", (32, 32), random_size=False),
            RandFlipd("image", prob=0.5, spatial_axis=1),
        ])
        return Dataset([{"image": image} for image in images], transform=transform)

    dataset = UnpairedDataset(domain(blob_images(6, seed=1)), domain(-blob_images(5, seed=2)), seed=3)
    return DataLoader(dataset, batch_size=2, shuffle=True)


def build(max_epochs, save_dir=None, load_path=None, seed=0, fast=False):
    """Trainer with LR schedulers, a small image pool (so that it fills and swaps) and dropout.

    ``fast``: the CPU fast path (bfloat16 autocast, channels-last networks and their optimiser steps)
    on U-Net generators, whose small maps take the matrix-product convolutions.
    """
    trainer = make_trainer(max_epochs=max_epochs, loader=seeded_loader(), seed=seed, pool_size=3, dropout=0.2,
                           generator_steps_per_discriminator_step=2, amp=fast, amp_dtype="bfloat16", channels_last=fast,
                           unet=fast)
    schedulers = {
        "g_scheduler": linear_decay_scheduler(trainer.g_optimizer, 1, 2),
        "d_scheduler": linear_decay_scheduler(trainer.d_optimizer, 1, 2),
    }
    if save_dir is not None:
        # Attached before the scheduler handlers on purpose: the saving must still come after their step.
        TrainingCheckpointSaver(save_dir, extra_objects=schedulers).attach(trainer)
    for scheduler in schedulers.values():
        LrScheduleHandler(scheduler, print_lr=False).attach(trainer)
    if load_path is not None:
        TrainingCheckpointLoader(load_path, extra_objects=schedulers).attach(trainer)
    return trainer, schedulers


def weights(trainer):
    return [p.detach().clone() for net in trainer.networks for p in net.parameters()]


def assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fast", [False, True])
def test_resume_gives_identical_weights_and_state(tmp_path, fast):
    straight, straight_schedulers = build(max_epochs=2, fast=fast)
    straight.run()

    first, _ = build(max_epochs=1, save_dir=tmp_path, fast=fast)
    first.run()
    saved = checkpoint_path(tmp_path, 1)
    assert saved.is_file() and latest_checkpoint(tmp_path) == str(saved)
    # The fast path's checkpoint has the float32 path's content: moments in the parameters' shapes.
    content = torch.load(saved, weights_only=True)
    shapes = [tuple(p.shape) for net in (first.g_ab, first.g_ba) for p in net.parameters()]
    assert [tuple(content["g_optimizer"]["state"][i]["exp_avg"].shape) for i in range(len(shapes))] == shapes
    assert all(value.dtype == torch.float32 for value in content["g_ab"].values() if value.is_floating_point())

    # A new process would build everything from other random draws: the checkpoint must override them.
    torch.manual_seed(1234)
    np.random.seed(99)
    resumed, resumed_schedulers = build(max_epochs=2, load_path=saved, seed=77, fast=fast)
    resumed.run()

    assert resumed.state.epoch == 2 and resumed.state.iteration == straight.state.iteration
    assert_same(weights(resumed), weights(straight))
    for name in ("g_optimizer", "d_optimizer"):
        straight_state = getattr(straight, name).state_dict()["state"]
        resumed_state = getattr(resumed, name).state_dict()["state"]
        for index in straight_state:
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(straight_state[index][key], resumed_state[index][key])
    for name in ("g_scheduler", "d_scheduler"):
        assert resumed_schedulers[name].state_dict() == straight_schedulers[name].state_dict()
    for pool in ("pool_a", "pool_b"):
        assert_same(getattr(resumed, pool).images, getattr(straight, pool).images)
        assert torch.equal(getattr(resumed, pool).generator.get_state(), getattr(straight, pool).generator.get_state())


def test_resume_without_the_pool_state_would_diverge(tmp_path):
    """Control: the scenario above is sensitive to the pool, so identical weights are not a coincidence."""
    straight, _ = build(max_epochs=2)
    straight.run()
    build(max_epochs=1, save_dir=tmp_path)[0].run()
    resumed, _ = build(max_epochs=2, load_path=checkpoint_path(tmp_path, 1))
    resumed.add_event_handler(Events.EPOCH_STARTED, lambda e: e.pool_a.images.clear())
    resumed.run()
    assert any(not torch.equal(a, b) for a, b in zip(weights(resumed), weights(straight)))


def test_checkpoint_content_and_scheduler_step_included(tmp_path):
    trainer, _ = build(max_epochs=1, save_dir=tmp_path)
    trainer.run()
    content = torch.load(checkpoint_path(tmp_path, 1), weights_only=True)
    assert set(content) == {
        "g_ab", "g_ba", "d_a", "d_b", "g_optimizer", "d_optimizer", "pool_a", "pool_b",
        "trainer", "rng", "g_scheduler", "d_scheduler",
    }
    assert content["trainer"]["iteration"] == trainer.state.iteration
    # Saved after LrScheduleHandler's epoch step although attached before it.
    assert content["g_scheduler"]["last_epoch"] == 1
    assert len(content["pool_a"]["images"]) == 3


def test_save_interval_final_save_and_n_saved(tmp_path):
    trainer = make_trainer(max_epochs=5, pool_size=2)
    TrainingCheckpointSaver(tmp_path / "every2", save_interval=2).attach(trainer)
    TrainingCheckpointSaver(tmp_path / "last1", n_saved=1).attach(trainer)
    trainer.run()
    assert sorted(p.name for p in (tmp_path / "every2").iterdir()) == [
        "checkpoint_epoch=2.pt", "checkpoint_epoch=4.pt", "checkpoint_epoch=5.pt",
    ]
    assert [p.name for p in (tmp_path / "last1").iterdir()] == ["checkpoint_epoch=5.pt"]


def test_latest_checkpoint_orders_epochs_numerically(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for epoch in (2, 9, 10):
        checkpoint_path(tmp_path, epoch).write_bytes(b"")
    (tmp_path / "checkpoint_epoch=99.pt.tmp").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == str(checkpoint_path(tmp_path, 10))


def test_loader_missing_file(tmp_path):
    trainer = make_trainer(max_epochs=1)
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        TrainingCheckpointLoader(tmp_path / "nothing.pt").attach(trainer)
    TrainingCheckpointLoader(None, missing_ok=True).attach(trainer)
    trainer.run()
    assert trainer.state.epoch == 1


def test_global_rng_state_round_trip(tmp_path):
    state = GlobalRNGState()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    torch.save(state.state_dict(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    state.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_atomic_saver_leaves_no_temporary_file_and_normal_permissions(tmp_path):
    saver = AtomicDiskSaver(tmp_path)
    saver({"x": torch.ones(2)}, "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["x"], torch.ones(2))
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o666 & ~umask
    saver.remove("a.pt")
    assert not list(tmp_path.iterdir())


def test_training_objects_errors():
    trainer = make_trainer()
    with pytest.raises(ValueError, match="clashes"):
        training_objects(trainer, {"g_ab": trainer.g_ab})
    with pytest.raises(TypeError, match="state_dict"):
        training_objects(trainer, {"something": object()})
    with pytest.raises(TypeError, match="checkpoint_objects"):
        training_objects(Engine(lambda e, b: None))
