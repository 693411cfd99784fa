import csv
import json
import math

import numpy as np
import pytest

from modality_translation.metrics import summarize_metrics, write_metrics_report


ROWS = [
    {"subject": "sub-01", "mae": 60.0, "psnr": 28.0, "ssim": 0.80},
    {"subject": "sub-02", "mae": 80.0, "psnr": math.inf, "ssim": 0.90},
    {"subject": "sub-03", "mae": 70.0, "psnr": 30.0},
]


def test_report_files_hold_per_subject_rows_and_summary_statistics(tmp_path):
    csv_path, json_path = tmp_path / "out" / "metrics.csv", tmp_path / "out" / "summary.json"
    summary = write_metrics_report(ROWS, csv_path, json_path)
    with open(csv_path, newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [line["subject"] for line in lines] == ["sub-01", "sub-02", "sub-03"]
    assert float(lines[0]["mae"]) == 60.0 and lines[2]["ssim"] == "" and lines[1]["psnr"] == "inf"
    written = json.loads(json_path.read_text())
    assert written == summary
    assert written["mae"] == {
        "mean": 70.0, "std": pytest.approx(np.std([60, 80, 70], ddof=1)), "median": 70.0, "n": 3, "n_non_finite": 0
    }
    assert written["psnr"]["n"] == 2 and written["psnr"]["n_non_finite"] == 1 and written["psnr"]["mean"] == 29.0
    assert written["ssim"]["n"] == 2 and written["ssim"]["median"] == pytest.approx(0.85)
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["metrics.csv", "summary.json"]


def test_single_value_has_no_std_and_all_nan_has_no_statistics():
    summary = summarize_metrics([{"subject": "a", "fid": 80.8, "x": math.nan}])
    assert summary["fid"] == {"mean": 80.8, "std": None, "median": 80.8, "n": 1, "n_non_finite": 0}
    assert summary["x"] == {"mean": None, "std": None, "median": None, "n": 0, "n_non_finite": 1}


def test_bad_rows_are_refused(tmp_path):
    with pytest.raises(ValueError, match="more than once: sub-01"):
        write_metrics_report([ROWS[0], ROWS[0]], tmp_path / "m.csv", tmp_path / "s.json")
    with pytest.raises(ValueError, match="'subject' entry"):
        write_metrics_report([{"mae": 1.0}], tmp_path / "m.csv", tmp_path / "s.json")
    with pytest.raises(ValueError, match="'mae' of subject 'x' is not a number"):
        summarize_metrics([{"subject": "x", "mae": "high"}])
    assert not (tmp_path / "m.csv").exists()
