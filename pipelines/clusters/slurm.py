"""Profiles ``slurm`` (``SLURMCluster``, adaptive) and ``slurm-runner`` (``SLURMRunner`` in one allocation).

Both go through dask-jobqueue (extra ``slurm``). Values a config leaves unset come from the
site's dask-jobqueue configuration (``jobqueue.slurm`` in ``jobqueue.yaml``); only values the
config sets are passed, so they override it. :mod:`pipelines.validate` rejects line breaks in
every value before anything is rendered.
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

# ClusterSection name -> SLURMCluster keyword, passed only when the config sets it.
JOBQUEUE_KEYS = {
    "cores": "cores", "memory": "memory", "job_processes": "processes", "walltime": "walltime",
    "queue": "queue", "account": "account", "job_name": "name", "job_extra_directives": "job_extra_directives",
    "job_script_prologue": "job_script_prologue", "worker_extra_args": "worker_extra_args",
    "local_directory": "local_directory", "log_directory": "log_directory", "python": "python",
}


def slurm_cluster_kwargs(p: ClusterSection) -> dict[str, Any]:
    """``dask_jobqueue.SLURMCluster`` keyword arguments: the values the profile sets explicitly."""
    kw = {jq: getattr(p, ours) for ours, jq in JOBQUEUE_KEYS.items() if getattr(p, ours) is not None}
    kw = {k: list(v) if isinstance(v, list) else v for k, v in kw.items()}
    if p.resources:
        import dask.config

        base = kw.get("worker_extra_args", dask.config.get("jobqueue.slurm.worker-extra-args", []) or [])
        kw["worker_extra_args"] = [*base, "--resources", ",".join(f"{k}={v:g}" for k, v in p.resources.items())]
    return kw


def _jobqueue() -> Any:
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ConfigError("cluster profiles 'slurm' and 'slurm-runner' need dask-jobqueue:"
                          " pip install 'hvrt-dask[slurm]'") from exc
    return dask_jobqueue


def render_slurm_script(p: ClusterSection, scheduler_address: str = "tcp://SCHEDULER:8786") -> str:
    """The job script of one worker job of a ``slurm`` profile, rendered by dask-jobqueue."""
    jq = _jobqueue()
    with jq.SLURMCluster(**slurm_cluster_kwargs(p), scheduler_options={"host": p.host}) as c:
        script = c.job_script()
    # The rendered script names the (throw-away) scheduler it was rendered with.
    return script.replace(c.scheduler_address, scheduler_address)


def _setting(p: ClusterSection, ours: str) -> Any:
    import dask.config

    v = getattr(p, ours)
    return v if v is not None else dask.config.get(f"jobqueue.slurm.{JOBQUEUE_KEYS[ours].replace('_', '-')}", None)


def render_runner_script(p: ClusterSection, config_path: str, extra_args: list[str] | tuple[str, ...] = ()) -> str:
    """``sbatch`` script for the batch-runner style: ``srun`` the CLI on ``ntasks`` ranks.

    Inside the allocation ``SLURMRunner`` makes rank 0 the scheduler, rank 1 the client (the
    pipeline itself) and every other rank a worker; they meet through a scheduler file.
    """
    if p.ntasks < 3:
        raise ConfigError(f"cluster.ntasks must be >= 3 for slurm-runner (scheduler, client, workers), got {p.ntasks}")
    python = _setting(p, "python") or sys.executable
    cores = int(_setting(p, "cores") or 1)
    lines = ["#!/usr/bin/env bash", "", f"#SBATCH -J {_setting(p, 'job_name') or 'hvrt-dask'}"]
    for flag, ours in (("-p", "queue"), ("-A", "account"), ("-t", "walltime")):
        v = _setting(p, ours)
        if v:
            lines.append(f"#SBATCH {flag} {v}")
    lines.append(f"#SBATCH --ntasks={p.ntasks}")
    lines.append(f"#SBATCH --cpus-per-task={cores}")
    memory = _setting(p, "memory")
    if memory:
        from dask.utils import parse_bytes

        lines.append(f"#SBATCH --mem-per-cpu={max(1, math.ceil(parse_bytes(memory) / 2**20) // cores)}M")
    log_dir = _setting(p, "log_directory")
    if log_dir:
        lines.append(f"#SBATCH -o {log_dir}/hvrt-dask-%J.out")
    lines += [f"#SBATCH {d}" for d in (_setting(p, "job_extra_directives") or [])]
    lines.append("")
    lines += list(_setting(p, "job_script_prologue") or [])
    cmd = [python, "-m", "pipelines", "run", config_path, "--set", "cluster.profile=slurm-runner", *extra_args]
    lines.append(f"srun -n {p.ntasks} " + " ".join(shlex.quote(c) for c in cmd))
    return "\n".join(lines) + "\n"


def scheduler_file_for_runner(p: ClusterSection) -> str:
    job = os.environ.get("SLURM_JOB_ID", "local")
    base = p.scheduler_file or os.path.join(p.local_directory or os.getcwd(), "scheduler-{job_id}.json")
    return base.replace("{job_id}", job)


@contextlib.contextmanager
def cluster_context(p: ClusterSection) -> Iterator[Any]:
    from distributed import Client

    jq = _jobqueue()
    if p.profile == "slurm":
        with jq.SLURMCluster(**slurm_cluster_kwargs(p)) as cluster:
            cluster.adapt(minimum_jobs=p.minimum_jobs, maximum_jobs=p.maximum_jobs)
            with Client(cluster) as client:
                yield client
        return
    # slurm-runner: every rank calls this; only the client rank gets past the runner's `with`.
    from dask_jobqueue.slurm import SLURMRunner

    with SLURMRunner(scheduler_file=scheduler_file_for_runner(p)) as runner, Client(runner) as client:
        client.wait_for_workers(1, timeout=120)
        yield client
