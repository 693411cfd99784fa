import pytest
import torch
from ignite.engine import Engine
from torch import nn

from modality_translation.engines import GeneratorAverage, TrainingCheckpointLoader, TrainingCheckpointSaver, checkpoint_path
from tests.modality_translation.engines.toy import make_trainer, tiny_generator


def stepping_engine(net: nn.Module, values):
    """An engine whose iteration ``t`` sets every weight of ``net`` to ``values[t - 1]``."""

    def step(engine, _):
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.fill_(values[engine.state.iteration - 1])

    return Engine(step)


def test_the_average_is_the_exponential_moving_average_of_the_iterations_weights():
    net = tiny_generator()
    average = GeneratorAverage({"g": net}, decay=0.5)
    engine = stepping_engine(net, [1.0, 2.0, 3.0])
    average.attach(engine)
    engine.run([0, 0, 0], max_epochs=1)
    # first iteration copies (1), then 0.5 * 1 + 0.5 * 2 = 1.5, then 0.5 * 1.5 + 0.5 * 3 = 2.25
    averaged = average.network("g")
    assert averaged is not net
    for parameter in averaged.parameters():
        assert torch.allclose(parameter, torch.full_like(parameter, 2.25))
        assert not parameter.requires_grad
    for parameter in net.parameters():  # the trained network is untouched
        assert torch.equal(parameter, torch.full_like(parameter, 3.0))
    assert average.state_dict()["g"]["n_averaged"].item() == 3


def test_without_decay_the_trained_network_is_validated_and_exported():
    net = tiny_generator()
    average = GeneratorAverage({"g": net}, decay=0.0)
    engine = stepping_engine(net, [1.0])
    average.attach(engine)
    engine.run([0], max_epochs=1)
    assert not average.enabled and average.network("g") is net
    assert average.state_dict() == {}


def test_the_average_follows_a_channels_last_layout_chosen_after_it_was_made():
    net = tiny_generator()
    average = GeneratorAverage({"g": net}, decay=0.9)
    net.to(memory_format=torch.channels_last)  # as GANTrainer does with channels_last=True
    average.attach(Engine(lambda engine, batch: None))
    first = next(p for p in average.network("g").parameters() if p.ndim == 4)
    assert first.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        GeneratorAverage({"g": tiny_generator()}, decay=decay)


def test_unknown_network_name_is_a_key_error():
    with pytest.raises(KeyError, match="has no network 'g_ba'"):
        GeneratorAverage({"g_ab": tiny_generator()}, decay=0.9).network("g_ba")


def averaged_training(max_epochs, save_dir=None, load_path=None):
    trainer = make_trainer(max_epochs=max_epochs, pool_size=2, generator_steps_per_discriminator_step=2)
    average = GeneratorAverage({"g_ab": trainer.g_ab, "g_ba": trainer.g_ba}, decay=0.9)
    average.attach(trainer)
    extra = {"generator_average": average}
    if save_dir is not None:
        TrainingCheckpointSaver(save_dir, extra_objects=extra).attach(trainer)
    if load_path is not None:
        TrainingCheckpointLoader(load_path, extra_objects=extra).attach(trainer)
    return trainer, average


def test_a_resumed_training_averages_as_an_uninterrupted_one(tmp_path):
    straight, straight_average = averaged_training(max_epochs=2)
    straight.run()
    averaged_training(max_epochs=1, save_dir=tmp_path)[0].run()
    resumed, resumed_average = averaged_training(max_epochs=2, load_path=checkpoint_path(tmp_path, 1))
    resumed.run()
    for name in ("g_ab", "g_ba"):
        straight_weights = list(straight_average.network(name).parameters())
        resumed_weights = list(resumed_average.network(name).parameters())
        assert all(torch.equal(a, b) for a, b in zip(straight_weights, resumed_weights))
        # and the average differs from the last step's weights: it is not a copy
        trained = list(getattr(straight, name).parameters())
        assert any(not torch.allclose(a, b) for a, b in zip(straight_weights, trained))
    assert resumed_average.state_dict()["g_ab"]["n_averaged"].item() == resumed.state.iteration


def test_resuming_with_averaging_switched_on_or_off_is_refused_by_name():
    on = GeneratorAverage({"g": tiny_generator()}, decay=0.9)
    off = GeneratorAverage({"g": tiny_generator()}, decay=0.0)
    with pytest.raises(ValueError, match=r"averages \['g'\].*decay 0.9"):
        on.load_state_dict(off.state_dict())
    with pytest.raises(ValueError, match=r"holds weight averages of \['g'\] but this training averages no network"):
        off.load_state_dict(on.state_dict())
