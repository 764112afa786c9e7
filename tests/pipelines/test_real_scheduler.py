"""A config run against a real `dask scheduler` + two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytestmark = pytest.mark.cli_cluster

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


@pytest.fixture
def real_cluster(tmp_path):
    """Scheduler + 2 workers as separate processes (own process groups, torn down after)."""
    sched_file = tmp_path / "scheduler.json"
    procs = []

    def start(*args):
        p = subprocess.Popen([DASK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(p)
        return p

    try:
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
              "--scheduler-file", str(sched_file))
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sched_file.exists(), "scheduler did not start"
        time.sleep(0.3)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(2):
            start("worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1",
                  "--memory-limit", "2GiB", "--name", f"w{i}", "--no-dashboard")
        from distributed import Client

        with Client(address, timeout=60) as c:
            c.wait_for_workers(2, timeout=60)
        yield address, str(sched_file)
    finally:
        for p in procs[::-1]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_config_runs_on_real_scheduler(tmp_path, real_cluster):
    from hvrt_dask.hvrt import read_output
    from sklearn.datasets import load_breast_cancer

    from hvrt_dask import HVRT

    address, sched_file = real_cluster
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(textwrap.dedent(f"""
        run:
          dir: {tmp_path / 'run'}
          seed: 3
        expand:
          data: sklearn:load_breast_cancer
          n: 1000
        reduce:
          data: sklearn:load_breast_cancer
          n: 100
    """))
    out = subprocess.run([sys.executable, "-m", "pipelines", "run", str(cfg), "--address", address],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Dask dashboard: http://127.0.0.1:" in out.stdout
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["cluster"]["profile"] == "address" and info["cluster"]["scheduler"] == address
    assert info["cluster"]["n_workers"] == 2
    assert [info["stages"][s]["status"] for s in ("expand", "reduce")] == ["success", "success"]
    X = load_breast_cancer(as_frame=True).data
    est = HVRT(random_state=3).fit(X)
    got_e = read_output(str(tmp_path / "run" / "expanded.zarr")).to_numpy()
    got_r = read_output(str(tmp_path / "run" / "reduced.zarr")).to_numpy()
    np.testing.assert_array_equal(got_e, np.asarray(est.expand(1000, clip=False), dtype=got_e.dtype))  # schema: clip false
    np.testing.assert_array_equal(got_r, np.asarray(est.reduce(n=100), dtype=got_r.dtype))

    # the same config through the scheduler file finds the run finished
    again = subprocess.run([sys.executable, "-m", "pipelines", "run", str(cfg), "--scheduler-file", sched_file],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout
