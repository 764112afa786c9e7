"""Reliability under faults: killed workers, a killed pipeline process, memory limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import numpy as np
import pytest

from pipelines.context import StageContext
from pipelines.schema import build_section
from pipelines.stages import run_stage

from _faults_helpers import (
    KillWorkerAfter,
    SlowTasks,
    assert_same_arrays,
    make_sae,
    make_store,
    read_arrays,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


@pytest.fixture
def own_cluster():
    """A dedicated 2-process cluster (killing workers of the shared one would disturb others)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="2GiB") as lc, Client(lc) as c:
        c.register_plugin(SlowTasks(0.02))
        yield lc, c


def _table(path, n=4000, d=6, seed=0, chunk=500):
    import zarr

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[:, 1] = X[:, 0] * 0.7 + 0.3 * X[:, 1]
    X[:, 2] = np.exp(X[:, 2] / 2)
    z = zarr.create_array(str(path), shape=X.shape, chunks=(chunk, d), dtype="float64")
    z[:] = X
    return str(path)


def _run(stage, raw, tmp_path, client, name):
    raw = {**raw, "out": str(tmp_path / name / OUT[stage])}
    sec = build_section(stage, raw, "<test>")
    ctx = StageContext(run_dir=str(tmp_path / name), seed=9, client=client, resume=True, overwrite=False,
                       echo=lambda m: None)
    os.makedirs(ctx.run_dir, exist_ok=True)
    return run_stage(stage, sec, ctx)


OUT = {"expand": "expanded.zarr", "reduce": "reduced.zarr", "extract": "features"}


def _with_killed_worker(lc, client, after, fn):
    pids = client.run(os.getpid)
    victim = pids[sorted(pids)[0]]
    killer = KillWorkerAfter(victim, after)
    lc.scheduler.add_plugin(killer)
    try:
        t_end = None
        result = fn()
        t_end = time.time()
    finally:
        lc.scheduler.remove_plugin(name=killer.name)
    assert killer.killed_at is not None and killer.killed_at < t_end, "the worker was not killed mid-run"
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it
    return result


@pytest.mark.parametrize("stage", ["expand", "reduce"])
def test_worker_killed_mid_hvrt_stage(stage, tmp_path, own_cluster):
    lc, client = own_cluster
    data = _table(tmp_path / "X.zarr")
    raw = {"data": data, "n": 4000} if stage == "expand" else {"data": data, "n": 500, "method": "stratified"}
    with dask.config.set({"hvrt.chunks.target-rows": 500}):
        ref = _run(stage, raw, tmp_path, client, "undisturbed")
        got = _with_killed_worker(lc, client, 4, lambda: _run(stage, raw, tmp_path, client, "killed"))
    assert_same_arrays(read_arrays(ref["out"]), read_arrays(got["out"]))
    assert read_arrays(got["out"])["data"].shape[0] == raw["n"]  # the Zarr group's 2-D variable


def test_worker_killed_mid_extraction(tmp_path, own_cluster):
    lc, client = own_cluster
    store = make_store(tmp_path / "acts.zarr", n=96, chunk=4)
    sae = make_sae(tmp_path / "sae")
    raw = {"store": store, "sae": sae, "top_k": 5, "prefix": 2, "suffix": 2, "max_in_flight": 2,
           "split_every": 4}
    ref = _run("extract", raw, tmp_path, client, "undisturbed")
    got = _with_killed_worker(lc, client, 6, lambda: _run("extract", raw, tmp_path, client, "killed"))
    a, b = read_arrays(ref["out"]), read_arrays(got["out"])
    assert a and "topk_value" in a
    assert_same_arrays(a, b)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_pipeline_process_killed_mid_extraction_then_rerun(tmp_path, sig):
    store = make_store(tmp_path / "acts.zarr", n=60, chunk=2)
    sae = make_sae(tmp_path / "sae")
    common = {"store": store, "sae": sae, "top_k": 5, "prefix": 2, "suffix": 2, "max_in_flight": 1, "split_every": 4}
    cfg = tmp_path / "extract.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "run": {"dir": str(tmp_path / "run"), "seed": 1, "performance_report": False},
        "extract": {**common, "out": str(tmp_path / "run" / "features")},
        "cluster": {"profile": "local", "n_workers": 2, "dashboard_address": ":0", "memory_limit": "2GiB"},
    }))
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__PRELOAD=json.dumps(["_faults_helpers"]),
               HVRT_TEST_TASK_DELAY="0.1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), ROOT]))
    cmd = [sys.executable, "-m", "pipelines", "extract", str(cfg)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    partials = tmp_path / "run" / "features" / "partials"
    n_chunks = 30
    try:
        deadline = time.time() + 120
        n_done = 0
        while time.time() < deadline and proc.poll() is None:
            n_done = len(list(partials.glob("*.done"))) if partials.exists() else 0
            if n_done >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)  # the pipeline, its scheduler and its workers
        else:
            os.kill(proc.pid, signal.SIGTERM)  # a SLURM time limit, `timeout`: the pipeline process only
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    n_done = len(list(partials.glob("*.done")))
    assert 4 <= n_done < n_chunks
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    if sig == signal.SIGKILL:  # no chance to write: the record says running until the next run
        assert info["status"] == "running" and info["stages"]["extract"]["status"] == "running"
    else:  # recorded truthfully, lock released
        assert proc.returncode == 128 + signal.SIGTERM
        assert info["status"] == "interrupted" and info["stages"]["extract"]["status"] == "interrupted"
        assert (tmp_path / "run" / ".lock").read_text() == ""

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "success" and info["stages"]["extract"]["resume"] is True
    assert info["history"][-1]["status"] == ("killed" if sig == signal.SIGKILL else "interrupted")

    # undisturbed reference: the library call, in this process, same inputs
    from hvrt_dask.sae.extract import extract_features

    params = {k: v for k, v in common.items() if k not in ("store", "sae")}
    # seed=1: the pipeline passes the run's seed to the extraction (it keys the range examples)
    extract_features(store, sae, str(tmp_path / "ref"), progress=False, seed=1, **params)
    got, ref = read_arrays(tmp_path / "run" / "features"), read_arrays(tmp_path / "ref")
    assert "topk_value" in got
    assert_same_arrays(ref, got)


def test_memory_limit_smaller_than_dataset_spills(tmp_path):
    """Workers whose memory limit is below the (persisted) dataset spill to disk and finish."""
    import zarr
    from distributed import Client, LocalCluster

    n = 100_000
    data = _table(tmp_path / "X.zarr", n=n, d=16, chunk=n // 15)  # 12.8 MB of float64
    X = zarr.open_array(data, mode="r")[:]
    raw = {"data": data, "n": 2000, "method": "stratified", "persist_input": True}
    cfg = {
        "hvrt.chunks.target-rows": n // 15,
        # 12 MiB per worker holds less than the 6.4 MB half of the data each one persists
        # (target 0.6 = 7.5 MB of managed memory); only spilling can make this finish.
        "distributed.worker.memory.target": 0.6,
        "distributed.worker.memory.spill": False,
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    with dask.config.set(cfg), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                            host="127.0.0.1", dashboard_address=None,
                                            memory_limit="12MiB") as lc, Client(lc) as c:
        got = _run("reduce", raw, tmp_path, c, "tight")
        spilled = c.run(lambda dask_worker: sum(
            v for (label, unit), v in dask_worker.data.cumulative_metrics.items()
            if label == "disk-write" and unit == "bytes"))
    assert sum(spilled.values()) > X.nbytes / 4, f"too little spilling: {spilled}"
    R = read_arrays(got["out"])["data"]  # the Zarr group's 2-D variable
    assert R.shape == (2000, 16)
    # every selected row is a distinct row of the data (an independent check of the output)
    rows = {r.tobytes() for r in X}
    assert all(r.tobytes() in rows for r in R) and len({r.tobytes() for r in R}) == 2000
