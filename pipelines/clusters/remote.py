"""Profiles ``address`` and ``scheduler-file``: an existing scheduler."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from pipelines.schema import ClusterSection


@contextlib.contextmanager
def cluster_context(p: ClusterSection) -> Iterator[Any]:
    from distributed import Client

    kw = {"address": p.address} if p.profile == "address" else {"scheduler_file": p.scheduler_file}
    with Client(**kw) as client:
        client.wait_for_workers(1, timeout=120)
        yield client
