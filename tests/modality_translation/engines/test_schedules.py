import pytest
import torch
from torch import nn

from modality_translation.engines import LinearDecay, adam_optimizer, linear_decay_scheduler


def learning_rates(scheduler, optimizer, epochs):
    """Learning rate used in each epoch 1..epochs, the scheduler stepped after each epoch."""
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cyclegan_schedule_constant_then_linear_to_zero():
    optimizer = adam_optimizer(nn.Linear(2, 2), lr=2e-4)
    scheduler = linear_decay_scheduler(optimizer, n_epochs_constant=3, n_epochs_decay=4)
    rates = learning_rates(scheduler, optimizer, 7)
    # Reference multiplier 1 - max(0, e - 3) / 5 for epochs e = 1..7.
    expected = [2e-4 * (1 - max(0, e - 3) / 5) for e in range(1, 8)]
    assert rates == pytest.approx(expected, rel=1e-9)
    assert rates[:3] == pytest.approx([2e-4] * 3)
    steps = [rates[i] - rates[i + 1] for i in range(2, 6)]
    assert steps == pytest.approx([2e-4 / 5] * 4)
    # The line reaches 0 one epoch after the last one.
    assert rates[-1] - 2e-4 / 5 == pytest.approx(0.0, abs=1e-15)


def test_multiplier_matches_reference_formula_for_paper_settings():
    decay = LinearDecay(100, 100)
    for completed in (0, 50, 98, 99, 100, 150, 199):
        assert decay(completed) == pytest.approx(1.0 - max(0, completed + 1 - 100) / 101)
    assert decay(500) == 0.0


def test_scheduler_state_round_trip_resumes_the_decay():
    net = nn.Linear(2, 2)
    optimizer = adam_optimizer(net, lr=1e-3)
    scheduler = linear_decay_scheduler(optimizer, 2, 3)
    learning_rates(scheduler, optimizer, 3)
    state = scheduler.state_dict()
    assert state["lr_lambdas"][0] == {"n_epochs_constant": 2, "n_epochs_decay": 3}

    optimizer2 = adam_optimizer(net, lr=1e-3)
    scheduler2 = linear_decay_scheduler(optimizer2, 2, 3)
    scheduler2.load_state_dict(state)
    optimizer2.param_groups[0]["lr"] = optimizer.param_groups[0]["lr"]
    assert learning_rates(scheduler2, optimizer2, 2) == pytest.approx(learning_rates(scheduler, optimizer, 2))


def test_adam_over_several_networks_with_gan_betas():
    g1, g2 = nn.Linear(3, 3), nn.Conv2d(1, 2, 3)
    optimizer = adam_optimizer([g1, g2], lr=1e-4)
    parameters = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert parameters == {id(p) for p in [*g1.parameters(), *g2.parameters()]}
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    assert optimizer.param_groups[0]["lr"] == 1e-4
    assert optimizer.param_groups[0]["fused"] is True
    assert adam_optimizer(g1, fused=False).param_groups[0]["fused"] is False


def test_fused_adam_matches_the_default_update():
    torch.manual_seed(0)
    nets = [nn.Linear(4, 4), nn.Linear(4, 4)]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [adam_optimizer(nets[0], lr=1e-2), adam_optimizer(nets[1], lr=1e-2, fused=False)]
    x = torch.randn(8, 4)
    for _ in range(5):
        for net, optimizer in zip(nets, optimizers):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_invalid_settings_rejected():
    with pytest.raises(ValueError, match="lr"):
        adam_optimizer(nn.Linear(2, 2), lr=0)
    with pytest.raises(ValueError, match="no parameters"):
        adam_optimizer([nn.ReLU()])
    with pytest.raises(ValueError, match="epoch counts"):
        LinearDecay(-1, 10)


def test_lr_schedule_handler_steps_per_epoch():
    from ignite.engine import Engine
    from monai.handlers import LrScheduleHandler

    optimizer = adam_optimizer(nn.Linear(2, 2), lr=1.0)
    scheduler = linear_decay_scheduler(optimizer, 1, 3)
    seen = []
    engine = Engine(lambda e, b: seen.append(optimizer.param_groups[0]["lr"]))
    LrScheduleHandler(scheduler, print_lr=False, epoch_level=True).attach(engine)
    engine.run([0, 0], max_epochs=4)
    assert seen == pytest.approx([1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25])
