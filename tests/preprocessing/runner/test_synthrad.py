"""The SynthRAD2023 layout and its shipped configuration, end to end through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from preprocessing.config import load_config
from preprocessing.pseudonym import pseudonymise
from preprocessing.runner import STATUS_FAILED, STATUS_OK, discover_subjects
from preprocessing.windowing import get_window, hu_to_window
from tests.preprocessing.runner.cohort_run import run_cli
from tests.preprocessing.runner.synthrad_like import write_subject

GOOD = ("1BA001", "1BA005", "1BC012")


@pytest.fixture(scope="module")
def synthrad(tmp_path_factory) -> Path:
    """3 good subjects, one without its CT, one without its mask, one whose CT (and mask) lie 3 mm off
    the MR's grid, and SynthRAD's overview/ folder, which is no subject."""
    root = tmp_path_factory.mktemp("synthrad") / "Task1" / "brain"
    for seed, name in enumerate(GOOD):
        write_subject(root / name, seed)
    write_subject(root / "1BA020", 10, files=("mr", "mask"))
    write_subject(root / "1BA021", 11, files=("mr", "ct"))
    write_subject(root / "1BA022", 12, ct_shift_mm=3.0)
    (root / "overview").mkdir()
    (root / "overview" / "1_brain_train.csv").write_text("ID,center\n1BA001,A\n")
    return root


@pytest.fixture(scope="module")
def synthrad_run(synthrad, tmp_path_factory):
    output = tmp_path_factory.mktemp("synthrad_run")
    result = run_cli("run", "--config", "synthrad2023", "--input", str(synthrad), "--output", str(output),
                     "--workers", "2", "--quiet")
    return output, result


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_synthrad_layout_is_detected_and_its_subjects_listed(synthrad):
    found = discover_subjects(synthrad, load_config("synthrad2023"))
    assert found.layout == "synthrad2023"
    assert len(found.subjects) == 6 and len(found.unassigned) == 1 and found.unassigned[0].startswith("overview:")
    complete = [s for s in found.subjects if not s.problems]
    assert len(complete) == 4 and all(set(s.volumes) == {"ct", "t1"} and s.mask.name == "mask.nii.gz" for s in complete)
    # Detected by input.layout auto; where the configuration builds its masks (the defaults), a
    # subject without a delivered mask is complete.
    default = discover_subjects(synthrad, load_config({}))
    assert default.layout == "synthrad2023" and sum(not s.problems for s in default.subjects) == 5


def test_synthrad2023_config_pairs_ct_and_mr_without_registration(synthrad, synthrad_run):
    output, result = synthrad_run
    assert result.returncode == 1, result.stderr  # three subjects fail
    assert "3 ok, 0 already finished, 3 failed" in result.stdout
    report = json.loads((output / "report.json").read_text())
    assert report["layout"] == "synthrad2023" and report["config"] == "synthrad2023"
    assert report["unassigned_inputs"][0].startswith("overview:")
    datalist = json.loads((output / "dataset.json").read_text())
    assert datalist["modalities"] == ["ct", "t1"] and datalist["pairs"] == {"ct_in_t1": ["ct", "t1"]}
    assert datalist["references"] == {}
    window = get_window(datalist["ct_window"])
    assert (window.center, window.width) == (988.0, 4024.0)
    entries = [e for split in ("training", "validation", "test") for e in datalist[split]]
    assert len(entries) == 3
    rows = {row["subject"]: row for row in report["subjects"]}
    pseudonym = load_config("synthrad2023")["pseudonym"]
    sources = {pseudonymise(name, pseudonym["salt"], pseudonym["prefix"], pseudonym["length"]): name for name in GOOD}
    assert {entry["subject"] for entry in entries} == set(sources)
    for entry in entries:
        source = sources[entry["subject"]]
        assert rows[entry["subject"]]["status"] == STATUS_OK
        assert "ct_in_t1_transforms" not in entry and "t1_transforms" not in entry  # nothing registered
        assert rows[entry["subject"]]["registration"]["ct_in_t1"]["nmi"] > 1.1
        mask = _read(synthrad / source / "mask.nii.gz") > 0
        ct = _read(synthrad / source / "ct.nii.gz").astype(np.float32)
        # The delivered mask is the head mask of both volumes and of the pair; nothing recomputed.
        for key in ("ct_mask", "t1_mask", "ct_in_t1_mask"):
            np.testing.assert_array_equal(_read(output / entry[key]) > 0, mask)
        assert entry["ct_in_t1_mask"] == entry["t1_mask"]
        # HU kept inside the mask, -1024 outside it (the couch is gone), on the MR's grid as delivered.
        for key in ("ct_hu", "ct_in_t1_hu"):
            np.testing.assert_array_equal(_read(output / entry[key]), np.where(mask, ct, -1024.0))
        np.testing.assert_allclose(_read(output / entry["ct_in_t1"]),
                                   hu_to_window(np.where(mask, ct, -1024.0), window, (-1.0, 1.0)), atol=1e-6)
        t1 = _read(output / entry["t1"])
        assert t1[~mask].max() == -1.0 and t1[mask].min() >= -1.0 and t1[mask].max() == pytest.approx(1.0)
        image = sitk.ReadImage(str(output / entry["ct_in_t1"]))
        delivered = sitk.ReadImage(str(synthrad / source / "mr.nii.gz"))
        assert image.GetSize() == delivered.GetSize() and np.allclose(image.GetSpacing(), delivered.GetSpacing())
        # The pair is cut where the MR is cut.
        pair, own = (json.loads((output / entry[f"{k}_slice_index"]).read_text())["slices"] for k in ("ct_in_t1", "t1"))
        assert [s["geometry"]["index"] for s in pair] == [s["geometry"]["index"] for s in own]
        assert len(entry["ct_in_t1_slices"]) == len(entry["t1_slices"]) == len(own) > 0
    assert datalist["slice_size"]["ct_in_t1"] == [32, 32]


def test_synthrad_subjects_with_missing_or_misplaced_files_fail_alone(synthrad_run):
    output, result = synthrad_run
    rows = [row for row in json.loads((output / "report.json").read_text())["subjects"] if row["status"] == STATUS_FAILED]
    reasons = sorted(row["reason"] for row in rows)
    assert len(reasons) == 3
    for row in rows:
        assert row["reason"].startswith(f"reading failed: <input>/{row['subject']}/") or row["reason"].startswith(
            f"<input>/{row['subject']}/"), row
        assert "1BA02" not in row["reason"]  # the source names stay in the input
        assert not (output / "subjects" / row["subject"]).exists()
    assert any("/ct.nii.gz: missing" in r for r in reasons)
    assert any("/mask.nii.gz: missing; the configuration uses the mask delivered" in r for r in reasons)
    assert any("/mr.nii.gz: not on the grid of the subject's mask.nii.gz: origin" in r for r in reasons), reasons
    assert all(f"  {row['subject']}: " in result.stderr for row in rows)


def test_ct_not_on_the_mr_grid_fails_the_pairing_with_both_files_named(synthrad, tmp_path):
    """Without the delivered mask (masks computed), the pairing's own grid check names the CT and the MR."""
    folder = tmp_path / "input"
    folder.mkdir()
    for name in ("1BA001", "1BA022"):
        (folder / name).symlink_to(synthrad / name)
    config = tmp_path / "computed_masks.yaml"
    config.write_text("extends: synthrad2023\nartefact:\n  enabled: false\nmr:\n  head_mask: {method: otsu}\n")
    output = tmp_path / "output"
    result = run_cli("run", "--config", str(config), "--input", str(folder), "--output", str(output), "--workers", "1",
                     "--quiet")
    assert result.returncode == 1
    rows = {row["status"]: row for row in json.loads((output / "report.json").read_text())["subjects"]}
    reason = rows[STATUS_FAILED]["reason"]
    assert reason.startswith(f"<input>/{rows[STATUS_FAILED]['subject']}/ct.nii.gz: not on the grid of the subject's "
                             "mr.nii.gz: origin"), reason
    assert "ct_pairing.register false needs the CT and the MR on one grid" in reason
    assert rows[STATUS_OK]["registration"]["ct_in_t1"]["nmi"] > 1.1
