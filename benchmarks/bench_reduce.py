"""Benchmark ``HVRT.reduce`` side by side with ``hvrt==2.11.0`` in one run.

Default mode: n in {1k, 5k, 20k, 50k, 1M}, d = 10, ratio 0.3, every strategy. Both models
are fitted first (fit time reported separately); each strategy's *first* reduce call is
timed (no cached contexts on either side), and our second, cached call is shown too.
In-memory (numpy) input: our chunks run on a thread pool of ``os.cpu_count()`` threads.

``--scale``: reduce a 20M x 10 Zarr input to 1 % on a LocalCluster with 2 GiB workers;
reports wall time and peak RSS (client + workers).

Usage::

    .venv/bin/python benchmarks/bench_reduce.py [--sizes 1000,5000] [--scale] [--no-peer]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hvrt_dask import ownership  # noqa: E402
from hvrt_dask.hvrt.estimator import HVRT  # noqa: E402

STRATEGIES = ["centroid_fps", "medoid_fps", "variance_ordered", "stratified"]
TARGETS = {  # (n, strategy) -> required speed-up over the peer
    **{(50_000, s): 1.0 for s in STRATEGIES},
    (1_000_000, "centroid_fps"): 2.0,
    (1_000_000, "medoid_fps"): 2.0,
    (1_000_000, "variance_ordered"): 3.0,
}


def machine_description() -> str:
    try:
        from benchmarks._machine import machine_description as md  # the core's helper

        return md()
    except Exception:
        pass
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except Exception:
        ram = "unknown"
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip()
    return f"- `uname -a`: {uname}\n- CPU: {cpu}\n- cores: {os.cpu_count()}\n- RAM: {ram}\n- Python {platform.python_version()}"


def make_data(n: int, d: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    A[:, 1] += 0.7 * A[:, 0]
    A[:, 2] = np.abs(A[:, 2]) ** 1.5
    A[: n // 5, 3:6] += 2.0
    return A


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_sizes(sizes: list[int], peer: bool) -> list[dict]:
    rows = []
    hv = None
    if peer:
        import hvrt as hv

        assert hv.__version__ == "2.11.0", hv.__version__
    for n in sizes:
        X = make_data(n)
        t_fit, ours = timed(lambda: HVRT(random_state=0).fit(X))
        t_pfit, pm = timed(lambda: hv.HVRT(random_state=0).fit(X)) if peer else (float("nan"), None)
        print(f"n={n}: fit ours {t_fit:.2f}s ({ours.n_partitions_} partitions, "
              f"{ours.grouped_.n_chunks} chunks), peer {t_pfit:.2f}s "
              f"({pm.n_partitions_ if pm is not None else '-'} partitions)", flush=True)
        for s in STRATEGIES:
            t1, a = timed(lambda: ours.reduce(ratio=0.3, method=s))
            t2, _ = timed(lambda: ours.reduce(ratio=0.3, method=s))
            tp = float("nan")
            if peer:
                tp, b = timed(lambda: pm.reduce(ratio=0.3, method=s))
                assert b.shape == a.shape
            row = dict(n=n, strategy=s, ours=t1, ours_cached=t2, peer=tp, speedup=tp / t1)
            target = TARGETS.get((n, s))
            row["target"] = target
            row["ok"] = None if target is None or not peer else row["speedup"] >= target
            rows.append(row)
            print(f"  {s:17s} ours {t1:8.3f}s  cached {t2:8.3f}s  peer {tp:8.3f}s  "
                  f"x{row['speedup']:.2f}" + (f"  (target x{target}: {'ok' if row['ok'] else 'MISS'})" if target and peer else ""),
                  flush=True)
    return rows


class PeakRSS:
    """Samples the summed RSS of this process and its children (the workers)."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def run_scale(n: int = 20_000_000, d: int = 10, ratio: float = 0.01) -> dict:
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    tmp = tempfile.mkdtemp(prefix="bench_reduce_")
    src = os.path.join(tmp, "X.zarr")
    rows_per_chunk = 500_000
    z = zarr.create_array(src, shape=(n, d), chunks=(rows_per_chunk, d), dtype="f8")
    for i in range(0, n, rows_per_chunk):  # write without holding 1.6 GB in memory
        m = min(rows_per_chunk, n - i)
        z[i : i + m] = make_data(m, d, seed=i // rows_per_chunk)
    out = os.path.join(tmp, "reduced.zarr")
    res: dict = dict(n=n, d=d, ratio=ratio)
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="2GiB", host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc), PeakRSS() as rss:
        t0 = time.perf_counter()
        model = HVRT(random_state=0).fit(src)
        res["fit_s"] = time.perf_counter() - t0
        res["partitions"] = model.n_partitions_
        res["chunks"] = model.grouped_.n_chunks
        t1 = time.perf_counter()
        written = model.reduce(ratio=ratio, method="centroid_fps", output=out)  # the written path
        res["reduce_s"] = time.perf_counter() - t1
        res["rows_out"] = int(ownership.read_complete(written)["rows"])  # from the completion record
    res["peak_rss_gib"] = rss.peak / 2**30
    res["wall_s"] = res["fit_s"] + res["reduce_s"]
    return res


def write_results(rows: list[dict], scale: dict | None, path: str) -> None:
    lines = ["# `HVRT.reduce` vs `hvrt==2.11.0`", "", "Generated by `benchmarks/bench_reduce.py` "
             "(one run, both libraries side by side; d = 10, ratio 0.3, first call per strategy "
             "so neither side has cached contexts; fit excluded; `cached` = our second call).", "",
             "## Machine", "", machine_description(), ""]
    if rows:
        lines += ["## Speed", "", "| n | strategy | ours (s) | ours cached (s) | peer (s) | speed-up | target |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            tgt = "" if r["target"] is None else f"≥ {r['target']}× ({'met' if r['ok'] else 'MISSED'})"
            lines.append(f"| {r['n']:,} | {r['strategy']} | {r['ours']:.3f} | {r['ours_cached']:.3f} | "
                         f"{r['peer']:.3f} | {r['speedup']:.2f}× | {tgt} |")
        lines.append("")
    if scale:
        lines += ["## Scale", "", f"{scale['n']:,} × {scale['d']} Zarr input → {scale['ratio']:.0%} "
                  f"(`centroid_fps`, written to Zarr) on a LocalCluster of 2 workers × 2 GiB:", "",
                  f"- fit: {scale['fit_s']:.1f} s ({scale['partitions']} partitions, {scale['chunks']} chunks)",
                  f"- reduce: {scale['reduce_s']:.1f} s → {scale['rows_out']:,} rows",
                  f"- wall (fit + reduce): {scale['wall_s']:.1f} s",
                  f"- peak RSS (client + workers): {scale['peak_rss_gib']:.2f} GiB", ""]
    lines += ["## Load", "", f"1/5/15-min load average when the results were written: "
              f"{' '.join(open('/proc/loadavg').read().split()[:3])} (the machine is shared; "
              "timings of both libraries are inflated alike by other jobs).", ""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,5000,20000,50000,1000000")
    ap.add_argument("--scale", action="store_true", help="also run the 20M-row Zarr scale test")
    ap.add_argument("--scale-only", action="store_true")
    ap.add_argument("--scale-n", type=int, default=20_000_000)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "reduce.md"))
    args = ap.parse_args(argv)
    rows = [] if args.scale_only else run_sizes([int(s) for s in args.sizes.split(",")], not args.no_peer)
    scale = run_scale(args.scale_n) if (args.scale or args.scale_only) else None
    if scale:
        print(scale)
    write_results(rows, scale, args.out)


if __name__ == "__main__":
    main()
