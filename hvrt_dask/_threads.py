"""Native thread-pool limits (BLAS / OpenMP) without re-scanning libraries on every call.

``threadpoolctl.threadpool_limits`` scans every loaded shared library each time it is
entered (milliseconds with torch and scipy loaded); a process-wide controller scans once.
"""

from __future__ import annotations

import functools
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
