"""The training record's reading of the training command line (modality_translation/bundle/record.py)."""

from modality_translation.bundle.record import command_line_overrides

MONAI = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"


def test_overrides_are_the_options_of_a_monai_bundle_command_other_than_its_own():
    argv = [MONAI, "run", "training", "--config_file", "b/configs/train.json", "--image_size", "64",
            "--train#trainer#max_epochs=10", "--logging_file", "l.conf", "--amp", "--generator_channels", "16"]
    assert command_line_overrides(argv) == {"image_size": "64", "train#trainer#max_epochs": "10", "amp": "True",
                                            "generator_channels": "16"}


def test_a_training_started_from_python_records_no_overrides():
    assert command_line_overrides(["/usr/bin/pytest", "--image_size", "64"]) == {}
    assert command_line_overrides([]) == {}
