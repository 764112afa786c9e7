"""HVRT at scale: fit, expand(n) → Zarr and reduce(ratio=0.01) → Zarr on lazily generated data.

Data: float32, d = 10, generated lazily by Dask (1M-row chunks; nothing on disk), so the
input never exists in one process. Cluster: a ``dask scheduler`` and two ``dask worker``
processes (1 thread, 4 GiB each) on 127.0.0.1 — a LocalCluster's layout, but with the
scheduler in its own process so that its memory is measured apart from the client's.

Per stage: wall time, peak RSS (VmHWM, reset before each stage through
``/proc/PID/clear_refs``) of the client, the scheduler and each worker, the number of tasks
the scheduler received and the bytes of the graphs the client sent.

Usage::

    PYTHONPATH=$PWD .venv/bin/python -m benchmarks.bench_scale --rows 10000000,30000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks._machine import machine_description

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "scale.md")
D = 10
CHUNK = 1_000_000


class TaskCounter:
    """Scheduler plugin: tasks received through ``update_graph``."""

    name = "hvrt-bench-task-counter"

    def __init__(self) -> None:
        self.tasks = 0

    def update_graph(self, scheduler: Any, *, keys: Any = None, tasks: Any = None, **kwargs: Any) -> None:
        self.tasks += len(tasks or ())


def _plugin_tasks(dask_scheduler: Any = None) -> int:
    return int(dask_scheduler.plugins[TaskCounter.name].tasks)


def _add_plugin(dask_scheduler: Any = None) -> None:
    if TaskCounter.name not in dask_scheduler.plugins:
        dask_scheduler.add_plugin(TaskCounter(), name=TaskCounter.name)


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _hwm_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM")


def _reset_hwm(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def make_data(n: int):
    """Lazily generated float32 rows (correlated Gaussian), deterministic per chunk."""
    import dask.array as da

    mix = np.random.default_rng(1).normal(size=(D, D)) / np.sqrt(D)
    X = da.random.default_rng(0).standard_normal((n, D), chunks=(CHUNK, D))
    return (X @ da.from_array(mix)).astype(np.float32)


class Cluster:
    """``dask scheduler`` + 2 ``dask worker --no-nanny`` processes (1 thread, 4 GiB)."""

    def __init__(self, workdir: str, memory: str = "4GiB") -> None:
        self.procs: list[subprocess.Popen] = []
        exe = os.path.join(os.path.dirname(sys.executable), "dask")
        sched_file = os.path.join(workdir, "scheduler.json")

        def start(*args: str) -> subprocess.Popen:
            p = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
            self.procs.append(p)
            return p

        self.scheduler = start("scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                               "--scheduler-file", sched_file)
        deadline = time.time() + 60
        while not os.path.exists(sched_file) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        self.address = json.load(open(sched_file))["address"]
        self.workers = [start("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                              "--memory-limit", memory, "--name", f"w{i}", "--no-dashboard",
                              "--local-directory", os.path.join(workdir, f"w{i}")) for i in range(2)]

    def pids(self) -> dict[str, int]:
        out = {"client": os.getpid(), "scheduler": self.scheduler.pid}
        out.update({f"worker {i}": w.pid for i, w in enumerate(self.workers)})
        return out

    def close(self) -> None:
        for p in self.procs[::-1]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def run(n: int, workdir: str, shuffle: str, only: tuple[str, ...] = ("fit", "expand", "reduce")) -> list[dict]:
    import dask
    from distributed import Client
    from distributed.protocol.utils import nbytes

    from hvrt_dask import HVRT

    cl = Cluster(workdir)
    rows = []
    try:
        with Client(cl.address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            client.run_on_scheduler(_add_plugin)
            sent = {"bytes": 0}
            orig = client._send_to_scheduler

            def send(msg: dict) -> None:  # count the graph bytes the client ships
                if msg.get("op") == "update-graph":
                    ser = msg["expr_ser"]
                    sent["bytes"] += sum(map(nbytes, [ser.header] + list(ser.frames)))
                orig(msg)

            client._send_to_scheduler = send
            X = make_data(n)
            model = HVRT(random_state=0)
            def fit() -> None:  # persist() is asynchronous: the stage ends when the shuffle has
                from distributed import futures_of, wait

                model.fit(X)
                wait(futures_of([model.grouped_.X, model.grouped_.rows]))

            stages = [
                ("fit (incl. the shuffle)", fit),
                ("expand(n) → Zarr", lambda: model.expand(n, generation_strategy="epanechnikov",
                                                          output=os.path.join(workdir, "expand.zarr"))),
                ("reduce(ratio=0.01) → Zarr", lambda: model.reduce(ratio=0.01,
                                                                   output=os.path.join(workdir, "reduce.zarr"))),
            ]
            stages = [st for st in stages if st[0].startswith("fit") or st[0].split(" ")[0].split("(")[0] in only]
            with dask.config.set({"hvrt.expand.shuffle": shuffle}):
                for name, fn in stages:
                    pids = cl.pids()
                    for pid in pids.values():
                        _reset_hwm(pid)
                    # What the client already holds when the stage starts (the reset peak
                    # starts there): separates a stage's own growth from what earlier left.
                    start_mib = _status_kib(os.getpid(), "VmRSS") / 1024
                    t0_tasks, t0_bytes = client.run_on_scheduler(_plugin_tasks), sent["bytes"]
                    t0 = time.perf_counter()
                    fn()
                    wall = time.perf_counter() - t0
                    row = {"n": n, "stage": name, "wall_s": wall,
                           "tasks": client.run_on_scheduler(_plugin_tasks) - t0_tasks,
                           "graph_bytes": sent["bytes"] - t0_bytes,
                           "hwm_mib": {k: _hwm_kib(p) / 1024 for k, p in pids.items()},
                           "client_start_mib": start_mib}
                    if name.startswith("fit"):
                        row["partitions"], row["chunks"] = model.n_partitions_, model.grouped_.n_chunks
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        cl.close()
    return rows


def render(rows: list[dict], shuffle: str, note: str) -> str:
    out = [
        "# HVRT at scale: fit / expand → Zarr / reduce → Zarr on lazily generated data", "",
        "Run: `python -m benchmarks.bench_scale " + " ".join(sys.argv[1:]) + "`", "",
        f"float32, d = {D}, generated lazily by Dask in {CHUNK:,}-row chunks (no disk input); "
        "`dask scheduler` + 2 `dask worker --no-nanny` processes (1 thread, 4 GiB each) on 127.0.0.1; "
        f"`HVRT(random_state=0)`, defaults (`hvrt.chunks.target-rows` 100,000); expand n = rows, "
        f"`epanechnikov`, `hvrt.expand.shuffle: {shuffle}`; reduce `ratio=0.01`, default `fps`. "
        "Peak RSS = VmHWM of each process, reset before each stage. Tasks = tasks the scheduler "
        "received; graph = bytes of the serialized graphs the client sent.", "",
        f"**Machine load:** {note}", "", "## Machine", "", machine_description(), "",
        "## Results", "",
        "| rows | stage | wall s | rows/s | tasks | graph MiB | client MiB (at start) | scheduler MiB | worker 0 MiB | worker 1 MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        h = r["hwm_mib"]
        out.append(
            f"| {r['n']:,} | {r['stage']} | {r['wall_s']:.1f} | {r['n'] / r['wall_s']:,.0f} | {r['tasks']:,} | "
            f"{r['graph_bytes'] / 2**20:.2f} | {h['client']:.0f} ({r.get('client_start_mib', float('nan')):.0f}) | {h['scheduler']:.0f} | "
            f"{h['worker 0']:.0f} | {h['worker 1']:.0f} |")
    fits = [r for r in rows if r["stage"].startswith("fit")]
    out += ["", "Partitions / output chunks after fit: " + ", ".join(
        f"{r['n']:,} rows → {r['partitions']} partitions, {r['chunks']} chunks" for r in fits), ""]
    return "\n".join(out) + "\n"


def fit_ratio(n: int, repeats: int = 2) -> str:
    """In-memory fit of ``n`` rows, ours vs ``hvrt`` (the peer), same data: best of repeats."""
    import hvrt

    from benchmarks.bench_expand import make_data as mixture
    from hvrt_dask import HVRT

    X = mixture(n)
    best = {}
    for label, mk in (("peer", lambda: hvrt.HVRT(random_state=0)), ("ours", lambda: HVRT(random_state=0))):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            mk().fit(X)
            times.append(time.perf_counter() - t0)
        best[label] = min(times)
    return "\n".join([
        "", f"## In-memory fit at {n:,} rows vs hvrt=={hvrt.__version__}", "",
        f"Same data as `bench_expand` (numpy float64, d = 10), best of {repeats}: peer "
        f"{best['peer']:.2f} s, ours {best['ours']:.2f} s → **{best['peer'] / best['ours']:.2f}×** "
        "(target ≥ 4×; `benchmarks/results/expand.md` has the full side-by-side table).", ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10000000,30000000", help="comma-separated row counts")
    ap.add_argument("--shuffle", default="global", choices=["global", "blocks", "none"],
                    help="hvrt.expand.shuffle for the expand stage")
    ap.add_argument("--note", default="shared 2-core machine: 3 other sessions were running tests at the same time")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--stages", default="fit,expand,reduce",
                    help="comma-separated stages to time (fit always runs: the others need it)")
    ap.add_argument("--fit-ratio", type=int, default=0, metavar="ROWS",
                    help="only append the in-memory fit ratio vs the peer at ROWS rows to --out")
    args = ap.parse_args(argv)
    if args.fit_ratio:
        text = fit_ratio(args.fit_ratio)
        print(text)
        with open(args.out, "a") as f:
            f.write(text)
        return 0
    rows: list[dict] = []
    for n in [int(s) for s in args.rows.split(",")]:
        workdir = tempfile.mkdtemp(prefix="hvrt_bench_scale_")
        try:
            rows += run(n, workdir, args.shuffle, tuple(args.stages.split(",")))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # our own temporary directory
        text = render(rows, args.shuffle, args.note)
        with open(args.out, "w") as f:  # after every size: a partial run still leaves a table
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
