"""Benchmark exact SAE feature extraction side by side in one run.

CPU mode (default), shapes seq_len 128, d_in 768, d_sae 16384, float32 store:

(a) this pipeline: ``extract_features`` end to end (both passes + output) on a 1-worker
    LocalCluster (torch threads = the machine's cores), and its first pass alone;
(b) the encoder matmul alone (``addmm`` + ReLU) on the same tokens, shapes, dtype and batch,
    data already in memory;
(c) the plan's per-sample design: per-sample encode, max per feature, Python heap push per
    active feature;
(d) the original per-feature loop (16,384 column copies, max, argsort, heap push per
    sample) on a small subset, extrapolated per sample.

Memory: two pipeline runs whose sample counts differ 10x, each on a fresh 1-worker cluster;
peak worker RSS (``VmHWM``) compared.

The SAE is random with ``b_enc = -2.33`` so that about 1 % of latents fire per token
(a realistic density; random SAEs without it fire ~50 %).

``--gpu``: 100,000 x 128 x 768 float16 store on local disk, d_sae 16384, one GPU worker:
end-to-end time and the pipeline's store read rate against a plain read of the same store.

``--width-sweep``: 64 samples x 32 tokens, d_in 64, float32, top_k 100, a 1-worker
LocalCluster, random ReLU SAEs whose bias leaves about 50 latents active per token, at each
``--widths`` (default 16,384 / 131,072 / 1,048,576), plus the dense variant (~31 % active)
at 131,072. Each run is a fresh process (its VmHWM is the client's + scheduler's peak) with a
fresh cluster (the worker's VmHWM); store and SAE are written by another process first.
Results replace the width-sweep section of ``results/extract.md``.

``--range-overhead``: the width sweep's d_sae 16,384 point with range examples off and on
(``range_examples`` 0 vs 5), ``--repeats`` runs of each, alternated; replaces its own section of
``results/extract.md``.

``--realistic``: d_in 768, d_sae 131,072, seq 128, ``--realistic-samples`` samples: end to end
against the matmul alone (same run, same tokens).

Usage::

    .venv/bin/python benchmarks/bench_extract.py [--samples 192] [--gpu] [--width-sweep] [--realistic] [--range-overhead]
"""

from __future__ import annotations

import argparse
import heapq
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks._machine import machine_description  # noqa: E402
from hvrt_dask.sae.store import create_store, mark_complete  # noqa: E402
from hvrt_dask.sae.weights import save_sae  # noqa: E402

SEQ, D_IN, D_SAE, K = 128, 768, 16384, 100


def make_sae(path: str) -> None:
    rng = np.random.default_rng(0)
    save_sae(path, {
        "W_enc": (rng.standard_normal((D_IN, D_SAE), dtype=np.float32) / np.sqrt(D_IN)).astype(np.float32),
        "b_enc": np.full(D_SAE, -2.33, np.float32),
        "W_dec": (rng.standard_normal((D_SAE, D_IN), dtype=np.float32) / np.sqrt(D_SAE)).astype(np.float32),
        "b_dec": np.zeros(D_IN, np.float32),
    }, {"d_in": D_IN, "d_sae": D_SAE, "architecture": "standard"})


def make_store(path: str, n: int, chunk: int, dtype: str = "float32", block: int = 2048) -> None:
    g = create_store(path, n, SEQ, D_IN, chunk, dtype=dtype, attrs={"model": "synthetic", "layer": 0, "hook": "resid", "tokenizer": None})
    rng = np.random.default_rng(1)
    block = max(chunk, block - block % chunk)
    for a in range(0, n, block):  # whole chunks per write
        b = min(n, a + block)
        g["activations"][a:b] = rng.standard_normal((b - a, SEQ, D_IN), dtype=np.float32).astype(dtype)
        g["tokens"][a:b] = rng.integers(0, 50000, size=(b - a, SEQ), dtype=np.int32)
        g["mask"][a:b] = True
    g["done"][:] = True
    mark_complete(path)


def cluster(threads: int = 1, **kw):
    from distributed import Client, LocalCluster

    lc = LocalCluster(n_workers=1, threads_per_worker=threads, processes=True, host="127.0.0.1", dashboard_address=":0", **kw)
    c = Client(lc)
    # worker start-up, like the cluster's own: import torch and the engine before the clock
    # starts (a long-lived cluster pays this once, not per extraction)
    c.run(_warm_worker)
    return lc, c


def _warm_worker() -> None:
    import torch  # noqa: F401

    import hvrt_dask.sae.extract  # noqa: F401


def run_pipeline(store, sae, out, batch, client, **kw):
    from hvrt_dask.sae.extract import extract_features

    t0 = time.perf_counter()
    r = extract_features(store, sae, out, top_k=K, batch_size=batch, client=client, progress=False, overwrite=True, **kw)
    return r, time.perf_counter() - t0


def bench_matmul(store: str, sae_path: str, n: int, batch: int, reuse_out: bool = False) -> float:
    """(b): addmm + ReLU over the same tokens (in memory), float32; returns seconds.

    ``reuse_out``: write every batch into one preallocated output (as the pipeline does),
    which saves the page faults of a fresh latents tensor per batch.
    """
    import torch

    from hvrt_dask.sae.store import open_store
    from hvrt_dask.sae.weights import load_sae

    sae = load_sae(sae_path)
    W, b = torch.from_numpy(sae.W_enc.copy()), torch.from_numpy(sae.b_enc.copy())
    acts = open_store(store).activations[:n]
    out = torch.empty(batch * SEQ, D_SAE) if reuse_out else None
    t0 = time.perf_counter()
    with torch.no_grad():
        for a in range(0, n, batch):
            x = torch.from_numpy(acts[a : a + batch]).reshape(-1, D_IN).float()
            if out is None:
                torch.addmm(b, x, W).relu_()
            else:
                torch.addmm(b, x, W, out=out[: x.shape[0]]).relu_()
    return time.perf_counter() - t0


def bench_per_sample(store: str, sae_path: str, n: int) -> float:
    """(c): the plan's per-sample design; returns seconds for ``n`` samples."""
    import torch

    from hvrt_dask.sae.store import open_store
    from hvrt_dask.sae.weights import load_sae

    sae = load_sae(sae_path)
    W, b = torch.from_numpy(sae.W_enc.copy()), torch.from_numpy(sae.b_enc.copy())
    acts = open_store(store).activations[:n]
    heaps: list[list] = [[] for _ in range(D_SAE)]
    counter = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(n):
            z = torch.addmm(b, torch.from_numpy(acts[s]).float(), W).relu_()  # per-sample encode
            mx, am = z.max(dim=0)  # max per feature (vectorised)
            mx, am = mx.numpy(), am.numpy()
            for f in np.flatnonzero(mx > 0).tolist():  # Python heap push per active feature
                counter += 1
                item = (float(mx[f]), -s, counter, {"sample": s, "position": int(am[f]), "value": float(mx[f])})
                h = heaps[f]
                if len(h) < K:
                    heapq.heappush(h, item)
                elif item[:2] > h[0][:2]:
                    heapq.heapreplace(h, item)
    return time.perf_counter() - t0


def bench_original(store: str, sae_path: str, n: int) -> float:
    """(d): the original per-feature loop (seed plan, lines 17-32); returns seconds for ``n`` samples."""
    import torch

    from hvrt_dask.sae.store import open_store
    from hvrt_dask.sae.weights import load_sae

    sae = load_sae(sae_path)
    W, b = torch.from_numpy(sae.W_enc.copy()), torch.from_numpy(sae.b_enc.copy())
    acts = open_store(store).activations[:n]
    heaps: list[list] = [[] for _ in range(D_SAE)]
    counts = np.zeros(D_SAE, np.int64)
    counter = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(n):
            z = torch.addmm(b, torch.from_numpy(acts[s]).float(), W).relu_()
            for neuron in range(D_SAE):
                col = z[:, neuron].cpu().numpy()  # per-feature copy
                m = float(col.max())
                if m > 0:
                    counts[neuron] += 1
                    top = np.argsort(col)[-5:][::-1]
                    counter += 1
                    ex = {"sample": s, "positions": top.tolist(), "value": m}
                    h = heaps[neuron]
                    if len(h) < K:
                        heapq.heappush(h, (m, counter, ex))
                    elif m > h[0][0]:
                        heapq.heapreplace(h, (m, counter, ex))
    return time.perf_counter() - t0


def _peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM`` (the high-water mark of its own address space).

    Not ``ru_maxrss``: on Linux that survives fork + exec, so a worker spawned (through its
    nanny) from a benchmark process that held gigabytes reports the parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_peak_rss(client) -> float:
    return max(client.run(_peak_rss_mib).values())  # MiB


def measure_size(tmp: str, sae: str, n: int, chunk: int, batch: int) -> dict:
    """(a) on a fresh 1-worker cluster, bracketed by (b) before and after (drift on a shared VM
    then hits both sides equally; (b) is their mean), then (b2)."""
    store = os.path.join(tmp, f"store{n}")
    make_store(store, n, chunk)
    t_b_before = bench_matmul(store, sae, n, batch)
    lc, c = cluster()
    with lc, c:
        r, t_a = run_pipeline(store, sae, os.path.join(tmp, f"out{n}"), batch, c)
    t_b_after = bench_matmul(store, sae, n, batch)
    t_b2 = bench_matmul(store, sae, n, batch, reuse_out=True)
    shutil.rmtree(os.path.join(tmp, f"out{n}"))
    return {"n": n, "store": store, "a": t_a, "a1": r.timings["first_pass_s"], "a2": r.timings["second_pass_s"],
            "write": r.timings.get("write_s", float("nan")), "b_runs": (t_b_before, t_b_after),
            "b": (t_b_before + t_b_after) / 2, "b2": t_b2}


def cpu_mode(args) -> str:
    import torch

    import hvrt_dask.sae.output  # noqa: F401  (library import, like the cluster start, is not timed)
    import xarray  # noqa: F401

    tmp = tempfile.mkdtemp(prefix="bench_extract_")
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    chunk, batch = args.chunk, args.batch
    sizes = [args.samples] + [int(x) for x in str(args.samples_large).split(",") if int(x) > 0]
    try:
        sae = os.path.join(tmp, "sae")
        make_sae(sae)
        runs = []
        for i, n in enumerate(sizes):
            runs.append(measure_size(tmp, sae, n, chunk, batch))
            if i == 0:  # (c) and (d) on the first store, then free the disk
                n_c = min(n, args.samples_c)
                t_c = bench_per_sample(runs[0]["store"], sae, n_c)
                n_d = args.samples_d
                t_d = bench_original(runs[0]["store"], sae, n_d)
            shutil.rmtree(runs[-1]["store"])

        # memory: 10x sample counts, same batch and chunk
        mem = []
        for m in (args.mem_small, 10 * args.mem_small):
            st = os.path.join(tmp, f"store{m}")
            make_store(st, m, args.mem_chunk)
            lc, c = cluster()
            with lc, c:
                rm, tm = run_pipeline(st, sae, os.path.join(tmp, f"outm{m}"), batch, c)
                mem.append((m, worker_peak_rss(c), tm))
            shutil.rmtree(st)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    first = runs[0]
    n = first["n"]
    a_sps, c_sps, d_sps = n / first["a"], n_c / t_c, n_d / t_d
    ratio_c, ratio_d = a_sps / c_sps, a_sps / d_sps
    rss_diff = abs(mem[1][1] - mem[0][1]) / mem[0][1]
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    lines = [
        "# SAE feature extraction benchmark (CPU)",
        "",
        f"Shapes: seq_len {SEQ}, d_in {D_IN}, d_sae {D_SAE}, float32 store, top_k {K}, context 25/25, "
        f"chunk {chunk} samples, batch {batch} samples ({batch * SEQ} tokens); SAE random with b_enc=-2.33 "
        f"(~1 % of latents active per token). Torch threads: {cores}. Everything below was measured in one "
        "run of `benchmarks/bench_extract.py`, one measurement after another. Per size: (b) once before and "
        "once after (a) ((b) = their mean, both shown), then (b2); (a) on a fresh 1-worker LocalCluster whose "
        "worker has imported torch (cluster start-up is not timed, the SAE load is).",
        "",
        "| samples | tokens | (a) end to end s | (a1) first pass s | (a2) window pass s | output write s "
        "| (b) matmul s (before / after) | (b2) s | (a) tokens/s | (b) tokens/s | (a)/(b) | (a1)/(b) | (a)/(b2) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        tok = r["n"] * SEQ
        lines.append(
            f"| {r['n']:,} | {tok:,} | {r['a']:.1f} | {r['a1']:.1f} | {r['a2']:.1f} | {r['write']:.1f} "
            f"| {r['b']:.1f} ({r['b_runs'][0]:.1f} / {r['b_runs'][1]:.1f}) | {r['b2']:.1f} | {tok / r['a']:,.0f} "
            f"| {tok / r['b']:,.0f} | {100 * r['b'] / r['a']:.0f} % | {100 * r['b'] / r['a1']:.0f} % | {100 * r['b2'] / r['a']:.0f} % |"
        )
    lines += [
        "",
        "(a) pipeline `extract_features` end to end (both passes, checkpoints, tree merge, output store);",
        "(a1) its first pass (encode, top-k, statistics, checkpoints, tree merge); (a2) its context-window pass;",
        "(b) the encoder matmul + ReLU alone over the same tokens in memory, a fresh output per batch like a plain",
        "loop; (b2) the same into one reused buffer (as the pipeline's first pass does).",
        "",
        "| | what | samples | seconds | samples/s |",
        "|---|---|---:|---:|---:|",
        f"| (a) | pipeline end to end | {n} | {first['a']:.1f} | {a_sps:.2f} |",
        f"| (c) | plan's per-sample design (per-sample encode, max, Python heap push) | {n_c} | {t_c:.1f} | {c_sps:.2f} |",
        f"| (d) | original per-feature loop | {n_d} | {t_d:.1f} | {d_sps:.3f} |",
        "",
        "| target | measured | status |",
        "|---|---:|---|",
        *[f"| (a) >= 70 % of (b) tokens/s, {r['n']:,} samples | {100 * r['b'] / r['a']:.0f} % | {ok(r['b'] / r['a'] >= 0.7)} |"
          for r in runs],
        f"| (a) >= 50x (c) | {ratio_c:.2f}x | {ok(ratio_c >= 50)} |",
        f"| (a) >= 1000x (d) | {ratio_d:.1f}x | {ok(ratio_d >= 1000)} |",
        f"| peak worker RSS differs <= 20 % for 10x samples (chunk {args.mem_chunk}, batch {batch}) | "
        f"{mem[0][0]} samples: {mem[0][1]:.0f} MiB; "
        f"{mem[1][0]} samples: {mem[1][1]:.0f} MiB; diff {100 * rss_diff:.1f} % | {ok(rss_diff <= 0.2)} |",
        "",
        "What (a) spends beyond the matmul: per batch, finding the ~1 % nonzero latents (one pass over the",
        "latents), statistics and per-sample maxima on those; per chunk, its top-k and a checkpoint; the tree",
        "merge; then the context-window pass, which re-reads the chunks holding examples and encodes only",
        "the windows' rows against only the examples' encoder columns (its work grows with the examples,",
        "d_sae x top_k = 1.6M here, and with the chunks read), and the output write (d_sae x top_k x 51 window",
        "tokens and activations). The fixed part is amortised by larger runs, so (a)/(b) rises with the sample count.",
        "",
        "On a CPU the float32 encoder matmul (25 MFLOP per token) dominates every design, so (c) and (d)",
        "cannot be 50x/1000x slower than (a) here: their Python loops cost less than their own encode.",
        "Those two targets are GPU targets, where the encode of a sample takes microseconds and (c)'s",
        "Python heap pushes (~10^4 per sample) and (d)'s 16,384 column copies per sample are all that is",
        "left; run `--gpu` on a GPU machine.",
        "",
        "## Machine",
        "",
        machine_description(),
        f"- torch {__import__('torch').__version__}",
        "",
    ]
    return "\n".join(lines)


def gpu_mode(args) -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    from concurrent.futures import ThreadPoolExecutor

    import zarr

    root = args.workdir or tempfile.mkdtemp(prefix="bench_extract_gpu_")
    n, chunk = args.gpu_samples, args.gpu_chunk
    store, sae = os.path.join(root, "store"), os.path.join(root, "sae")
    t0 = time.perf_counter()
    if not os.path.exists(sae):
        make_sae(sae)
    if not os.path.exists(store):
        g = create_store(store, n, SEQ, D_IN, chunk, dtype="float16", attrs={"model": "synthetic", "tokenizer": None})
        rng = np.random.default_rng(1)
        proto = rng.standard_normal((chunk, SEQ, D_IN), dtype=np.float32).astype(np.float16)

        def write(i):
            a, b = i * chunk, min(n, (i + 1) * chunk)
            x = np.roll(proto, i, axis=0)[: b - a]
            g["activations"][a:b] = x
            g["tokens"][a:b] = (np.arange((b - a) * SEQ, dtype=np.int32).reshape(b - a, SEQ) + a) % 50000
            g["mask"][a:b] = True

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(write, range(-(-n // chunk))))
        g["done"][:] = True
        mark_complete(store)
    t_make = time.perf_counter() - t0
    nbytes = n * SEQ * D_IN * 2
    os.system("sync")

    # plain read of the same store (same chunking, 8 threads)
    arr = zarr.open_group(store, mode="r")["activations"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: arr[i * chunk : (i + 1) * chunk].shape, range(-(-n // chunk))))
    t_read = time.perf_counter() - t0

    # spare worker threads read the next chunks while the GPU task encodes (read tasks have no
    # GPU restriction; the GPU resource keeps one encode at a time)
    lc, c = cluster(threads=8, resources={"GPU": 1})
    with lc, c:
        r, t_a = run_pipeline(store, sae, os.path.join(root, "out"), "auto", c, max_in_flight=4)
    read_rate, pipe_rate = nbytes / t_read / 1e9, nbytes / r.timings["first_pass_s"] / 1e9
    dev = torch.cuda.get_device_name(0)
    lines = [
        "# SAE feature extraction benchmark (GPU)",
        "",
        f"Device: {dev}. Store: {n:,} x {SEQ} x {D_IN} float16 ({nbytes / 1e9:.1f} GB) on local disk, chunk {chunk}; "
        f"d_sae {D_SAE}, top_k {K}, batch 'auto' -> {r.batch_size}.",
        "",
        "| quantity | value | target |",
        "|---|---:|---|",
        f"| end to end (both passes + output) | {t_a:.1f} s | <= 60 s ({'met' if t_a <= 60 else 'NOT met'}) |",
        f"| first pass | {r.timings['first_pass_s']:.1f} s | |",
        f"| plain read of the store | {t_read:.1f} s = {read_rate:.2f} GB/s | |",
        f"| pipeline read rate (first pass) | {pipe_rate:.2f} GB/s = {100 * pipe_rate / read_rate:.0f} % of plain | >= 70 % |",
        f"| store creation (not timed in the above) | {t_make:.0f} s | |",
        "",
        "## Machine",
        "",
        machine_description(),
        "",
    ]
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# width sweep (feature blocks): every measurement in a fresh process

SWEEP_N, SWEEP_SEQ, SWEEP_D_IN, SWEEP_CHUNK = 64, 32, 64, 64
SWEEP_BEGIN, SWEEP_END = "<!-- width-sweep -->", "<!-- /width-sweep -->"


def _vmhwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sweep_bias(d_sae: int, variant: str, l0: float = 50.0) -> float:
    """b_enc giving ~``l0`` active latents per token (pre-activations are ~N(b, 1)), or ~31 %."""
    from statistics import NormalDist

    return -0.5 if variant == "dense" else -NormalDist().inv_cdf(1 - l0 / d_sae)


def sweep_make(workdir: str, d_sae: int, variant: str, seq: int = SWEEP_SEQ, d_in: int = SWEEP_D_IN,
               n: int = SWEEP_N, chunk: int = SWEEP_CHUNK) -> None:
    """Store and SAE of one sweep point (run in its own process: the client never holds the SAE)."""
    rng = np.random.default_rng(0)
    store, sae = os.path.join(workdir, "store"), os.path.join(workdir, f"sae-{d_sae}-{variant}")
    if not os.path.exists(store):
        g = create_store(store, n, seq, d_in, chunk, dtype="float32",
                         attrs={"model": "synthetic", "layer": 0, "hook": "resid", "tokenizer": None})
        g["activations"][:] = rng.standard_normal((n, seq, d_in), dtype=np.float32)
        g["tokens"][:] = rng.integers(0, 50000, size=(n, seq), dtype=np.int32)
        g["mask"][:] = True
        g["done"][:] = True
        mark_complete(store)
    if not os.path.exists(sae):
        W = np.empty((d_in, d_sae), np.float32)
        for a in range(0, d_sae, 65536):  # x ~ N(0, I): x @ W[:, j] ~ N(0, 1)
            b = min(d_sae, a + 65536)
            W[:, a:b] = rng.standard_normal((d_in, b - a), dtype=np.float32) / np.float32(np.sqrt(d_in))
        save_sae(sae, {"W_enc": W, "b_enc": np.full(d_sae, sweep_bias(d_sae, variant), np.float32),
                       "W_dec": np.ascontiguousarray(W.T), "b_dec": np.zeros(d_in, np.float32)},
                 {"d_in": d_in, "d_sae": d_sae, "architecture": "standard"})


def sweep_one(workdir: str, d_sae: int, variant: str, range_m: int | None = None) -> dict:
    """One extraction on a fresh 1-worker cluster; wall, peaks, output bytes (printed as JSON)."""
    from hvrt_dask.sae.extract import extract_features

    lc, c = cluster(threads=1)
    try:
        base = c.run(_vmhwm_mib)
        out = os.path.join(workdir, f"out-{d_sae}-{variant}")
        t0 = time.perf_counter()
        r = extract_features(os.path.join(workdir, "store"), os.path.join(workdir, f"sae-{d_sae}-{variant}"), out,
                             top_k=K, client=c, progress=False, overwrite=True, range_examples=range_m)
        wall = time.perf_counter() - t0
        client_peak = _vmhwm_mib()  # before anything below reads the output
        worker = max(c.run(_vmhwm_mib).values())
    finally:
        c.close()
        lc.close()
    import zarr

    g = zarr.open_group(out, mode="r")
    a = g["topk_sample"]
    n_ex = sum(int((a[i : i + 65536] >= 0).sum()) for i in range(0, a.shape[0], 65536))
    t = r.timings
    n_range = 0
    if "range_sample" in g:
        a = g["range_sample"]
        n_range = sum(int((a[i : i + 4096] >= 0).sum()) for i in range(0, a.shape[0], 4096))
    res = {"range_m": range_m, "range_examples": n_range, "d_sae": d_sae, "variant": variant, "wall": wall, "client": client_peak, "worker": worker,
           "worker_start": max(base.values()), "disk": t["output_disk_bytes"], "examples": n_ex,
           "first": t["first_pass_s"], "second": t["second_pass_s"]}
    from hvrt_dask import ownership
    from hvrt_dask.sae.output import KIND

    ownership.clear(out, KIND)  # the extraction output this run wrote (refuses anything else)
    return res


def _child(args_list: list[str]) -> dict | None:
    import json
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, os.path.abspath(__file__), *args_list], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
        return None
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _clear_sae(path: str) -> None:
    """Remove an SAE directory this benchmark saved (``save_sae`` marks it; anything else is refused)."""
    from hvrt_dask import ownership
    from hvrt_dask.sae.weights import KIND

    if os.path.lexists(path):
        ownership.clear(path, KIND)


def _disk_write_mib_s(workdir: str, mib: int = 512) -> float:
    """Sequential write rate of the work directory's disk (fsync'd), for the dense run's context."""
    fd, fn = tempfile.mkstemp(prefix=".ddtest-", dir=workdir)  # a fresh name: never a user's file
    os.close(fd)
    buf = os.urandom(1 << 20)
    t0 = time.perf_counter()
    with open(fn, "wb") as f:
        for _ in range(mib):
            f.write(buf)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.remove(fn)
    return mib / dt


def width_sweep(args) -> str:
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_width_")
    widths = [int(w) for w in args.widths.split(",")]
    points = [(w, "sparse") for w in widths] + ([(131072, "dense")] if args.dense else [])
    rows = []
    for d, v in points:
        print(f"width sweep: d_sae {d:,} {v}", file=sys.stderr, flush=True)
        if _child(["--_sweep-make", workdir, str(d), v]) is None:
            rows.append({"d_sae": d, "variant": v, "failed": True})
            continue
        r = _child(["--_sweep-one", workdir, str(d), v])
        rows.append(r if r else {"d_sae": d, "variant": v, "failed": True})
        _clear_sae(os.path.join(workdir, f"sae-{d}-{v}"))
    disk = _disk_write_mib_s(workdir)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [
        SWEEP_BEGIN,
        "## Width sweep (feature blocks)",
        "",
        f"{SWEEP_N} samples x {SWEEP_SEQ} tokens, d_in {SWEEP_D_IN}, float32 store (chunk {SWEEP_CHUNK}), top_k {K}, "
        "context 25/25, 1-worker LocalCluster (1 thread, torch threads = cores), feature block "
        f"{_feature_block()} (default), random ReLU SAE with b_enc set for ~50 active latents per token "
        "(dense: b_enc = -0.5, ~31 % active). Each row: a fresh process (client + scheduler VmHWM) and a "
        "fresh worker (worker VmHWM; its VmHWM after start-up, torch imported, in brackets). "
        f"Disk: sequential fsync'd write {disk:,.0f} MiB/s. Machine: {machine_description()}",
        "",
        "| d_sae | SAE | wall s | first pass s | windows + write s | client+scheduler peak MiB | worker peak MiB "
        "| examples | output on disk MiB | output MiB/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['d_sae']:,} | {r['variant']} | failed | | | | | | | |")
            continue
        lines.append(
            f"| {r['d_sae']:,} | {r['variant']} | {r['wall']:.1f} | {r['first']:.1f} | {r['second']:.1f} "
            f"| {r['client']:,.0f} | {r['worker']:,.0f} ({r['worker_start']:,.0f}) | {r['examples']:,} "
            f"| {r['disk'] / 2**20:,.1f} | {r['disk'] / 2**20 / max(r['second'], 1e-9):,.0f} |")
    ok = [r for r in rows if not r.get("failed")]
    lines += ["", "| target | measured | status |", "|---|---|---|"]
    for r in ok:
        lines.append(f"| d_sae {r['d_sae']:,} {r['variant']}: client peak <= 1 GiB, worker peak <= 2 GiB "
                     f"| {r['client']:,.0f} / {r['worker']:,.0f} MiB "
                     f"| {'met' if r['client'] <= 1024 and r['worker'] <= 2048 else 'NOT met'} |")
    for d, lim in ((131072, 8.0), (1048576, 60.0)):
        r = next((x for x in ok if x["d_sae"] == d and x["variant"] == "sparse"), None)
        if r:
            lines.append(f"| d_sae {d:,} in <= {lim:.0f} s | {r['wall']:.1f} s | {'met' if r['wall'] <= lim else 'NOT met'} |")
    lines += ["", SWEEP_END]
    return "\n".join(lines)


RANGE_BEGIN, RANGE_END = "<!-- range-overhead -->", "<!-- /range-overhead -->"


def range_overhead(args) -> str:
    """Width-sweep point d_sae 16,384 with range examples off (m = 0) and on (m = 5), alternated,
    each run in a fresh process and fresh 1-worker cluster."""
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_range_")
    d, v = 16384, "sparse"
    rows = []
    if _child(["--_sweep-make", workdir, str(d), v]) is not None:
        for rep in range(args.repeats):
            for m in (0, 5):
                print(f"range overhead: d_sae {d:,} m={m} (repeat {rep + 1})", file=sys.stderr, flush=True)
                r = _child(["--_sweep-one", workdir, str(d), v, "--_range", str(m)])
                rows.append(r if r else {"range_m": m, "failed": True})
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [
        RANGE_BEGIN,
        "## Range examples: overhead",
        "",
        f"The width sweep's d_sae 16,384 point ({SWEEP_N} samples x {SWEEP_SEQ} tokens, d_in {SWEEP_D_IN}, top_k {K}, "
        "~50 active latents per token, 1-worker LocalCluster, fresh process per run), with range examples off "
        "(`range_examples=0`) and on (`range_examples=5`, 64 bins), runs alternated in one invocation. "
        f"Machine: {machine_description()}",
        "",
        "| range_examples | wall s | first pass s | windows + write s | client+scheduler peak MiB | worker peak MiB "
        "| top-k examples | range examples | output on disk MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['range_m']} | failed | | | | | | | |")
            continue
        lines.append(f"| {r['range_m']} | {r['wall']:.1f} | {r['first']:.1f} | {r['second']:.1f} | {r['client']:,.0f} "
                     f"| {r['worker']:,.0f} | {r['examples']:,} | {r['range_examples']:,} | {r['disk'] / 2**20:,.1f} |")
    lines += ["", RANGE_END]
    return "\n".join(lines)


def _feature_block() -> int:
    from hvrt_dask import config

    return int(config.get("extract.feature-block", 16384))


def realistic(args) -> str:
    """d_in 768, d_sae 131,072, seq 128: end to end vs the matmul alone in the same run."""
    import torch

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_real_")
    n, d, seq, d_in = args.realistic_samples, 131072, 128, 768
    _child(["--_sweep-make", workdir, str(d), "sparse", "--_shape", f"{seq},{d_in},{n},{args.chunk}"])
    store, sae = os.path.join(workdir, "store"), os.path.join(workdir, f"sae-{d}-sparse")
    from hvrt_dask.sae.store import open_store
    from safetensors.torch import load_file

    W = load_file(os.path.join(sae, "sae_weights.safetensors"))
    Wt, b = W["W_enc"], W["b_enc"]
    acts = open_store(store).activations[:]
    t0 = time.perf_counter()
    with torch.no_grad():
        out = torch.empty(2048, d)
        for a in range(0, n * seq, 2048):
            x = torch.from_numpy(acts.reshape(-1, d_in)[a : a + 2048])
            torch.addmm(b, x, Wt, out=out[: x.shape[0]]).relu_()
    t_mm = time.perf_counter() - t0
    del W, Wt, b, acts, out
    r = _child(["--_sweep-one", workdir, str(d), "sparse"])
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    tok = n * seq
    lines = ["## Realistic width on CPU", "",
             f"d_in {d_in}, d_sae {d:,}, seq {seq}, {n} samples ({tok:,} tokens), float32, top_k {K}, store chunk "
             f"{args.chunk}; matmul alone (addmm + ReLU into a reused buffer, 2048-token batches, data in memory) "
             f"and the pipeline in the same run. Machine: {machine_description()}", "",
             "| what | seconds | tokens/s |", "|---|---:|---:|",
             f"| matmul alone | {t_mm:.1f} | {tok / t_mm:,.0f} |"]
    if r:
        lines.append(f"| pipeline end to end | {r['wall']:.1f} | {tok / r['wall']:,.0f} |")
        lines.append(f"| pipeline first pass | {r['first']:.1f} | {tok / r['first']:,.0f} |")
        lines += ["", f"End to end: {100 * t_mm / r['wall']:.0f} % of the matmul-only tokens/s (target >= 70 %; "
                  f"matmul alone {'>=' if t_mm >= 60 else '<'} 60 s). Peaks: client+scheduler {r['client']:,.0f} MiB, "
                  f"worker {r['worker']:,.0f} MiB."]
    else:
        lines.append("| pipeline | failed | |")
    return "\n".join(lines)


def _replace_section(path: str, text: str, begin: str, end: str) -> None:
    old = open(path).read() if os.path.exists(path) else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(new)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--_sweep-make", "--_sweep-one"):
        import json

        mode, workdir, d, v = sys.argv[1:5]
        shape = {}
        rm = int(sys.argv[sys.argv.index("--_range") + 1]) if "--_range" in sys.argv else None
        if "--_shape" in sys.argv:
            seq, d_in, n, chunk = (int(x) for x in sys.argv[sys.argv.index("--_shape") + 1].split(","))
            shape = {"seq": seq, "d_in": d_in, "n": n, "chunk": chunk}
        if mode == "--_sweep-make":
            sweep_make(workdir, int(d), v, **shape)
            print("{}")
        else:
            print(json.dumps(sweep_one(workdir, int(d), v, rm)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--samples-large", default="2048,8192", help="larger pipeline runs, comma-separated (0: none)")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--samples-c", type=int, default=24)
    p.add_argument("--samples-d", type=int, default=2)
    p.add_argument("--mem-small", type=int, default=24)
    p.add_argument("--mem-chunk", type=int, default=24, help="chunk of both memory runs (same for both)")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--gpu-samples", type=int, default=100_000)
    p.add_argument("--gpu-chunk", type=int, default=2000)
    p.add_argument("--workdir", default=None, help="--gpu: keep the store here (reused between runs)")
    p.add_argument("--out", default=None)
    p.add_argument("--width-sweep", action="store_true")
    p.add_argument("--widths", default="16384,131072,1048576")
    p.add_argument("--no-dense", dest="dense", action="store_false")
    p.add_argument("--realistic", action="store_true")
    p.add_argument("--realistic-samples", type=int, default=128)
    p.add_argument("--range-overhead", action="store_true", help="d_sae 16,384 with range_examples 0 vs 5")
    p.add_argument("--repeats", type=int, default=2, help="--range-overhead: runs of each setting")
    args = p.parse_args()
    if args.range_overhead:
        report = range_overhead(args)
        print(report)
        _replace_section(args.out or os.path.join(HERE, "results", "extract.md"), report, RANGE_BEGIN, RANGE_END)
        return
    if args.width_sweep or args.realistic:
        parts = ([width_sweep(args)] if args.width_sweep else []) + ([realistic(args)] if args.realistic else [])
        report = "\n\n".join(parts)
        print(report)
        if args.width_sweep and args.realistic:  # both live in one section
            report = report.replace(SWEEP_END + "\n\n", "\n\n").rstrip() + "\n\n" + SWEEP_END
        elif args.realistic:
            report = f"{SWEEP_BEGIN}\n{report}\n{SWEEP_END}"
        _replace_section(args.out or os.path.join(HERE, "results", "extract.md"), report, SWEEP_BEGIN, SWEEP_END)
        return
    report = gpu_mode(args) if args.gpu else cpu_mode(args)
    print(report)
    out = args.out or os.path.join(HERE, "results", "extract_gpu.md" if args.gpu else "extract.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(report)
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
