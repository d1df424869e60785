"""glibc's thresholds raised once per process, unless FEDLOOM_MALLOC=system says not to: a large
tensor freed and allocated again then reuses the same pages instead of faulting in fresh ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

GLIBC = sys.platform == "linux" and bool(os.confstr("CS_GNU_LIBC_VERSION"))
PROBE = """
import resource, torch
from fedloom.core.allocator import keep_freed_memory
print(keep_freed_memory(), keep_freed_memory())
for _ in range(10):  # 100 MB, touched: the heap settles to hold it
    t = torch.empty(25_000_000).fill_(1.0)
    del t
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    t = torch.empty(25_000_000).fill_(1.0)
    del t
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 25_000_000 * 4 // 4096  # page faults of touching one fresh 100 MB tensor


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize(("env", "kept"), [({}, True), ({"FEDLOOM_MALLOC": "system"}, False)])
def test_thresholds_are_raised_once_unless_the_system_default_is_asked_for(
        env: dict[str, str], kept: bool) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, **env}, timeout=120).stdout.split()
    assert out[:2] == [str(kept), str(kept)]
    faults = int(out[2])
    if kept:  # the ten allocations reuse the first one's pages
        assert faults < PAGES // 2
    else:  # each one maps and faults in fresh pages
        assert faults > 5 * PAGES
