"""A shard process gives its heap's free pages back (`ultra.memory`): glibc keeps freed
memory that later allocations pinned in place, which made a long run's memory grow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# In a child process (a clean heap): 64 KB blocks, every other one freed, so ~100 MB of free
# pages sit between live blocks where glibc does not return them by itself.
CHILD = """
import sys
from ultra.memory import release_free_memory

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
blocks = [bytearray(60_000) for _ in range(3_400)]
del blocks[::2]
before = anon()
release_free_memory()
print(before, anon())
"""


def test_release_free_memory_returns_the_free_pages_between_live_blocks():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    before, after = map(int, proc.stdout.split())
    assert before - after >= 50, (before, after)  # MB: the ~100 MB of holes, most of them
