"""What the runner's end-to-end tests share: the small demo cohort's fast configuration and output comparison.

The cohort (3 small subjects), the configuration and the reference run through the command line are
package-wide fixtures (conftest.py): every test module compares against the same run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from preprocessing.provenance import file_sha256

N_SUBJECTS = 3
#: The shipped demo configuration with fewer registration iterations.
FAST = """extends: demo
registration:
  common:
    linear_iterations: [60, 30]
    syn_iterations: [40, 20, 0]
"""
REPOSITORY = Path(__file__).resolve().parents[3]
#: Files whose content legitimately differs between runs (timings) or that hold no data.
RUN_SPECIFIC = {"report.json", "report.csv", "report.json.provenance.json", "report.csv.provenance.json", ".lock"}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m preprocessing ARGS`` in the repository."""
    return subprocess.run([sys.executable, "-m", "preprocessing", *args], cwd=REPOSITORY, capture_output=True,
                          text=True, timeout=timeout)


def tree_bytes(root: Path) -> dict[str, str]:
    """SHA-256 of every file below ``root`` but the run-specific ones, by relative path."""
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in RUN_SPECIFIC}
