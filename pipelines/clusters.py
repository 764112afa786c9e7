"""Cluster profiles: where a run's Dask work happens.

=================  ===========================================================================
``local``          a ``LocalCluster`` sized to the machine (default; one process per core)
``address``        an existing scheduler by address (``tcp://host:8786``)
``scheduler-file`` an existing scheduler by its scheduler file (shared storage)
``slurm``          ``dask_jobqueue.SLURMCluster`` with adaptive scaling (optional extra ``slurm``)
``slurm-runner``   ``dask_jobqueue.SLURMRunner`` inside one ``srun`` allocation (batch style)
``gpu``            one worker per visible GPU, each with a ``GPU=1`` resource (dask-cuda optional)
=================  ===========================================================================

:func:`open_client` is a context manager yielding a connected ``distributed.Client`` and
printing the dashboard link. :func:`render_slurm_script` renders the worker job script (via
dask-jobqueue when installed, else with the small built-in renderer) and
:func:`render_runner_script` the ``sbatch`` script for the batch-runner style.
"""

from __future__ import annotations

import contextlib
import math
import os
import shlex
import sys
from collections.abc import Iterator
from typing import Any

from pipelines.schema import ClusterSection, ConfigError


def machine_size() -> tuple[int, int]:
    """(usable cores, total memory in bytes) of this machine."""
    import psutil

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores), int(psutil.virtual_memory().total)


def local_cluster_kwargs(p: ClusterSection) -> dict[str, Any]:
    """``LocalCluster`` keyword arguments for the ``local`` profile, sized to the machine."""
    cores, mem = machine_size()
    threads = p.threads_per_worker or 1
    n_workers = p.n_workers or max(1, cores // threads)
    memory_limit = p.memory_limit if p.memory_limit is not None else int(0.8 * mem / n_workers)
    return dict(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=p.processes,
        host=p.host,
        dashboard_address=p.dashboard_address if p.dashboard_address is not None else _default_dashboard(),
        memory_limit=memory_limit,
        resources=p.resources,
    )


def _default_dashboard() -> str:
    from hvrt_dask import config as hconfig

    return str(hconfig.get("pipelines.dashboard-address", ":8787"))


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
                dashboard_address=p.dashboard_address if p.dashboard_address is not None else _default_dashboard(),
                ip=p.host,
            )
    from distributed import Scheduler, SpecCluster

    scheduler = {
        "cls": Scheduler,
        "options": {
            "host": p.host,
            "dashboard_address": p.dashboard_address if p.dashboard_address is not None else _default_dashboard(),
        },
    }
    return SpecCluster(workers=gpu_worker_spec(p, devices), scheduler=scheduler, name="hvrt-gpu")


def slurm_cluster_kwargs(p: ClusterSection) -> dict[str, Any]:
    """``dask_jobqueue.SLURMCluster`` keyword arguments of a ``slurm`` profile."""
    kw: dict[str, Any] = dict(
        cores=p.cores,
        memory=p.memory,
        processes=p.job_processes,
        walltime=p.walltime,
        job_name=p.job_name,
        job_extra_directives=list(p.job_extra_directives),
        job_script_prologue=list(p.job_script_prologue),
        worker_extra_args=list(p.worker_extra_args),
    )
    if p.resources:
        kw["worker_extra_args"] += ["--resources", ",".join(f"{k}={v:g}" for k, v in p.resources.items())]
    for name in ("queue", "account", "local_directory", "log_directory"):
        if getattr(p, name) is not None:
            kw[name] = getattr(p, name)
    if p.python:
        kw["python"] = p.python
    return kw


def _slurm_memory_mb(memory: str) -> int:
    from dask.utils import parse_bytes

    return max(1, math.ceil(parse_bytes(memory) / 2**20))


def render_slurm_script(p: ClusterSection, scheduler_address: str = "tcp://SCHEDULER:8786", builtin: bool | None = None) -> str:
    """The SLURM job script of one worker job of a ``slurm`` profile.

    Uses ``SLURMCluster(...).job_script()`` when dask-jobqueue is installed (unless
    ``builtin=True``), else the built-in renderer, which follows the same layout: ``#SBATCH``
    directives, prologue, then one ``distributed.cli.dask_worker`` command.
    """
    if builtin is None:
        try:
            import dask_jobqueue  # noqa: F401

            builtin = False
        except ImportError:
            builtin = True
    if not builtin:
        from dask_jobqueue import SLURMCluster

        with SLURMCluster(**slurm_cluster_kwargs(p), scheduler_options={"host": p.host}) as c:
            return c.job_script()
    if p.cores < 1 or p.job_processes < 1 or p.cores % p.job_processes:
        raise ConfigError(f"cluster.cores ({p.cores}) must be a positive multiple of cluster.job_processes ({p.job_processes})")
    python = p.python or sys.executable
    nthreads = p.cores // p.job_processes
    from dask.utils import format_bytes, parse_bytes

    mem_per_proc = format_bytes(parse_bytes(p.memory) // p.job_processes).replace(" ", "")
    lines = ["#!/usr/bin/env bash", ""]
    lines.append(f"#SBATCH -J {p.job_name}")
    if p.log_directory:
        lines.append(f"#SBATCH -e {p.log_directory}/{p.job_name}-%J.err")
        lines.append(f"#SBATCH -o {p.log_directory}/{p.job_name}-%J.out")
    if p.queue:
        lines.append(f"#SBATCH -p {p.queue}")
    if p.account:
        lines.append(f"#SBATCH -A {p.account}")
    lines.append("#SBATCH -n 1")
    lines.append(f"#SBATCH --cpus-per-task={p.cores}")
    lines.append(f"#SBATCH --mem={_slurm_memory_mb(p.memory)}M")
    lines.append(f"#SBATCH -t {p.walltime}")
    lines += [f"#SBATCH {d}" for d in p.job_extra_directives]
    lines.append("")
    lines += list(p.job_script_prologue)
    cmd = [
        python, "-m", "distributed.cli.dask_worker", scheduler_address,
        "--name", "dummy-name", "--nthreads", str(nthreads), "--memory-limit", mem_per_proc,
        "--nworkers", str(p.job_processes), "--nanny", "--death-timeout", "60",
    ]
    if p.local_directory:
        cmd += ["--local-directory", p.local_directory]
    if p.resources:
        cmd += ["--resources", ",".join(f"{k}={v:g}" for k, v in p.resources.items())]
    cmd += list(p.worker_extra_args)
    lines.append(" ".join(shlex.quote(c) for c in cmd))
    return "\n".join(lines) + "\n"


def render_runner_script(p: ClusterSection, config_path: str, extra_args: list[str] | tuple[str, ...] = ()) -> str:
    """``sbatch`` script for the batch-runner style: ``srun`` the CLI on ``ntasks`` ranks.

    Inside the allocation ``SLURMRunner`` makes rank 0 the scheduler, rank 1 the client (the
    pipeline itself) and every other rank a worker; they meet through a scheduler file.
    """
    if p.ntasks < 3:
        raise ConfigError(f"cluster.ntasks must be >= 3 for slurm-runner (scheduler, client, workers), got {p.ntasks}")
    python = p.python or sys.executable
    lines = ["#!/usr/bin/env bash", "", f"#SBATCH -J {p.job_name}"]
    if p.queue:
        lines.append(f"#SBATCH -p {p.queue}")
    if p.account:
        lines.append(f"#SBATCH -A {p.account}")
    lines.append(f"#SBATCH --ntasks={p.ntasks}")
    lines.append(f"#SBATCH --cpus-per-task={p.cores}")
    lines.append(f"#SBATCH --mem-per-cpu={max(1, _slurm_memory_mb(p.memory) // max(1, p.cores))}M")
    lines.append(f"#SBATCH -t {p.walltime}")
    if p.log_directory:
        lines.append(f"#SBATCH -o {p.log_directory}/{p.job_name}-%J.out")
    lines += [f"#SBATCH {d}" for d in p.job_extra_directives]
    lines.append("")
    lines += list(p.job_script_prologue)
    cmd = [python, "-m", "pipelines", "run", config_path, "--set", "cluster.profile=slurm-runner", *extra_args]
    lines.append("srun -n " + str(p.ntasks) + " " + " ".join(shlex.quote(c) for c in cmd))
    return "\n".join(lines) + "\n"


def scheduler_file_for_runner(p: ClusterSection) -> str:
    job = os.environ.get("SLURM_JOB_ID", "local")
    base = p.scheduler_file or os.path.join(p.local_directory or os.getcwd(), "scheduler-{job_id}.json")
    return base.replace("{job_id}", job)


@contextlib.contextmanager
def open_client(p: ClusterSection, echo: Any = print) -> Iterator[Any]:
    """Start or connect to the profile's cluster; yield a ``Client``; print the dashboard link.

    With ``slurm-runner`` this is called on every rank: only the client rank gets past the
    ``with`` of the runner and yields; the scheduler and worker ranks serve until the client
    rank finishes, then exit.
    """
    from distributed import Client

    cluster = None
    stack = contextlib.ExitStack()
    with stack:
        if p.profile == "local":
            from distributed import LocalCluster

            cluster = stack.enter_context(LocalCluster(**local_cluster_kwargs(p)))
            client = stack.enter_context(Client(cluster))
        elif p.profile == "address":
            client = stack.enter_context(Client(p.address))
        elif p.profile == "scheduler-file":
            if not os.path.exists(p.scheduler_file):
                raise ConfigError(f"cluster.scheduler_file {p.scheduler_file!r} does not exist")
            client = stack.enter_context(Client(scheduler_file=p.scheduler_file))
        elif p.profile == "gpu":
            cluster = stack.enter_context(_gpu_cluster(p))
            client = stack.enter_context(Client(cluster))
        elif p.profile == "slurm":
            try:
                from dask_jobqueue import SLURMCluster
            except ImportError as exc:
                raise ConfigError("cluster profile 'slurm' needs dask-jobqueue: pip install 'hvrt-dask[slurm]'") from exc
            cluster = stack.enter_context(SLURMCluster(**slurm_cluster_kwargs(p)))
            cluster.adapt(minimum_jobs=p.minimum_jobs, maximum_jobs=p.maximum_jobs)
            client = stack.enter_context(Client(cluster))
        elif p.profile == "slurm-runner":
            try:
                from dask_jobqueue.slurm import SLURMRunner
            except ImportError as exc:
                raise ConfigError("cluster profile 'slurm-runner' needs dask-jobqueue: pip install 'hvrt-dask[slurm]'") from exc
            runner = stack.enter_context(SLURMRunner(scheduler_file=scheduler_file_for_runner(p)))
            client = stack.enter_context(Client(runner))
        else:  # validated by the schema
            raise ConfigError(f"unknown cluster profile {p.profile!r}")
        if p.profile in ("address", "scheduler-file", "slurm-runner"):
            client.wait_for_workers(1, timeout=120)
        echo(f"Dask dashboard: {client.dashboard_link}")
        yield client
