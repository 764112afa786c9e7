"""Profile ``gpu``: one single-threaded worker per visible GPU, pinned and with a ``GPU=1`` resource."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from pipelines.clusters.local import dashboard_address
from pipelines.schema import ClusterSection, ConfigError


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process may use (``CUDA_VISIBLE_DEVICES`` or torch)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(d) for d in env.split(",") if d.strip().lstrip("-").isdigit() and int(d) >= 0]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # torch missing or broken: no GPU
        return []


def gpu_worker_spec(p: ClusterSection, devices: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """``SpecCluster`` worker spec: one single-threaded Nanny per GPU, pinned and with ``GPU=1``."""
    from distributed import Nanny

    devices = list(p.devices if p.devices is not None else (devices if devices is not None else visible_gpus()))
    if not devices:
        raise ConfigError("cluster profile 'gpu': no visible GPU (set cluster.devices or CUDA_VISIBLE_DEVICES)")
    resources = {"GPU": 1, **(p.resources or {})}
    spec = {}
    for dev in devices:
        spec[f"gpu-{dev}"] = {
            "cls": Nanny,
            "options": {
                "nthreads": p.threads_per_worker or 1,
                "resources": resources,
                "memory_limit": p.memory_limit if p.memory_limit is not None else "auto",
                "host": p.host,
                # Pin the worker to its device: torch in it then sees exactly one GPU (cuda:0).
                "env": {"CUDA_VISIBLE_DEVICES": str(dev)},
            },
        }
    return spec


def _gpu_cluster(p: ClusterSection) -> Any:
    devices = p.devices if p.devices is not None else visible_gpus()
    if p.use_dask_cuda and p.devices is None:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            # dask-cuda pins one GPU per worker but adds no GPU resource of its own.
            return LocalCUDACluster(
                CUDA_VISIBLE_DEVICES=devices or None,
                threads_per_worker=p.threads_per_worker or 1,
                resources={"GPU": 1, **(p.resources or {})},
                dashboard_address=dashboard_address(p),
                ip=p.host,
            )
    from distributed import Scheduler, SpecCluster

    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": p.host,
            "dashboard_address": dashboard_address(p),
        },
    }
    return SpecCluster(workers=gpu_worker_spec(p, devices), scheduler=scheduler, name="hvrt-gpu")


@contextlib.contextmanager
def cluster_context(p: ClusterSection) -> Iterator[Any]:
    from distributed import Client

    with _gpu_cluster(p) as cluster, Client(cluster) as client:
        yield client
