"""The engine and data pipeline driven from a MONAI bundle config, as the CycleGAN bundles do."""

import json

from monai.bundle import ConfigParser

from modality_translation.engines import checkpoint_path
from tests.modality_translation.data.cohort import write_cohort


def train_config(root, datalist, max_epochs):
    return {
        "imports": ["$import copy", "$import torch", "$import monai", "$import modality_translation"],
        "device": "$torch.device('cpu')",
        "ckpt_dir": str(root / "models"),
        "output_dir": str(root / "eval"),
        "network": {
            "_target_": "modality_translation.networks.ResNetGenerator",
            "base_channels": 8, "num_blocks": 1,
        },
        "g_ab": "$copy.deepcopy(@network)",
        "g_ba": "$copy.deepcopy(@network)",
        "discriminator": {"_target_": "modality_translation.networks.PatchGANDiscriminator", "channels": 8, "num_layers": 2},
        "d_a": "$copy.deepcopy(@discriminator)",
        "d_b": "$copy.deepcopy(@discriminator)",
        "g_optimizer": {"_target_": "modality_translation.engines.adam_optimizer", "networks": ["@g_ab", "@g_ba"], "lr": 1e-4},
        "d_optimizer": {"_target_": "modality_translation.engines.adam_optimizer", "networks": ["@d_a", "@d_b"], "lr": 1e-3},
        "g_scheduler": {"_target_": "modality_translation.engines.linear_decay_scheduler", "optimizer": "@g_optimizer",
                        "n_epochs_constant": 1, "n_epochs_decay": 2},
        "d_scheduler": {"_target_": "modality_translation.engines.linear_decay_scheduler", "optimizer": "@d_optimizer",
                        "n_epochs_constant": 1, "n_epochs_decay": 2},
        "schedulers": {"g_scheduler": "@g_scheduler", "d_scheduler": "@d_scheduler"},
        "train": {
            "dataset": {"_target_": "modality_translation.data.unpaired_slice_dataset", "datalist": str(datalist),
                        "source": "t1", "target": "t2", "crop_size": [32, 32], "jitter_scale": 1.125},
            "loader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2, "shuffle": True},
        },
        "validate": {
            "dataset": {"_target_": "modality_translation.data.paired_slice_dataset", "datalist": str(datalist),
                        "source": "t1", "target": "t2", "split": "validation", "crop_size": [32, 32]},
            "loader": {"_target_": "DataLoader", "dataset": "@validate#dataset", "batch_size": 3},
            "evaluator": {"_target_": "modality_translation.engines.TranslationEvaluator", "device": "@device",
                          "val_data_loader": "@validate#loader", "generator": "@g_ab", "reverse_generator": "@g_ba"},
        },
        "trainer": {
            "_target_": "modality_translation.engines.CycleGANTrainer",
            "device": "@device", "max_epochs": max_epochs, "train_data_loader": "@train#loader",
            "g_ab": "@g_ab", "g_ba": "@g_ba", "d_a": "@d_a", "d_b": "@d_b",
            "g_optimizer": "@g_optimizer", "d_optimizer": "@d_optimizer",
            "cycle_loss": {"_target_": "modality_translation.losses.CycleConsistencyLoss", "l1_weight": 0.0,
                           "ssim_weight": 1.0, "ssim_win_size": 7},
            "lambda_identity": 0.0,
            "generator_steps_per_discriminator_step": 4,
            "train_handlers": [
                {"_target_": "modality_translation.engines.TrainingCheckpointLoader",
                 "load_path": "$modality_translation.engines.latest_checkpoint(@ckpt_dir)", "missing_ok": True,
                 "extra_objects": "@schedulers"},
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@g_scheduler", "print_lr": False},
                {"_target_": "LrScheduleHandler", "lr_scheduler": "@d_scheduler", "print_lr": False},
                {"_target_": "ValidationHandler", "validator": "@validate#evaluator", "interval": 1, "epoch_level": True},
                {"_target_": "StatsHandler", "tag_name": "train_loss",
                 "output_transform": "$modality_translation.engines.losses_from_output()"},
                {"_target_": "TensorBoardStatsHandler", "log_dir": "@output_dir",
                 "output_transform": "$modality_translation.engines.losses_from_output(['loss_G', 'loss_D'])"},
                {"_target_": "modality_translation.engines.TranslationGridHandler", "output_dir": "@output_dir",
                 "interval": 1, "max_samples": 1},
                {"_target_": "modality_translation.engines.TrainingCheckpointSaver", "save_dir": "@ckpt_dir",
                 "extra_objects": "@schedulers"},
            ],
        },
        "run": ["$@trainer.run()"],
    }


def run(config_path):
    parser = ConfigParser()
    parser.read_config(config_path)
    parser.get_parsed_content("run")
    return parser


def test_train_json_config_trains_validates_checkpoints_and_resumes(tmp_path):
    datalist = write_cohort(tmp_path / "cohort")
    config_path = tmp_path / "train.json"
    config_path.write_text(json.dumps(train_config(tmp_path, datalist, max_epochs=2)))
    parser = run(config_path)
    trainer = parser.get_parsed_content("trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 6  # 6 T1 slices in batches of 2
    assert checkpoint_path(tmp_path / "models", 2).is_file()
    assert (tmp_path / "eval" / "translation_epoch=2.png").is_file()
    metrics = parser.get_parsed_content("validate#evaluator").state.metrics
    assert -1.0 <= metrics["val_ssim"] <= 1.0 and metrics["val_psnr"] > 0.0

    # Killed after epoch 2, restarted with the same config asking for 3 epochs: it resumes.
    config_path.write_text(json.dumps(train_config(tmp_path, datalist, max_epochs=3)))
    resumed_parser = run(config_path)
    resumed = resumed_parser.get_parsed_content("trainer")
    assert resumed.state.epoch == 3 and resumed.state.iteration == 9
    # The schedulers went on from the 2 saved steps (a fresh one would be at 1 step).
    assert resumed_parser.get_parsed_content("g_scheduler").last_epoch == 3
    assert resumed.g_optimizer.param_groups[0]["lr"] == 0.0  # 3 epochs of CycleGAN decay (1 constant + 2)
    assert checkpoint_path(tmp_path / "models", 3).is_file()
