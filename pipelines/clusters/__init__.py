"""Cluster profiles: where a run's Dask work happens, one small module per profile.

=================  ===========================================================================
``local``          a ``LocalCluster`` of worker processes sized to the machine (default)
``threads``        a ``LocalCluster`` of threads in this process (small inputs, no processes)
``address``        an existing scheduler by address (``tcp://host:8786``)
``scheduler-file`` an existing scheduler by its scheduler file (shared storage)
``slurm``          ``dask_jobqueue.SLURMCluster`` with adaptive scaling (extra ``slurm``)
``slurm-runner``   ``dask_jobqueue.SLURMRunner`` inside one ``srun`` allocation (batch style)
``gpu``            one worker per visible GPU, each with a ``GPU=1`` resource
=================  ===========================================================================

:func:`open_client` is the one entry point: a context manager yielding a connected
``distributed.Client`` and printing the dashboard link. Each profile module exposes
``cluster_context(p)`` returning a context manager that yields a client.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from pipelines.clusters.local import local_cluster_kwargs, machine_size
from pipelines.clusters.slurm import render_runner_script, render_slurm_script, slurm_cluster_kwargs
from pipelines.schema import ClusterSection

PROFILES = {
    "local": "pipelines.clusters.local",
    "threads": "pipelines.clusters.local",
    "address": "pipelines.clusters.remote",
    "scheduler-file": "pipelines.clusters.remote",
    "slurm": "pipelines.clusters.slurm",
    "slurm-runner": "pipelines.clusters.slurm",
    "gpu": "pipelines.clusters.gpu",
}

__all__ = ["open_client", "PROFILES", "machine_size", "local_cluster_kwargs", "render_runner_script",
           "render_slurm_script", "slurm_cluster_kwargs"]


@contextlib.contextmanager
def open_client(p: ClusterSection, echo: Any = print) -> Iterator[Any]:
    """Start or connect to the profile's cluster; yield a ``Client``; print the dashboard link."""
    module = importlib.import_module(PROFILES[p.profile])
    with module.cluster_context(p) as client:
        echo(f"Dask dashboard: {client.dashboard_link}")
        yield client
