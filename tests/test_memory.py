"""Allocator settings for training: applied once, idempotent, and off with the env switch."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, ctypes.util
from flairkit import memory
print(memory.reuse_freed_memory(), memory.reuse_freed_memory())
# 4 x 40 MiB blocks allocated, freed, allocated again: with mmap off they come from the heap
# (its top, sbrk(0), grows by >= 160 MiB once, then stays: the blocks are reused); glibc's
# default maps each of them on its own and the heap top does not move.
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_long]
libc.free.argtypes = [ctypes.c_void_p]
start = libc.sbrk(0)
tops = []
for _ in range(3):
    blocks = [libc.malloc(40 * 2**20) for _ in range(4)]
    for b in blocks:
        libc.free(b)
    tops.append(libc.sbrk(0))
print(tops[0] - start >= 160 * 2**20, tops[0] == tops[1] == tops[2])
"""


def _run(env_value: str | None) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "FLAIRKIT_MALLOC_TUNING"}
    if env_value is not None:
        env["FLAIRKIT_MALLOC_TUNING"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_reuse_freed_memory_serves_large_blocks_from_the_heap() -> None:
    applied_first, applied_again, from_heap, reused = _run(None)
    assert applied_first == applied_again == "True"
    assert from_heap == reused == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_env_switch_turns_it_off() -> None:
    applied_first, applied_again, from_heap, _ = _run("0")
    assert applied_first == applied_again == "False"
    assert from_heap == "False"  # glibc's default: large blocks mapped on their own


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_release_free_memory_lowers_rss_after_frees() -> None:
    """Freed small blocks stay resident until trimmed: releasing them lowers the RSS."""
    script = """
import ctypes, ctypes.util, psutil
from flairkit import memory
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
proc = psutil.Process()
blocks = [libc.malloc(64 * 1024) for _ in range(3000)]  # ~190 MiB below the mmap threshold
for b in blocks:
    ctypes.memset(b, 1, 64 * 1024)
keep = libc.malloc(16)  # pins the heap top: free() alone cannot shrink it
for b in blocks:
    libc.free(b)
before = proc.memory_info().rss
memory.release_free_memory()
print((before - proc.memory_info().rss) / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert float(out.stdout) > 100  # MiB returned to the OS
