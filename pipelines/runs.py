"""Run directories: ``run.json``, performance report, locks, idempotent and resumable runs.

A run directory holds

``run.json``                 the resolved config, seed, package versions, git revision, host,
                             start/end, per-stage status, timings, outputs and input
                             identities, the overall status (``running``, ``success``,
                             ``failed``, ``interrupted``) and a history of earlier attempts
``performance-report.html``  the Dask performance report of the latest attempt
``.lock``                    the run's lock (:mod:`pipelines.locks`)

Before anything runs — before the run directory is created and before a cluster starts —
:func:`execute` validates the config with the engines' own rules
(:mod:`pipelines.validate`) and checks every output (:mod:`pipelines.outputs`). Then it locks
the run directory and each output, so two runs never write the same output.

Re-running is idempotent: a stage recorded as ``success`` with the same fingerprint (its
resolved section, the seed and the identity of its inputs) whose output is still complete is
skipped. An interrupted stage of a resumable engine continues (``resume``); a stage whose
config or inputs changed, or whose upstream stage was redone, starts over; ``force`` redoes
everything. Only outputs carrying our ownership marker are ever cleared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from hvrt_dask import ownership
from pipelines import locks, outputs, progress
from pipelines.context import StageContext
from pipelines.locks import AlreadyRunning, LockError, now
from pipelines.schema import ConfigError, PipelineConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
EXIT_RUNNING = 3
# An interrupted run exits 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

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


__all__ = ["execute", "run_lock", "read_run_json", "AlreadyRunning", "LockError", "RunRecordError",
           "StageContext", "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_CONFIG", "EXIT_RUNNING"]


class RunRecordError(RuntimeError):
    """``run.json`` has content this version cannot read (the message names the fix)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; the run records ``interrupted`` and releases its locks."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
    """The run record of ``run_dir`` (None when there is none).

    Raises
    ------
    RunRecordError
        When ``run.json`` is not a JSON object (truncated, a list, a directory, ...): the
        message names the file and the command that sets it aside.
    """
    path = os.path.join(run_dir, RUN_JSON)
    if not os.path.lexists(path):
        return None
    fix = f"set it aside and rerun: mv {shlex.quote(path)} {shlex.quote(path + '.bad')}"
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunRecordError(f"run record {path!r} cannot be read ({exc}); {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise RunRecordError(f"run record {path!r} is not a run record (a JSON object); {fix}")
    data["stages"] = {k: v for k, v in data.get("stages", {}).items() if isinstance(v, dict)}
    if not isinstance(data.get("history", []), list):
        data["history"] = []
    return data


def write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def run_lock(run_dir: str) -> contextlib.AbstractContextManager[locks.Lock]:
    """Hold ``<run_dir>/.lock`` (see :mod:`pipelines.locks`)."""
    return locks.hold(os.path.join(run_dir, LOCK), f"run directory {run_dir!r}")


# ----------------------------------------------------------------------------- execution


StageFn = Callable[[str, Any, StageContext], dict[str, Any]]


def stage_fingerprint(cfg: PipelineConfig, stage: str) -> str:
    """Identity of a stage's computation: its section, the seed and its inputs' identities."""
    sec = dataclasses.asdict(cfg.stage(stage))
    return fingerprint({"stage": stage, "section": sec, "seed": cfg.run.seed,
                        "inputs": outputs.inputs_identity(cfg, stage)})


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM/SIGINT raise :class:`Interrupted` in the main thread for the duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


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
    """Validate, check outputs, lock, then run ``stages`` of ``cfg``; return the exit code.

    Parameters
    ----------
    cfg : PipelineConfig
        The loaded config (``cfg.run.dir`` set).
    stages : list of str, optional
        Default: ``cfg.stages``.
    resume : bool
        Continue interrupted stages from the engines' done-markers.
    force : bool
        Redo finished stages (their outputs, which must be ours, start over).
    client : distributed.Client, optional
        Use this client instead of opening the config's cluster profile.
    stage_fn : callable, optional
        ``(name, section, ctx) -> result dict``; default :func:`pipelines.stages.run_stage`.
    """
    from pipelines.validate import validate_config

    stages = list(stages if stages is not None else cfg.stages)
    run_dir = cfg.run.dir
    assert run_dir is not None
    run_id = uuid.uuid4().hex[:16]
    try:
        for s in stages:
            cfg.stage(s)
        validate_config(cfg, stages, check_cluster=client is None)
        previous = read_run_json(run_dir)
        outputs.check_run_outputs(cfg, stages, previous, run_id)
    except ConfigError as exc:
        echo(f"error: {exc}")
        return EXIT_BAD_CONFIG
    except RunRecordError as exc:
        echo(f"error: {exc}")
        return EXIT_FAILED
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as exc:
        echo(f"error: cannot create the run directory {run_dir!r}: {exc.strerror}; choose a writable run.dir")
        return EXIT_FAILED
    try:
        with contextlib.ExitStack() as held:
            held.enter_context(run_lock(run_dir))
            for s in stages:  # outputs are locked like runs: two runs never share an output
                out = ownership.resolve(outputs.output_of(cfg, s))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                held.enter_context(locks.hold(locks.output_lock_path(out), f"output {out!r}"))
            with _signals_interrupt():
                previous = read_run_json(run_dir)  # as of now, under the lock
                outputs.check_run_outputs(cfg, stages, previous, run_id)
                return _execute_locked(cfg, stages, resume, force, client, echo, stage_fn, previous, run_id)
    except AlreadyRunning as exc:
        echo(f"already running: {exc}")
        return EXIT_RUNNING
    except ConfigError as exc:
        echo(f"error: {exc}")
        return EXIT_BAD_CONFIG
    except (LockError, RunRecordError) as exc:
        echo(f"error: {exc}")
        return EXIT_FAILED
    except Interrupted as exc:  # before the run record was written
        echo(f"interrupted ({exc})")
        return 128 + exc.signum
    except OSError as exc:
        echo(f"error: {exc.strerror}: {exc.filename!r}")
        return EXIT_FAILED


def _output_done(path: str) -> bool:
    p = ownership.resolve(path)
    return ownership.is_complete(p) if os.path.isdir(p) else os.path.isfile(p)


def _execute_locked(cfg, stages, resume, force, client, echo, stage_fn, previous, run_id) -> int:
    if stage_fn is None:
        from pipelines.stages import run_stage as stage_fn
    run_dir = cfg.run.dir
    previous = previous or {}
    prev_stages: dict[str, Any] = dict(previous.get("stages", {}))

    def finished(s: str) -> bool:
        rec = prev_stages.get(s) or {}
        return (rec.get("status") == "success" and rec.get("fingerprint") == stage_fingerprint(cfg, s)
                and _output_done(outputs.output_of(cfg, s)))

    if not force and all(finished(s) for s in stages):
        echo(f"run {run_dir!r} already complete ({', '.join(stages)}); nothing to do (use --force to redo)")
        for s in stages:
            echo(f"[{s}] output: {outputs.output_of(cfg, s)}")
        return EXIT_OK

    history = list(previous.get("history", []))
    if previous:
        prev_status = previous.get("status")
        if prev_status == "running":  # we hold its lock now: that process died without a word
            prev_status = "killed"
        history.append({"start": previous.get("start"), "end": previous.get("end"), "status": prev_status,
                        "pid": previous.get("pid"), "host": previous.get("host"),
                        "stages_requested": previous.get("stages_requested")})
        for rec in prev_stages.values():
            if rec.get("status") == "running":
                rec["status"] = "killed"
    record: dict[str, Any] = {
        "run_id": run_id,
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
    status = "success"
    current: dict[str, Any] | None = None
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

                stack.enter_context(performance_report(filename=os.path.join(run_dir, REPORT)))
                record["performance_report"] = REPORT
            write_json_atomic(json_path, record)
            redone: set[str] = set()
            for s in stages:
                upstream_redone = any(d in redone for d in DEPENDS.get(s, ()))
                if not force and not upstream_redone and finished(s):
                    echo(f"[{s}] already done, skipped; output: {outputs.output_of(cfg, s)}")
                    continue
                prev = prev_stages.get(s) or {}
                fp = stage_fingerprint(cfg, s)
                same = prev.get("fingerprint") == fp
                # Continue an interrupted stage; start over when its config or inputs changed,
                # when forced or when an upstream stage was redone.
                overwrite = force or upstream_redone or (bool(prev) and not same) or not resume
                ctx = StageContext(run_dir=run_dir, seed=cfg.run.seed, client=client,
                                   resume=resume and not overwrite, overwrite=overwrite, echo=echo,
                                   run_id=run_id, progress=progress.engines_show_progress())
                out = ownership.resolve(outputs.output_of(cfg, s))
                current = {"status": "running", "fingerprint": fp, "start": now(), "end": None,
                           "seconds": None, "resume": ctx.resume, "overwrite": ctx.overwrite,
                           "output": {"path": out, "kind": outputs.KINDS[s]},
                           "inputs": outputs.inputs_identity(cfg, s)}
                record["stages"][s] = current
                write_json_atomic(json_path, record)  # the output is recorded before it is written
                echo(f"[{s}] running" + (" (resuming)" if ctx.resume and prev else ""))
                t0 = time.perf_counter()
                try:
                    result = stage_fn(s, cfg.stage(s), ctx) or {}
                except BaseException as exc:
                    current.update(end=now(), seconds=round(time.perf_counter() - t0, 3),
                                   status="interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed",
                                   error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
                    raise
                current.update(status="success", end=now(), seconds=round(time.perf_counter() - t0, 3), result=result)
                current = None
                write_json_atomic(json_path, record)
                summary = result.get("summary")
                echo(f"[{s}] done in {record['stages'][s]['seconds']:.1f}s" + (f": {summary}" if summary else ""))
                echo(f"[{s}] output: {result.get('out', out)}")
                redone.add(s)
    except ConfigError as exc:
        echo(f"error: {exc}")
        code, status = EXIT_BAD_CONFIG, "failed"
    except Interrupted as exc:
        echo(f"interrupted ({exc}); rerun the same command to continue")
        code, status = 128 + exc.signum, "interrupted"
    except KeyboardInterrupt:
        echo("interrupted; rerun the same command to continue")
        code, status = 128 + signal.SIGINT, "interrupted"
    except Exception as exc:
        echo(f"failed: {type(exc).__name__}: {exc}")
        code, status = EXIT_FAILED, "failed"
    if current is not None and current.get("status") == "running":
        current.update(status=status, end=now())
    record.update(end=now(), status=status, exit_code=code)
    write_json_atomic(json_path, record)
    echo(f"run {run_dir!r}: {status} (exit {code}); record: {json_path}")
    return code
