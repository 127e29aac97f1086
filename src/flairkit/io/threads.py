"""Process-wide reader thread pools.

GDAL releases the GIL while it opens and decodes, so threads give real parallelism for reads.
Pools are keyed by name (nested work must use distinct pools, or a task waiting on a sub-task
queued behind it in the same pool deadlocks) and re-created after a fork, since threads do not
survive one (DataLoader workers are forked).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_POOLS: dict[tuple[str, int], tuple[int, ThreadPoolExecutor]] = {}
_LOCK = threading.Lock()


def default_num_threads() -> int:
    """Reader threads: ``FLAIRKIT_READ_THREADS`` or 4."""
    return max(1, int(os.environ.get("FLAIRKIT_READ_THREADS", "4")))


def thread_pool(name: str, size: int) -> ThreadPoolExecutor:
    """The pool ``name`` with ``size`` threads for this process."""
    key = (name, size)
    with _LOCK:
        entry = _POOLS.get(key)
        if entry is None or entry[0] != os.getpid():
            entry = (os.getpid(), ThreadPoolExecutor(size, thread_name_prefix=f"flairkit-{name}"))
            _POOLS[key] = entry
        return entry[1]
