import math

import pytest
import torch
from ignite.engine import Events
from monai.handlers import ValidationHandler
from torch import nn
from torch.utils.data import DataLoader

from modality_translation.engines import TranslationEvaluator
from modality_translation.metrics import ssim
from tests.modality_translation.engines.toy import blob_images, make_trainer


class Negate(nn.Module):
    """The exact toy mapping A -> B = -A, with a parameter so that modes and grads can be checked."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(-1.0))
        self.modes = []

    def forward(self, x):
        self.modes.append((self.training, torch.is_grad_enabled()))
        return self.scale * x


def paired_loader(offset=0.1, with_truth=True):
    sources = blob_images(6, seed=4)
    items = [{"A": a, "B": -a + offset} if with_truth else {"A": a} for a in sources]
    return DataLoader(items, batch_size=3)


def test_ssim_and_psnr_against_paired_truth():
    generator = Negate()
    evaluator = TranslationEvaluator("cpu", paired_loader(offset=0.1), generator)
    evaluator.run()
    metrics = evaluator.state.metrics
    # A constant error of 0.1 on [-1, 1] images: MSE 0.01, PSNR = 10 log10(2^2 / 0.01).
    assert metrics["val_psnr"] == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-4)
    sources = blob_images(6, seed=4)
    expected_ssim = ssim(-sources, -sources + 0.1, data_range=2.0).mean().item()
    assert metrics["val_ssim"] == pytest.approx(expected_ssim, rel=1e-5)
    assert evaluator.state.key_metric_name == "val_ssim"
    assert generator.modes and all(mode == (False, False) for mode in generator.modes)


def test_perfect_translation_scores_ssim_one():
    evaluator = TranslationEvaluator("cpu", paired_loader(offset=0.0), Negate())
    evaluator.run()
    assert evaluator.state.metrics["val_ssim"] == pytest.approx(1.0, abs=1e-5)


def test_reverse_generator_adds_reconstruction_and_no_truth_means_no_metric():
    evaluator = TranslationEvaluator("cpu", paired_loader(with_truth=False), Negate(), reverse_generator=Negate(),
                                     key_val_metric={}, decollate=False)
    evaluator.run()
    output = evaluator.state.output
    torch.testing.assert_close(output["rec_A"], output["real_A"])
    torch.testing.assert_close(output["pred"], -output["image"])
    assert "label" not in output and evaluator.state.metrics == {}


def test_validation_every_n_epochs_from_the_trainer():
    trainer = make_trainer(max_epochs=4)
    evaluator = TranslationEvaluator("cpu", paired_loader(), trainer.g_ab, reverse_generator=trainer.g_ba)
    validated_at = []
    evaluator.add_event_handler(Events.COMPLETED, lambda e: validated_at.append((trainer.state.epoch, e.state.epoch)))
    ValidationHandler(interval=2, validator=evaluator, epoch_level=True).attach(trainer)
    trainer.run()
    assert validated_at == [(2, 2), (4, 4)]
    assert -1.0 <= evaluator.state.metrics["val_ssim"] <= 1.0
    assert all(net.training for net in trainer.networks), "validation must hand the networks back in train mode"
