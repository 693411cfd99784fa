"""Host-memory retention: freed blocks are reused instead of being page-faulted again."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
import textwrap

import pytest

# Allocates and frees a 64 MiB tensor again and again and counts the minor page faults of each
# round, before and after retain_freed_host_memory(), in a fresh process (the setting is
# process-wide and permanent).
_SCRIPT = textwrap.dedent("""
    import json, resource, torch
    from medgan_common.host_memory import retain_freed_host_memory

    def faults_per_reallocation(rounds):
        counts = []
        for _ in range(rounds):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            block = torch.ones(16 * 2**20)  # 64 MiB, written once: every page is touched
            del block
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return counts[1:]

    default = faults_per_reallocation(8)
    configured = retain_freed_host_memory()
    retained = faults_per_reallocation(17)
    print(json.dumps({"default": default, "configured": configured, "retained": retained}))
""")


def _is_glibc() -> bool:
    name = ctypes.util.find_library("c")
    return bool(name) and hasattr(ctypes.CDLL(name), "gnu_get_libc_version")


@pytest.mark.skipif(not _is_glibc(), reason="the setting exists in glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True)
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["configured"] is True
    # 64 MiB is 16384 pages of 4 KiB: glibc maps and zeroes them again for every new block.
    assert sum(counts["default"]) > 7 * 16384 * 0.9
    # Retained, the heap grows for the first few blocks (how many depends on where the small
    # allocations around them land: up to seven rounds measured), then the same pages serve every
    # block; room for one more growth in the last eight rounds.
    assert sum(counts["retained"][-8:]) < 1.5 * 16384, counts["retained"]

