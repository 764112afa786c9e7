"""Run directories: ``run.json``, performance report, lock, idempotent and resumable runs.

A run directory holds

``run.json``                 the resolved config, seed, package versions, git revision, host,
                             start/end, per-stage status and timings, the overall status
``performance-report.html``  the Dask performance report of the latest attempt
``.lock``                    present while a run is in progress (pid + host; stale when dead)

Re-running the same config is idempotent: a stage recorded as ``success`` with the same
fingerprint (its resolved section + seed) is skipped; an interrupted stage runs again with
``resume=True`` so the engines continue from their chunk done-markers; ``force`` redoes
everything with ``overwrite=True``. Exit codes: :data:`EXIT_OK`, :data:`EXIT_FAILED`,
:data:`EXIT_BAD_CONFIG`, :data:`EXIT_RUNNING`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.schema import ConfigError, PipelineConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_RUNNING = 3

RUN_JSON = "run.json"
REPORT = "performance-report.html"
LOCK = ".lock"
# A stage whose upstream stage was redone in the same run starts over (its input changed).
DEPENDS = {
    "train_sae": ("capture",),
    "extract": ("capture", "train_sae"),
    "html": ("capture", "train_sae", "extract"),
    "jsonl": ("capture", "train_sae", "extract"),
}

VERSIONED = (
    "hvrt-dask", "dask", "distributed", "numpy", "scipy", "scikit-learn", "pandas", "zarr",
    "xarray", "torch", "safetensors", "transformers", "bokeh", "click", "pyyaml", "dask-jobqueue", "dask-cuda",
)


class AlreadyRunning(RuntimeError):
    """Another live process holds the run directory's lock."""

    exit_code = EXIT_RUNNING


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a run's output (absent ones omitted)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision(path: str | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (this package by default)."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_run_json(run_dir: str) -> dict[str, Any] | None:
    path = os.path.join(run_dir, RUN_JSON)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[str]:
    """Hold ``<run_dir>/.lock`` for the duration; raise :class:`AlreadyRunning` if it is live.

    A lock left by a dead process on this host (a killed run) is stale and taken over; a lock
    from another host is trusted (its pid cannot be checked from here).
    """
    path = os.path.join(run_dir, LOCK)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = json.load(f)
            except (OSError, ValueError):
                holder = None  # being written right now, or garbage
            if holder is None:
                time.sleep(0.2)
                with contextlib.suppress(OSError, ValueError):
                    with open(path) as f:
                        holder = json.load(f)
            if holder is not None and (holder.get("host") != me["host"] or _pid_alive(int(holder.get("pid", -1)))):
                raise AlreadyRunning(
                    f"run directory {run_dir!r} is locked by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('since')}"
                )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale (dead pid) or unreadable: take over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return
    raise AlreadyRunning(f"could not take the lock {path!r}")


# ----------------------------------------------------------------------------- execution


@dataclass
class StageContext:
    """What a stage adapter gets besides its config section."""

    run_dir: str
    seed: int
    client: Any
    resume: bool
    overwrite: bool
    echo: Callable[[str], Any] = print


StageFn = Callable[[str, Any, StageContext], dict[str, Any]]


def stage_fingerprint(cfg: PipelineConfig, stage: str) -> str:
    sec = dataclasses.asdict(cfg.stage(stage))
    return fingerprint({"stage": stage, "section": sec, "seed": cfg.run.seed, "run_dir": cfg.run.dir})


def execute(
    cfg: PipelineConfig,
    stages: list[str] | None = None,
    *,
    resume: bool = True,
    force: bool = False,
    client: Any = None,
    echo: Callable[[str], Any] = print,
    stage_fn: StageFn | None = None,
) -> int:
    """Run ``stages`` of ``cfg`` in its run directory; return the exit code.

    Parameters
    ----------
    cfg : PipelineConfig
        The validated config (``cfg.run.dir`` set).
    stages : list of str, optional
        Default: ``cfg.stages``.
    resume : bool
        Continue interrupted stages from the engines' done-markers (``resume=True``).
    force : bool
        Redo finished stages, overwriting their outputs.
    client : distributed.Client, optional
        Use this client instead of opening the config's cluster profile.
    stage_fn : callable, optional
        ``(name, section, ctx) -> result dict``; default :func:`pipelines.stages.run_stage`.
    """
    if stage_fn is None:
        from pipelines.stages import run_stage as stage_fn
    stages = list(stages if stages is not None else cfg.stages)
    run_dir = cfg.run.dir
    assert run_dir is not None
    try:
        for s in stages:
            cfg.stage(s)
        os.makedirs(run_dir, exist_ok=True)
    except ConfigError as exc:
        echo(f"error: {exc}")
        return EXIT_BAD_CONFIG
    try:
        with run_lock(run_dir):
            return _execute_locked(cfg, stages, resume, force, client, echo, stage_fn)
    except AlreadyRunning as exc:
        echo(f"already running: {exc}")
        return EXIT_RUNNING


def _execute_locked(cfg, stages, resume, force, client, echo, stage_fn) -> int:
    run_dir = cfg.run.dir
    previous = read_run_json(run_dir) or {}
    prev_stages: dict[str, Any] = dict(previous.get("stages", {}))
    fps = {s: stage_fingerprint(cfg, s) for s in stages}

    def finished(s: str) -> bool:
        rec = prev_stages.get(s) or {}
        return rec.get("status") == "success" and rec.get("fingerprint") == fps[s]

    if not force and all(finished(s) for s in stages):
        echo(f"run {run_dir!r} already complete ({', '.join(stages)}); nothing to do (use --force to redo)")
        return EXIT_OK

    history = list(previous.get("history", []))
    if previous:
        history.append({k: previous.get(k) for k in ("start", "end", "status", "pid", "stages_requested")})
    record: dict[str, Any] = {
        "config_file": os.path.abspath(cfg.source),
        "config": cfg.to_dict(),
        "seed": cfg.run.seed,
        "stages_requested": stages,
        "versions": package_versions(),
        "git": git_revision(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": sys.argv,
        "start": now(),
        "end": None,
        "status": "running",
        "exit_code": None,
        "stages": prev_stages,
        "cluster": {"profile": cfg.cluster.profile},
        "performance_report": None,
        "history": history[-20:],
    }
    json_path = os.path.join(run_dir, RUN_JSON)
    write_json_atomic(json_path, record)

    code = EXIT_OK
    try:
        with contextlib.ExitStack() as stack:
            if client is None:
                from pipelines.clusters import open_client

                client = stack.enter_context(open_client(cfg.cluster, echo=echo))
            else:
                echo(f"Dask dashboard: {client.dashboard_link}")
            record["cluster"].update(
                scheduler=client.scheduler.address,
                dashboard=client.dashboard_link,
                n_workers=len(client.scheduler_info(n_workers=-1).get("workers", {})),
            )
            if cfg.run.performance_report:
                from distributed import performance_report

                report = os.path.join(run_dir, REPORT)
                stack.enter_context(performance_report(filename=report))
                record["performance_report"] = REPORT
            write_json_atomic(json_path, record)
            redone: set[str] = set()
            for s in stages:
                upstream_redone = any(d in redone for d in DEPENDS.get(s, ()))
                if not force and not upstream_redone and finished(s):
                    echo(f"[{s}] already done, skipped")
                    continue
                prev = prev_stages.get(s) or {}
                same = prev.get("fingerprint") == fps[s]
                # Continue an interrupted stage; start over when its config changed, when forced
                # or when an upstream stage was redone (its input changed).
                overwrite = force or upstream_redone or (bool(prev) and not same) or not resume
                ctx = StageContext(run_dir=run_dir, seed=cfg.run.seed, client=client,
                                   resume=resume and not overwrite, overwrite=overwrite, echo=echo)
                rec = {"status": "running", "fingerprint": fps[s], "start": now(), "end": None,
                       "seconds": None, "resume": ctx.resume, "overwrite": ctx.overwrite}
                record["stages"][s] = rec
                write_json_atomic(json_path, record)
                echo(f"[{s}] running" + (" (resuming)" if ctx.resume and prev else ""))
                t0 = time.perf_counter()
                try:
                    result = stage_fn(s, cfg.stage(s), ctx)
                except BaseException as exc:
                    rec.update(status="failed", end=now(), seconds=round(time.perf_counter() - t0, 3),
                               error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                    raise
                rec.update(status="success", end=now(), seconds=round(time.perf_counter() - t0, 3),
                           result=result or {})
                write_json_atomic(json_path, record)
                echo(f"[{s}] done in {rec['seconds']:.1f}s")
                redone.add(s)
    except ConfigError as exc:
        echo(f"error: {exc}")
        code = EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        echo("interrupted")
        code = EXIT_FAILED
    except Exception as exc:
        echo(f"failed: {type(exc).__name__}: {exc}")
        code = EXIT_FAILED
    record.update(end=now(), status="success" if code == EXIT_OK else "failed", exit_code=code)
    write_json_atomic(json_path, record)
    return code
