"""Bundle root, datalist preparation (with the demo build) and the resume point of the bundle configs."""

import json
import os
import sys

import pytest
import torch
from monai.bundle import ConfigWorkflow

from medgan_common.errors import PreprocessingError
from modality_translation.bundle_support import (
    bundle_root,
    config_file_from_argv,
    prepare_datalist,
    require_modality,
    resume_checkpoint,
)
from modality_translation.data.datalist import DatalistError, ModalityMismatchError
from modality_translation.engines import checkpoint_path
from tests.modality_translation.data.cohort import edit_datalist, write_cohort


def write_bundle(root):
    """A bundle whose config reports its root and a path relative to it."""
    (root / "configs").mkdir(parents=True)
    config = {
        "imports": ["$import os", "$import modality_translation", "$import modality_translation.bundle_support"],
        "bundle_root": "$modality_translation.bundle_support.bundle_root()",
        "models": "$os.path.join(@bundle_root, 'models')",
        "run": ["$@models"],
    }
    (root / "configs" / "train.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("argv, expected", [
    (["monai/bundle/__main__.py", "run", "training", "--config_file", "b/configs/train.json"], "b/configs/train.json"),
    (["monai/bundle/__main__.py", "run", "--config_file=b/configs/train.json", "--x", "1"], "b/configs/train.json"),
    (["m", "run", "--config-file", "b/configs/train.json"], "b/configs/train.json"),
    (["m", "run", "--config_file", "['b/configs/train.json', 'b/configs/ablation/row1.json']"], "b/configs/train.json"),
    (["m", "run", '--config_file=["b/configs/train.json","b/overlay.json"]'], "b/configs/train.json"),
    (["m", "run", "--config_file", "[b/configs/train.json, b/overlay.json]"], "b/configs/train.json"),
    (["m", "run", "--config_file", "b/configs/train.json,b/overlay.json"], "b/configs/train.json"),
    (["m", "run", "training", "--dataset_dir", "data"], None),
    (["m", "run", "--config_file"], None),
])
def test_config_file_from_argv_reads_every_form_monai_bundle_accepts(argv, expected):
    assert config_file_from_argv(argv) == expected


def test_bundle_root_is_the_command_lines_config_files_bundle_from_any_working_directory(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / "repo" / "bundles" / "demo_bundle")
    for cwd, config_file in ((tmp_path / "repo", "bundles/demo_bundle/configs/train.json"),
                             (bundle, "configs/train.json"),
                             (tmp_path, str(bundle / "configs" / "train.json"))):
        monkeypatch.chdir(cwd)
        for argv in (["monai/bundle/__main__.py", "run", "--config_file", config_file],
                     ["monai/bundle/__main__.py", "run", f"--config_file=['{config_file}', 'other/overlay.json']"]):
            monkeypatch.setattr(sys, "argv", argv)
            assert bundle_root() == str(bundle)
            # The same value through a config, as python -m monai.bundle parses it.
            workflow = ConfigWorkflow(config_file=config_file, logging_file=False, meta_file=None, workflow_type=None)
            workflow.initialize()
            assert workflow.run() == [str(bundle / "models")]
    # A config file outside a "configs" folder: its own folder is the bundle.
    monkeypatch.setattr(sys, "argv", ["m", "run", "--config_file", str(tmp_path / "loose.json")])
    assert bundle_root(default=bundle) == str(tmp_path)


def test_bundle_root_in_process_is_the_override(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest", "-q"])
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), logging_file=False, meta_file=None,
                              workflow_type=None, bundle_root=str(bundle))
    workflow.initialize()
    assert workflow.run() == [str(bundle / "models")]
    # Without the override nothing public names the bundle: a clear error, not the working directory.
    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), logging_file=False, meta_file=None,
                              workflow_type=None)
    with pytest.raises(Exception) as failure:
        workflow.initialize()
        workflow.run()
    cause = failure.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, FileNotFoundError) and "--bundle_root" in str(cause)


def test_bundle_root_without_command_line_uses_default_then_working_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "-q"])
    assert bundle_root(default=tmp_path) == str(tmp_path.resolve())
    bundle = write_bundle(tmp_path / "bundle")
    monkeypatch.chdir(bundle)
    assert bundle_root() == str(bundle.resolve())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"has no --config_file and .* has no 'configs' folder; give the "
                                                r"bundle folder with --bundle_root"):
        bundle_root()


def test_prepare_datalist_checks_splits_and_modalities(tmp_path):
    datalist = write_cohort(tmp_path / "cohort")
    assert prepare_datalist(datalist, ("t1", "t2")) == str(datalist.resolve())
    edit_datalist(datalist, lambda content: content.update(validation=[]))
    with pytest.raises(DatalistError, match="split 'validation' is empty"):
        prepare_datalist(datalist, ("t1", "t2"))
    assert prepare_datalist(datalist, ("t1", "t2"), splits=("training",)) == str(datalist.resolve())
    # T2 slices listed as T1.
    edit_datalist(datalist, lambda content: content["training"][0].update(t1_slices=content["training"][0]["t2_slices"]))
    with pytest.raises(ModalityMismatchError, match="named as a T2 image but is used as T1"):
        prepare_datalist(datalist, ("t1", "t2"), splits=("training",))


def test_prepare_datalist_checks_slice_lists_of_registered_pairs(tmp_path):
    datalist = write_cohort(tmp_path / "cohort", modalities=("t1", "t2", "t2_in_t1"), declared=["t1", "t2"])
    assert prepare_datalist(datalist, ("t1",), slice_keys=("t2_in_t1",)) == str(datalist.resolve())
    content = json.loads(datalist.read_text())
    missing = tmp_path / "cohort" / content["validation"][0]["t2_in_t1_slices"][1]
    missing.unlink()
    with pytest.raises(DatalistError, match=rf"{missing}: t2_in_t1 slice file \('t2_in_t1_slices' of subject 'sub-003'\) does not exist"):
        prepare_datalist(datalist, ("t1",), slice_keys=("t2_in_t1",))
    edit_datalist(datalist, lambda content: content["training"][1].pop("t2_in_t1_slices"))
    with pytest.raises(DatalistError, match="subject 'sub-002' in split 'training' has no 't2_in_t1_slices'"):
        prepare_datalist(datalist, ("t1",), slice_keys=("t2_in_t1",))


def test_prepare_datalist_without_a_datalist_says_how_to_make_one(tmp_path):
    with pytest.raises(DatalistError, match=r"dataset\.json: datalist does not exist: preprocess a cohort"):
        prepare_datalist(tmp_path / "missing" / "dataset.json", ("t1", "t2"))
    with pytest.raises(ValueError, match="build_demo needs demo_dir"):
        prepare_datalist(tmp_path / "missing" / "dataset.json", build_demo=True)


@pytest.fixture
def fake_demo_tools(monkeypatch):
    """Stand-ins for the demo generator and the cohort runner that record their calls and write a tiny cohort."""
    import preprocessing.cohort
    import preprocessing.demo

    calls = []

    def build(output, n_subjects, size, seed, workers, progress=True, anatomy_name="mni152"):
        calls.append(("demo", str(output), n_subjects, size, seed, workers, anatomy_name))
        output.mkdir(parents=True, exist_ok=True)
        manifest = {"size": size, "seed": seed, "anatomy": anatomy_name,
                    "subjects": [{"subject": f"demo{i:03d}"} for i in range(n_subjects)]}
        (output / "manifest.json").write_text(json.dumps(manifest))
        return manifest

    def run(config, input_dir, output_dir, workers=None, progress=True):
        calls.append(("run", config, str(input_dir), str(output_dir), workers))
        write_cohort(output_dir)
        return {"subjects": [{"subject": "sub-001", "status": "ok"}]}

    monkeypatch.setattr(preprocessing.demo, "build_demo_cohort", build)
    monkeypatch.setattr(preprocessing.cohort, "run_cohort", run)
    return calls


def test_prepare_datalist_builds_and_preprocesses_a_missing_demo_cohort_once(tmp_path, fake_demo_tools):
    demo, datalist = tmp_path / "demo", tmp_path / "demo" / "preprocessed" / "dataset.json"
    result = prepare_datalist(datalist, ("t1", "t2"), build_demo=True, demo_dir=demo, demo_size="small",
                              demo_subjects=4, demo_seed=3, preprocessing_config="demo", workers=2, progress=False)
    assert result == str(datalist)
    assert fake_demo_tools == [("demo", str(demo), 4, "small", 3, 2, "mni152"),
                               ("run", "demo", str(demo), str(datalist.parent), 2)]
    # A second call finds the datalist: nothing is built again.
    prepare_datalist(datalist, ("t1", "t2"), build_demo=True, demo_dir=demo, demo_size="small", demo_subjects=4,
                     demo_seed=3)
    assert len(fake_demo_tools) == 2
    # A finished raw cohort of the same settings is reused: only the preprocessing runs.
    datalist.unlink()
    prepare_datalist(datalist, ("t1", "t2"), build_demo=True, demo_dir=demo, demo_size="small", demo_subjects=4,
                     demo_seed=3)
    assert [call[0] for call in fake_demo_tools] == ["demo", "run", "run"]


def test_prepare_datalist_refuses_a_demo_folder_of_other_settings(tmp_path, fake_demo_tools):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "manifest.json").write_text(json.dumps({"size": "full", "seed": 0, "subjects": [{}] * 12}))
    with pytest.raises(PreprocessingError, match=r"manifest\.json: holds a demo cohort of size 'full', 12 subjects"):
        prepare_datalist(demo / "preprocessed" / "dataset.json", build_demo=True, demo_dir=demo, demo_size="small",
                         demo_subjects=4)
    # A cohort of the same size built before the template anatomy (no anatomy recorded) is procedural.
    with pytest.raises(PreprocessingError, match="procedural anatomy, not the requested 'full', 12 subjects, seed 0, "
                                                 "mni152 anatomy"):
        prepare_datalist(demo / "preprocessed" / "dataset.json", build_demo=True, demo_dir=demo, demo_size="full",
                         demo_subjects=12)
    assert fake_demo_tools == []


def test_prepare_datalist_reports_failed_demo_subjects(tmp_path, monkeypatch, fake_demo_tools):
    import preprocessing.cohort

    monkeypatch.setattr(preprocessing.cohort, "run_cohort", lambda *args, **kwargs: {
        "subjects": [{"subject": "sub-9", "status": preprocessing.cohort.STATUS_FAILED, "reason": "registration diverged"}]})
    with pytest.raises(PreprocessingError, match="1 demo subject.* failed preprocessing .sub-9: registration diverged"):
        prepare_datalist(tmp_path / "demo" / "out" / "dataset.json", build_demo=True, demo_dir=tmp_path / "demo")


def save_checkpoints(folder, epochs):
    folder.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        torch.save({"epoch": epoch}, checkpoint_path(folder, epoch))


def test_resume_checkpoint_latest_none_or_refusal(tmp_path):
    folder = tmp_path / "models"
    assert resume_checkpoint(folder, True) is None  # no folder yet: a new training
    assert resume_checkpoint(folder, False) is None
    save_checkpoints(folder, [2, 10, 9])
    assert resume_checkpoint(folder, True) == str(checkpoint_path(folder, 10))
    assert resume_checkpoint(folder, "True") == str(checkpoint_path(folder, 10))  # from the command line
    with pytest.raises(FileExistsError, match=r"checkpoint_epoch=10\.pt.*--ckpt_dir"):
        resume_checkpoint(folder, "false")
    assert resume_checkpoint(folder, str(checkpoint_path(folder, 2))) == str(checkpoint_path(folder, 2))
    with pytest.raises(FileNotFoundError, match="checkpoint to resume from does not exist"):
        resume_checkpoint(folder, os.fspath(tmp_path / "nowhere.pt"))


def test_require_modality_names_the_setting_of_another_kind():
    assert require_modality("T2", "mr", "source") == "t2" and require_modality("ct", "ct", "target") == "ct"
    with pytest.raises(ValueError, match=r"^source: 'ct' is not an MR modality; this bundle needs one of t1, t2, pd, "
                                         r"flair, mra as its source$"):
        require_modality("ct", "mr", "source")
    with pytest.raises(ValueError, match=r"^target: 't2' is not a CT modality"):
        require_modality("t2", "ct", "target")
    with pytest.raises(ValueError, match="unknown modality kind 'pet'"):
        require_modality("t2", "pet")
