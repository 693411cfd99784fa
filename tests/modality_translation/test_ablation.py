from modality_translation import ablation
from modality_translation.ablation import stage_environment


def test_rows_side_by_side_share_the_cores_unless_the_caller_set_the_threads(monkeypatch):
    monkeypatch.setattr(ablation.os, "cpu_count", lambda: 4)
    assert stage_environment(2, {"PATH": "/bin"}) == {"PATH": "/bin", "OMP_NUM_THREADS": "2"}
    assert stage_environment(1, {})["OMP_NUM_THREADS"] == "4"
    assert stage_environment(8, {})["OMP_NUM_THREADS"] == "1"  # never 0
    assert stage_environment(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    # The caller's environment is copied, not changed.
    caller = {"PATH": "/bin"}
    stage_environment(2, caller)
    assert caller == {"PATH": "/bin"}
