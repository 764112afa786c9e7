"""Shared fixtures: one real multi-process LocalCluster for the session, a sync scheduler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import dask
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: no GPU
        return False


def pytest_addoption(parser):
    parser.addoption("--no-cluster", action="store_true",
                     help="deselect tests that start dask clusters (used by `make mutation`: worker "
                          "processes are not traced by mutmut, and a cluster per mutant is slow)")


CLUSTER_FIXTURES = {"cluster", "client", "real_cluster", "one_worker_cluster"}


# Session resources (clusters, a browser) are released right after the last test that uses
# them instead of at the end of the session: idle worker processes still cost ~5 % of a core
# each in heartbeats, which on a 2-core machine slows every later test.
_LAST_USER: dict[str, str] = {}
_RELEASE: dict[str, Callable[[], None]] = {}


def release_after_last_use(name: str, close: Callable[[], None]) -> None:
    """Register ``close`` (idempotent) to run once the last collected test using ``name`` is done."""
    _RELEASE[name] = close


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    for name in set(getattr(item, "fixturenames", ())) & set(_RELEASE):
        if _LAST_USER.get(name) == item.nodeid:
            _RELEASE.pop(name)()


def pytest_collection_modifyitems(config, items):
    if config.getoption("--no-cluster"):
        keep = [i for i in items if not CLUSTER_FIXTURES & set(getattr(i, "fixturenames", ()))]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    for item in items:  # the last collected user of every fixture (items run in this order)
        for name in getattr(item, "fixturenames", ()):
            _LAST_USER[name] = item.nodeid
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "requires_gpu" in item.keywords:
            item.add_marker(skip)


def _local_cluster(name: str, n_workers: int, memory_limit: str):
    """A real multi-process LocalCluster on 127.0.0.1 (one thread per worker), released after
    the last test that uses fixture ``name``."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=memory_limit) as lc:
        release_after_last_use(name, lc.close)
        yield lc


@pytest.fixture(scope="session")
def cluster():
    """A real two-process LocalCluster bound to 127.0.0.1, shared by the whole session."""
    yield from _local_cluster("cluster", 2, "4GiB")


@pytest.fixture(scope="session")
def one_worker_cluster():
    """A real one-process LocalCluster, shared by the tests that compare one worker with two
    (a worker's imports, torch among them, are paid once instead of per test)."""
    yield from _local_cluster("one_worker_cluster", 1, "2GiB")


@pytest.fixture
def client(cluster):
    """A Client on the session cluster, set as the default scheduler for this test only."""
    from distributed import Client

    with Client(cluster, set_as_default=True) as c:
        yield c


@pytest.fixture
def sync_scheduler():
    """Run dask collections with the single-threaded synchronous scheduler."""
    with dask.config.set(scheduler="sync"):
        yield


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory):
    """Scheduler + 2 workers as separate processes (own process groups, torn down after the
    session): started once for the tests that use them (three process starts each otherwise)."""
    sched_file = tmp_path_factory.mktemp("real-cluster") / "scheduler.json"
    dask_cli = os.path.join(os.path.dirname(sys.executable), "dask")
    procs = []

    def stop() -> None:
        for p in procs[::-1]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def start(*args):
        p = subprocess.Popen([dask_cli, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
        release_after_last_use("real_cluster", stop)
        yield address, str(sched_file)
    finally:
        stop()
