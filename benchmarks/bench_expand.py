"""Fit and expand speed of ``hvrt_dask`` side by side with ``hvrt==2.11.0`` (one run).

Reproduces the shape of the HVRT speed findings: n ∈ {1k, 5k, 20k, 50k, 1M}, d = 10,
expand to 5n, every strategy both libraries have; fit time, first-call vs cached-call
expand time, peak traced memory. Numpy in → numpy out on both sides (our in-memory fast
path: no cluster, no task graph). ``--scale`` runs a 20M × 10 float32 Zarr input expanded
1× on a LocalCluster of 2 workers limited to 2 GiB each.

Usage::

    python -m benchmarks.bench_expand            # full table (≈ 10 min on 2 cores)
    python -m benchmarks.bench_expand --quick    # n ∈ {1k, 5k, 20k}
    python -m benchmarks.bench_expand --scale    # the 20M-row Zarr run only
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import tracemalloc

import numpy as np

from benchmarks._machine import machine_description

D = 10
RESULTS = os.path.join(os.path.dirname(__file__), "results", "expand.md")
# (label, our kwargs, peer kwargs)
STRATEGIES = [
    ("epanechnikov", {"generation_strategy": "epanechnikov"}, {"generation_strategy": "epanechnikov"}),
    ("bootstrap_noise", {"generation_strategy": "bootstrap_noise"}, {"generation_strategy": "bootstrap_noise"}),
    ("multivariate_kde", {"generation_strategy": "multivariate_kde"}, {"generation_strategy": "multivariate_kde"}),
    ("univariate_kde_copula", {"generation_strategy": "univariate_kde_copula"},
     {"generation_strategy": "univariate_kde_copula"}),
    ("gaussian_kde h=0.1", {"bandwidth": 0.1}, {"bandwidth": 0.1}),
]

# Skipped above 50k rows on this shared 2-core / 24 GiB machine (said in the table):
PEER_TOO_COSTLY = {
    "univariate_kde_copula": "peer prepare is a Python loop of scipy KDEs (≈80 s at 50k, ≈30 min at 1M)",
    "multivariate_kde": "peer gathers (N, d, d) Cholesky factors: ≈4 GB of temporaries at N = 5M",
}


def make_data(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    """A d-dimensional Gaussian mixture (4 correlated components)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(4, d))
    A = rng.normal(size=(d, d)) / np.sqrt(d)
    return centers[rng.integers(0, 4, n)] + rng.standard_normal((n, d)) @ A


def timed(fn, trace: bool = False):
    gc.collect()
    if trace:
        tracemalloc.start()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    peak = 0
    if trace:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return dt, peak, out


def available(label: str) -> bool:
    from hvrt_dask.hvrt.generation import GENERATION_STRATEGIES

    name = "gaussian_kde" if label.startswith("gaussian_kde") else label
    return name in GENERATION_STRATEGIES


def bench_size(n: int, repeats: int, trace: bool) -> list[dict]:
    import hvrt

    from hvrt_dask import HVRT

    X = make_data(n)
    impls = (("peer", hvrt.HVRT), ("ours", HVRT))
    labels = []
    rows = []
    for label, ours_kw, peer_kw in STRATEGIES:
        if not available(label):
            rows.append({"n": n, "what": label, "skip": "not registered in hvrt_dask"})
        elif n > 50_000 and label in PEER_TOO_COSTLY:
            rows.append({"n": n, "what": label, "skip": PEER_TOO_COSTLY[label]})
        else:
            labels.append((label, {"ours": ours_kw, "peer": peer_kw}))
    fit_t = {k: [] for k, _ in impls}
    fit_mem = {k: 0 for k, _ in impls}
    n_parts = {}
    first = {(k, lab): [] for k, _ in impls for lab, _ in labels}
    cached = {(k, lab): [] for k, _ in impls for lab, _ in labels}
    mem = {(k, lab): 0 for k, _ in impls for lab, _ in labels}
    for r in range(repeats):
        for impl, cls in impls:  # peer and ours alternate, so load hits both alike
            dt, pk, m = timed(lambda: cls(random_state=0).fit(X), trace and r == 0)
            fit_t[impl].append(dt)
            fit_mem[impl] = max(fit_mem[impl], pk)
            n_parts[impl] = m.n_partitions_
            # one fitted model serves every strategy: each strategy's first call still
            # prepares its own contexts, the second is the cached call
            for lab, kws in labels:
                first[(impl, lab)].append(timed(lambda: m.expand(5 * n, **kws[impl]))[0])
                dt, pk, _ = timed(lambda: m.expand(5 * n, **kws[impl]), trace and r == 0)
                cached[(impl, lab)].append(dt)
                mem[(impl, lab)] = max(mem[(impl, lab)], pk)
            del m
    med = statistics.median
    out = [{"n": n, "what": "fit", "peer_s": med(fit_t["peer"]), "ours_s": med(fit_t["ours"]),
            "peer_mem": fit_mem["peer"], "ours_mem": fit_mem["ours"], "parts": (n_parts["peer"], n_parts["ours"])}]
    for lab, _ in labels:
        out.append({"n": n, "what": lab,
                    "peer_first": med(first[("peer", lab)]), "peer_cached": med(cached[("peer", lab)]),
                    "ours_first": med(first[("ours", lab)]), "ours_cached": med(cached[("ours", lab)]),
                    "peer_mem": mem[("peer", lab)], "ours_mem": mem[("ours", lab)]})
    out += rows
    if n <= 5000:  # latency: fit + first expand (epanechnikov), the small-data use case
        lat = {k: [] for k, _ in impls}
        for _ in range(7):
            for impl, cls in impls:
                t = time.perf_counter()
                cls(random_state=0).fit(X).expand(5 * n, generation_strategy="epanechnikov")
                lat[impl].append(time.perf_counter() - t)
        out.append({"n": n, "what": "latency", "peer_s": med(lat["peer"]), "ours_s": med(lat["ours"])})
    return out


def fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def render(rows: list[dict], header: str) -> str:
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    out = [header, "", "## Fit (HVRT, d = 10)", "",
           "| n | partitions peer / ours | peer fit s | ours fit s | speed-up | peak MiB peer / ours |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r["what"] == "fit":
            out.append(f"| {fmt_n(r['n'])} | {r['parts'][0]} / {r['parts'][1]} | {r['peer_s']:.3f} | "
                       f"{r['ours_s']:.3f} | **{r['peer_s'] / r['ours_s']:.2f}×** | "
                       f"{mib(r['peer_mem'])} / {mib(r['ours_mem'])} |")
    out += ["", "## Expand to 5n (throughput ratio = peer time / ours time; > 1 means we are faster)", "",
            "| n | strategy | peer first s | peer cached s | ours first s | ours cached s | ratio first | "
            "ratio cached | ours cached Mrows/s | peak MiB peer / ours |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["what"] in ("fit", "latency"):
            continue
        if "skip" in r:
            out.append(f"| {fmt_n(r['n'])} | {r['what']} | – | – | – | – | – | – | – | skipped: {r['skip']} |")
            continue
        out.append(
            f"| {fmt_n(r['n'])} | {r['what']} | {r['peer_first']:.4f} | {r['peer_cached']:.4f} | "
            f"{r['ours_first']:.4f} | {r['ours_cached']:.4f} | {r['peer_first'] / r['ours_first']:.2f}× | "
            f"**{r['peer_cached'] / r['ours_cached']:.2f}×** | {5 * r['n'] / r['ours_cached'] / 1e6:.1f} | "
            f"{mib(r['peer_mem'])} / {mib(r['ours_mem'])} |")
    out += ["", "## Latency: fit + first expand(5n), epanechnikov", "",
            "| n | peer s | ours s | ours / peer |", "|---|---|---|---|"]
    for r in rows:
        if r["what"] == "latency":
            out.append(f"| {fmt_n(r['n'])} | {r['peer_s']:.4f} | {r['ours_s']:.4f} | {r['ours_s'] / r['peer_s']:.2f} |")
    return "\n".join(out) + "\n"


def run_scale(rows_total: int = 20_000_000, workdir: str | None = None) -> str:
    """20M × 10 float32 Zarr → fit → expand 1× → Zarr, on 2 workers × 2 GiB."""
    import tempfile
    import threading

    import dask
    import dask.array as da
    import psutil
    from distributed import Client, LocalCluster

    from hvrt_dask import HVRT

    workdir = workdir or tempfile.mkdtemp(prefix="hvrt_scale_")
    src = os.path.join(workdir, "in.zarr")
    dst = os.path.join(workdir, "out.zarr")
    lines = ["", f"## Scale: {rows_total:,} × {D} float32 Zarr, expand 1× (2 workers × 2 GiB)", ""]
    peak = {"rss": 0}
    stop = threading.Event()

    def watch():
        me = psutil.Process()
        while not stop.is_set():
            total = me.memory_info().rss
            for c in me.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
            peak["rss"] = max(peak["rss"], total)
            time.sleep(0.5)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    t0 = time.perf_counter()
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="2GiB", host="127.0.0.1",
                          dashboard_address=None) as lc, Client(lc):
            chunk = 500_000
            rng = da.random.default_rng(0)
            X = (rng.standard_normal((rows_total, D), chunks=(chunk, D)) @ da.from_array(
                np.random.default_rng(1).normal(size=(D, D)) / np.sqrt(D))).astype(np.float32)
            X.to_zarr(src)
            t_write = time.perf_counter() - t0
            with dask.config.set({"hvrt.chunks.target-rows": 500_000, "hvrt.expand.shuffle": "blocks"}):
                t1 = time.perf_counter()
                m = HVRT(random_state=0).fit(src)
                t_fit = time.perf_counter() - t1
                t2 = time.perf_counter()
                m.expand(rows_total, generation_strategy="epanechnikov", output=dst)
                t_exp = time.perf_counter() - t2
        lines += [f"- completed: yes; partitions {m.n_partitions_}, tree sample {m.tree_sample_size_:,} rows",
                  f"- write input {t_write:.1f} s, fit {t_fit:.1f} s, expand→Zarr {t_exp:.1f} s, "
                  f"total {time.perf_counter() - t0:.1f} s",
                  f"- peak RSS (client + workers) {peak['rss'] / 2**30:.2f} GiB"]
    except Exception as exc:  # record failures honestly
        lines += [f"- FAILED after {time.perf_counter() - t0:.1f} s: {type(exc).__name__}: {exc}",
                  f"- peak RSS (client + workers) {peak['rss'] / 2**30:.2f} GiB"]
    finally:
        stop.set()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n ∈ {1k, 5k, 20k}")
    ap.add_argument("--scale", action="store_true", help="only the 20M-row Zarr run")
    ap.add_argument("--sizes", type=str, default=None, help="comma-separated n values")
    ap.add_argument("--no-trace", action="store_true", help="skip tracemalloc peaks")
    args = ap.parse_args(argv)
    import hvrt

    header = "\n".join([
        "# expand / fit benchmark: hvrt_dask vs hvrt==" + hvrt.__version__, "",
        "Run: `python -m benchmarks.bench_expand " + " ".join(argv or sys.argv[1:]) + "`", "",
        "Both sides get the same numpy float64 data (4-component Gaussian mixture, d = 10), "
        "`random_state=0`, default auto-tune; expand to 5n. Times are medians of repeats in one "
        "process, side by side. Peak memory is the tracemalloc peak of the call (numpy buffers "
        "included).", "", "## Machine", "", machine_description(), ""])
    if args.scale:
        text = header + run_scale()
        print(text)
        with open(RESULTS.replace("expand.md", "expand_scale.md"), "w") as f:
            f.write(text)
        return 0
    sizes = [1000, 5000, 20000] if args.quick else [1000, 5000, 20000, 50000, 1_000_000]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[dict] = []
    for n in sizes:
        reps = 5 if n <= 5000 else (3 if n <= 50_000 else 1)
        rows += bench_size(n, reps, not args.no_trace)
        print(render(rows, header), flush=True)
    text = render(rows, header)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
