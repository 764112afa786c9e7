"""Profiles ``local`` (worker processes) and ``threads`` (threads in this process)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from pipelines.schema import ClusterSection


def machine_size() -> tuple[int, int]:
    """(usable cores, total memory in bytes) of this machine."""
    import psutil

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores), int(psutil.virtual_memory().total)


def dashboard_address(p: ClusterSection) -> str | None:
    """The dashboard address, bound on the scheduler's host when only a port is given."""
    from hvrt_dask import config as hconfig

    addr = p.dashboard_address if p.dashboard_address is not None else str(hconfig.get("pipelines.dashboard-address"))
    if addr in ("", "none", "None"):
        return None
    return f"{p.host}{addr}" if addr.startswith(":") else addr


def local_cluster_kwargs(p: ClusterSection) -> dict[str, Any]:
    """``LocalCluster`` keyword arguments of the ``local`` / ``threads`` profiles, sized to the machine."""
    cores, mem = machine_size()
    threads_only = p.profile == "threads" or not p.processes
    if threads_only:  # one worker holding the threads: no worker processes, nothing to pickle
        n_workers = p.n_workers or 1
        threads = p.threads_per_worker or max(1, cores // n_workers)
    else:
        threads = p.threads_per_worker or 1
        n_workers = p.n_workers or max(1, cores // threads)
    memory_limit = p.memory_limit if p.memory_limit is not None else int(0.8 * mem / n_workers)
    return dict(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=not threads_only,
        # tcp also for thread workers: the scheduler, and so the dashboard link, bind on host
        protocol="tcp://",
        host=p.host,
        dashboard_address=dashboard_address(p),
        memory_limit=memory_limit,
        resources=p.resources,
    )


@contextlib.contextmanager
def cluster_context(p: ClusterSection) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    with LocalCluster(**local_cluster_kwargs(p)) as cluster, Client(cluster) as client:
        yield client
