"""The per-subject step contract (preprocessing/runner/steps/)."""

from __future__ import annotations

import pytest

from preprocessing.runner.steps import PIPELINE
from preprocessing.runner.steps.base import Step, SubjectContext, SubjectWriter, Timer, run_steps

#: Values the task gives the first step (see steps/__init__.py).
INITIAL = {"raw", "given", "entry", "registration"}


class _Writes(Step):
    reads = ("raw",)
    writes = ("registered",)

    def __init__(self, made):
        self.made = made
        self.seen = None

    def run(self, context, values):
        self.seen = dict(values)
        return self.made


def _context(tmp_path) -> SubjectContext:
    job = {"subject": "sub-a", "config": {}, "modalities": ["t1"], "output": str(tmp_path)}
    return SubjectContext(job, tmp_path, Timer(), SubjectWriter(tmp_path, tmp_path))


def test_steps_see_what_they_read_and_add_what_they_write(tmp_path):
    first, second = _Writes({"registered": {"t1": 1}}), _Writes({"registered": {"t2": 2}})
    values = run_steps([first, second], _context(tmp_path), {"raw": {"t1": 0}, "entry": {"subject": "sub-a"}})
    assert set(first.seen) == {"raw"}  # not the entry it did not declare
    assert values["registered"] == {"t1": 1, "t2": 2}
    with pytest.raises(TypeError):
        first.seen["raw"]["t1"] = 5  # read-only view


def test_undeclared_or_replacing_writes_are_refused(tmp_path):
    with pytest.raises(TypeError, match="does not declare"):
        run_steps([_Writes({"volumes": {"t1": 1}})], _context(tmp_path), {"raw": {}})
    with pytest.raises(TypeError, match=r"replaced registered \['t1'\]"):
        run_steps([_Writes({"registered": {"t1": 1}}), _Writes({"registered": {"t1": 2}})], _context(tmp_path),
                  {"raw": {}})


def test_every_step_reads_only_what_an_earlier_step_or_the_task_provides():
    available = set(INITIAL)
    for step in PIPELINE:
        missing = set(step.reads) - available
        assert not missing, f"{type(step).__name__} reads {sorted(missing)} before any step writes it"
        available |= set(step.writes)
