import matplotlib.image
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from torch import nn
from torch.utils.data import DataLoader

from modality_translation.engines import IMAGE_KEYS, TranslationEvaluator, TranslationGridHandler, translation_grid
from modality_translation.engines import image_grid
from modality_translation.engines.image_grid import grid_iterations, spread
from tests.modality_translation.engines.toy import make_trainer, unpaired_loader


def fake_output(batch=3, size=8):
    """Each image is filled with a value identifying its key (index / 5 - 1) and its sample."""
    return {key: torch.full((batch, 1, size, size), k / 5 - 1.0) + 0.01 * torch.arange(batch).view(-1, 1, 1, 1)
            for k, key in enumerate(IMAGE_KEYS)}


def test_grid_rows_columns_and_scaling():
    grid, labels = translation_grid(fake_output(), max_samples=2)
    assert grid.shape == (4, 3, 8, 8)
    assert labels == ["real_A / fake_B / rec_A"] * 2 + ["real_B / fake_A / rec_B"] * 2
    for row, (domain, sample) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for column in range(3):
            k = 3 * domain + column
            assert grid[row, column, 0, 0] == pytest.approx(((k / 5 - 1.0 + 0.01 * sample) + 1) / 2)


def test_grid_of_decollated_output_and_missing_domain():
    decollated = [{key: value[i] for key, value in fake_output().items() if key in ("real_A", "fake_B", "rec_A")} for i in range(3)]
    grid, labels = translation_grid(decollated)
    assert grid.shape == (3, 3, 8, 8) and set(labels) == {"real_A / fake_B / rec_A"}
    with pytest.raises(ValueError, match="none of the image rows"):
        translation_grid({"loss": 1.0})


def test_middle_channel_and_slice_shown_for_2_5d_and_3d():
    output = {key: torch.zeros(1, 3, 4, 4, 5) for key in IMAGE_KEYS}
    output["real_A"][0, 1, :, :, 2] = 1.0
    grid, _ = translation_grid(output)
    assert grid.shape == (2, 3, 4, 4)
    assert np.all(grid[0, 0] == 1.0) and np.all(grid[0, 1] == 0.5)


def test_handler_writes_png_and_tensorboard_every_interval(tmp_path):
    trainer = make_trainer(max_epochs=4, loader=unpaired_loader(count=4, batch_size=2))
    handler = TranslationGridHandler(output_dir=tmp_path / "png", interval=2, log_dir=tmp_path / "tb", max_samples=2)
    handler.attach(trainer)
    trainer.run()
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["translation_epoch=2.png", "translation_epoch=4.png"]
    image = matplotlib.image.imread(tmp_path / "png" / "translation_epoch=4.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "translation" in events.Tags()["images"]
    steps = [event.step for event in events.Images("translation")]
    assert steps == [2, 4]
    first = events.Images("translation")[0]
    assert (first.height, first.width) == (4 * 32, 3 * 32)  # 2 samples x 2 domains rows, 3 columns


def test_handler_needs_an_output_and_valid_interval():
    with pytest.raises(ValueError, match="somewhere"):
        TranslationGridHandler()
    with pytest.raises(ValueError, match="interval"):
        TranslationGridHandler(output_dir="x", interval=0)


def captured_grids(monkeypatch) -> list:
    """The grid arrays the handlers write from now on, in order (the PNG files are still written)."""
    grids = []
    original = image_grid.save_grid_png
    monkeypatch.setattr(image_grid, "save_grid_png",
                        lambda grid, labels, path, **kwargs: grids.append(grid) or original(grid, labels, path, **kwargs))
    return grids


@pytest.mark.parametrize("epoch_length, max_samples, expected", [
    (10, 4, {1: 1, 3: 1, 6: 1, 8: 1}),
    (51, 4, {6: 1, 19: 1, 31: 1, 44: 1}),
    (1, 4, {0: 4}),
    (3, 4, {0: 2, 1: 2, 2: 2}),
    (5, 1, {2: 1}),
])
def test_grid_iterations_spread_over_the_epoch(epoch_length, max_samples, expected):
    assert grid_iterations(epoch_length, max_samples) == expected


def test_samples_of_one_batch_are_spread_over_it():
    assert spread(2, 8) == [0, 7] and spread(3, 8) == [0, 4, 7] and spread(4, 3) == [0, 1, 2] and spread(1, 8) == [0]


def test_short_epoch_takes_rows_from_both_ends_of_each_batch(tmp_path, monkeypatch):
    """One subject of 16 neighbouring slices in 2 batches of 8 and 4 rows: slices 0, 7, 8, 15, not 0, 1, 8, 9."""
    items = [{"A": torch.full((1, 4, 4), i / 20 - 0.5), "B": torch.zeros(1, 4, 4)} for i in range(16)]
    evaluator = TranslationEvaluator("cpu", DataLoader(items, batch_size=8, shuffle=False), nn.Identity(),
                                     key_val_metric={})
    TranslationGridHandler(output_dir=tmp_path, max_samples=4, rows=(("real_A", "fake_B"),)).attach(evaluator)
    grids = captured_grids(monkeypatch)
    evaluator.run()
    shown = [round(((grids[0][r, 0, 0, 0] * 2 - 1) + 0.5) * 20) for r in range(4)]
    assert shown == [0, 7, 8, 15]


def test_validation_grid_rows_show_different_subjects_not_the_last_batch(tmp_path, monkeypatch):
    """An ordered validation loader: 3 subjects of 4 neighbouring slices, batches of 2 (the last batch is
    two slices of the last subject). Each row must come from another part of the epoch."""
    subjects, slices = 3, 4
    # Image value = subject + slice / 10, scaled into [-1, 1]: the row's value tells where it came from.
    values = [(s + i / 10) / 4 - 0.9 for s in range(subjects) for i in range(slices)]
    items = [{"A": torch.full((1, 8, 8), v), "B": torch.full((1, 8, 8), v)} for v in values]
    evaluator = TranslationEvaluator("cpu", DataLoader(items, batch_size=2, shuffle=False), nn.Identity(),
                                     key_val_metric={})
    handler = TranslationGridHandler(output_dir=tmp_path, max_samples=3, rows=(("real_A", "fake_B"),),
                                     column_titles=("input", "translated"))
    handler.attach(evaluator)
    grids = captured_grids(monkeypatch)
    evaluator.run()
    grid = grids[0]
    assert grid.shape == (3, 2, 8, 8)
    shown = [round(((grid[r, 0, 0, 0] * 2 - 1) + 0.9) * 4, 3) for r in range(3)]
    # Iterations 2, 4 and 6 of 6 (the middles of three parts; first samples): slice 2 of each subject,
    # not the first slice (an end of the head) of each.
    assert shown == [0.2, 1.2, 2.2]
    assert len({int(v) for v in shown}) == 3, "every row must show another subject"
    assert (tmp_path / "translation_epoch=1.png").is_file()


def test_trainer_declares_its_grid_rows_and_columns(tmp_path):
    trainer = make_trainer(max_epochs=1, loader=unpaired_loader(count=4, batch_size=2))
    handler = TranslationGridHandler(output_dir=tmp_path)
    handler.attach(trainer)
    assert handler.rows == trainer.grid_rows and handler.column_titles == ("input", "translated", "cycle-reconstructed")
