"""Threads: native pool limits (BLAS / OpenMP) and a per-chunk thread map for in-memory work.

``threadpoolctl.threadpool_limits`` scans every loaded shared library each time it is
entered (milliseconds with torch and scipy loaded); a process-wide controller scans once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any


@functools.lru_cache(maxsize=1)
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def limit_threads(limits: int | None, user_api: str | None = None) -> AbstractContextManager:
    """Context manager limiting native thread pools to ``limits`` threads (``None``: no-op).

    Parameters
    ----------
    limits : int or None
        Threads per pool inside the block.
    user_api : {"blas", "openmp"}, optional
        Restrict the limit to one kind of pool.
    """
    if limits is None:
        return nullcontext()
    return _controller().limit(limits=int(limits), user_api=user_api)


LOCAL_PARALLEL_ROWS = 50_000  # in-memory work of at least this many rows runs chunks on threads


def map_local(fn: Callable[[int], Any], n_items: int, rows: int | None = None) -> list[Any]:
    """``[fn(i) for i in range(n_items)]``, on a thread pool when the work is large.

    numpy releases the GIL in the random fills, ufuncs, gathers and BLAS calls the chunk
    functions spend their time in, so chunks run in parallel on threads without copying
    data. Native pools are limited to one thread per chunk task meanwhile: the parallelism
    comes from the chunks. ``rows`` (total rows of the work; None: large) keeps small jobs
    in the calling thread, where starting threads would cost more than it saves.
    """
    workers = min(n_items, os.cpu_count() or 1)
    if workers < 2 or (rows is not None and rows < LOCAL_PARALLEL_ROWS):
        return [fn(i) for i in range(n_items)]
    with limit_threads(1), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(n_items)))
