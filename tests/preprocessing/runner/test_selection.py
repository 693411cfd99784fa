"""The seed study's data selection as options: volumes kept by slice count, the middle slices (preprocessing/runner/selection.py)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from preprocessing.config import ConfigError, load_config
from preprocessing.runner import STATUS_EXCLUDED, STATUS_FAILED, STATUS_OK
from preprocessing.runner.selection import exclude_by_slice_count
from tests.preprocessing.runner.cohort_run import run_cli
from tests.preprocessing.runner.synthrad_like import write_subject


def _reads(counts: dict[str, dict[str, int]]) -> dict[str, dict]:
    return {subject: {"subject": subject, "status": STATUS_OK, "metadata": {m: {"slices": n} for m, n in found.items()}}
            for subject, found in counts.items()}


def test_explicit_counts_and_the_most_common_count_exclude_with_the_reason():
    """IXI as the pix2pix study saw it: T1 volumes of 150 slices and T2 of 130 are the most common."""
    reads = _reads({"a": {"t1": 150, "t2": 130}, "b": {"t1": 146, "t2": 130}, "c": {"t1": 150, "t2": 128},
                    "d": {"t1": 150}, "e": {"t1": 146, "t2": 120}})
    reads["f"] = {"subject": "f", "status": STATUS_FAILED, "reason": "unreadable"}
    config = load_config({"input": {"keep_slice_counts": {"T1": [150], "t2": "most_common"}}})
    summary = exclude_by_slice_count(config, reads)
    assert summary == {"t1": {"rule": [150], "keeps": [150], "slice_counts": {"146": 2, "150": 3}},
                       "t2": {"rule": "most_common", "keeps": [130], "slice_counts": {"120": 1, "128": 1, "130": 2}}}
    assert [s for s, r in reads.items() if r["status"] == STATUS_OK] == ["a", "d"]
    assert reads["b"]["status"] == STATUS_EXCLUDED and reads["b"]["reason"] == "excluded: t1 has 146 slices, rule keeps 150"
    assert reads["c"]["reason"] == "excluded: t2 has 128 slices, rule keeps 130 (the most common)"
    assert reads["e"]["reason"] == ("excluded: t1 has 146 slices, rule keeps 150; "
                                    "t2 has 120 slices, rule keeps 130 (the most common)")
    assert reads["f"]["status"] == STATUS_FAILED  # a failed read stays failed and does not count
    # Ties go to the larger count; several explicit counts are all kept.
    tied = _reads({"a": {"t1": 40}, "b": {"t1": 38}})
    assert exclude_by_slice_count(load_config({"input": {"keep_slice_counts": {"t1": "most_common"}}}), tied)["t1"]["keeps"] == [40]
    many = _reads({"a": {"t1": 40}, "b": {"t1": 38}, "c": {"t1": 36}})
    exclude_by_slice_count(load_config({"input": {"keep_slice_counts": {"t1": [40, 38, 40]}}}), many)
    assert many["c"]["reason"] == "excluded: t1 has 36 slices, rule keeps 38 or 40"
    assert exclude_by_slice_count(load_config({}), many) == {}


@pytest.mark.parametrize("rules, message", [
    ({"xray": [3]}, "input.keep_slice_counts.xray"),
    ({"t1": []}, "input.keep_slice_counts.t1"),
    ({"t1": [150, 0]}, "input.keep_slice_counts.t1"),
    ({"t1": "most"}, "input.keep_slice_counts.t1"),
    ([150], "input.keep_slice_counts"),
])
def test_bad_slice_count_rules_name_their_key(rules, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config({"input": {"keep_slice_counts": rules}})


def test_excluded_subjects_are_reported_and_the_middle_slices_recorded(tmp_path):
    """End to end: a subject whose volumes have other slice counts is reported, not processed; the
    others are cut at the configured middle slices, recorded in each slice index."""
    root = tmp_path / "input"
    for seed, name in enumerate(("s1", "s2", "s3")):
        write_subject(root / name, seed, slices=32)
    write_subject(root / "s4", 4, slices=30)
    config = tmp_path / "selection.yaml"
    config.write_text("extends: synthrad2023\ninput:\n  keep_slice_counts: {t1: most_common, ct: [32]}\n"
                      "slices:\n  selection: {mode: middle, first: 10, last: 19}\nwrite_pseudonym_map: true\n")
    output = tmp_path / "output"
    result = run_cli("run", "--config", str(config), "--input", str(root), "--output", str(output), "--workers", "2",
                     "--quiet")
    assert result.returncode == 0, result.stderr  # an exclusion is no failure
    names = json.loads((output / "pseudonym_map.json").read_text())
    reason = "excluded: ct has 30 slices, rule keeps 32; t1 has 30 slices, rule keeps 32 (the most common)"
    assert "3 ok, 0 already finished, 0 failed, 1 excluded" in result.stdout
    assert f"  {names['s4']}: {reason}" in result.stdout
    report = json.loads((output / "report.json").read_text())
    assert report["counts"] == {"ok": 3, "skipped-finished": 0, "failed": 0, "excluded": 1}
    assert report["volume_selection"]["t1"] == {"rule": "most_common", "keeps": [32], "slice_counts": {"30": 1, "32": 3}}
    rows = {row["subject"]: row for row in report["subjects"]}
    assert rows[names["s4"]]["status"] == STATUS_EXCLUDED and rows[names["s4"]]["reason"] == reason
    assert rows[names["s4"]]["inputs"]["t1"]["slices"] == 30 and rows[names["s4"]]["split"] == ""
    table = {row["subject"]: row for row in csv.DictReader(io.StringIO((output / "report.csv").read_text()))}
    assert (table[names["s4"]]["status"], table[names["s4"]]["reason"]) == ("excluded", reason)
    assert not (output / "subjects" / names["s4"]).exists()
    datalist = json.loads((output / "dataset.json").read_text())
    entries = [e for split in ("training", "validation", "test") for e in datalist[split]]
    assert sorted(e["subject"] for e in entries) == sorted(names[s] for s in ("s1", "s2", "s3"))
    for entry in entries:
        for key in ("t1", "ct", "ct_in_t1"):
            index = json.loads((output / entry[f"{key}_slice_index"]).read_text())
            assert [s["geometry"]["index"] for s in index["slices"]] == list(range(10, 20))
            assert index["selection"] == {"rule": {"mode": "middle", "first": 10, "last": 19}, "first": 10, "last": 19,
                                          "count": 10, "slices_along_axis": 32}
            assert len(entry[f"{key}_slices"]) == 10
