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
peak worker RSS (``ru_maxrss``) compared.

The SAE is random with ``b_enc = -2.33`` so that about 1 % of latents fire per token
(a realistic density; random SAEs without it fire ~50 %).

``--gpu``: 100,000 x 128 x 768 float16 store on local disk, d_sae 16384, one GPU worker:
end-to-end time and the pipeline's store read rate against a plain read of the same store.

Usage::

    .venv/bin/python benchmarks/bench_extract.py [--samples 192] [--gpu]
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
    return lc, Client(lc)


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


def worker_peak_rss(client) -> float:
    return max(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss).values()) / 1024  # MiB


def cpu_mode(args) -> str:
    import torch

    tmp = tempfile.mkdtemp(prefix="bench_extract_")
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    try:
        sae = os.path.join(tmp, "sae")
        make_sae(sae)
        n, chunk, batch = args.samples, args.chunk, args.batch
        store = os.path.join(tmp, "store")
        make_store(store, n, chunk)
        tokens = n * SEQ

        lc, c = cluster()
        with lc, c:
            r, t_a = run_pipeline(store, sae, os.path.join(tmp, "out"), batch, c)
        t_a1 = r.timings["first_pass_s"]
        t_b = bench_matmul(store, sae, n, batch)
        t_b2 = bench_matmul(store, sae, n, batch, reuse_out=True)
        shutil.rmtree(os.path.join(tmp, "out"))

        # a larger run: the window pass costs the same (d_sae x top_k examples), the rest scales
        big = None
        if args.samples_large:
            nl = args.samples_large
            store_l = os.path.join(tmp, "store_large")
            make_store(store_l, nl, chunk)
            lc, c = cluster()
            with lc, c:
                rl, t_al = run_pipeline(store_l, sae, os.path.join(tmp, "out_large"), batch, c)
            t_bl = bench_matmul(store_l, sae, nl, batch)
            t_bl2 = bench_matmul(store_l, sae, nl, batch, reuse_out=True)
            big = (nl, t_al, rl.timings["first_pass_s"], rl.timings["second_pass_s"], t_bl, t_bl2)
            shutil.rmtree(store_l)
            shutil.rmtree(os.path.join(tmp, "out_large"))
        n_c = min(n, args.samples_c)
        t_c = bench_per_sample(store, sae, n_c)
        n_d = args.samples_d
        t_d = bench_original(store, sae, n_d)

        # memory: 10x sample counts, same batch and chunk
        mem = []
        for m in (args.mem_small, 10 * args.mem_small):
            st = os.path.join(tmp, f"store{m}")
            make_store(st, m, args.mem_chunk)
            lc, c = cluster()
            with lc, c:
                rm, tm = run_pipeline(st, sae, os.path.join(tmp, f"out{m}"), batch, c)
                mem.append((m, worker_peak_rss(c), tm))
            shutil.rmtree(st)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    a_tps, a1_tps, b_tps, b2_tps = tokens / t_a, tokens / t_a1, tokens / t_b, tokens / t_b2
    a_sps, c_sps, d_sps = n / t_a, n_c / t_c, n_d / t_d
    ratio_b = a_tps / b_tps
    ratio_b1 = a1_tps / b_tps
    ratio_c, ratio_d = a_sps / c_sps, a_sps / d_sps
    rss_diff = abs(mem[1][1] - mem[0][1]) / mem[0][1]
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    lines = [
        "# SAE feature extraction benchmark (CPU)",
        "",
        f"Shapes: seq_len {SEQ}, d_in {D_IN}, d_sae {D_SAE}, float32 store, top_k {K}, context 25/25, "
        f"{n} samples ({tokens:,} tokens), chunk {chunk} samples, batch {batch} samples; SAE random with b_enc=-2.33 "
        f"(~1 % of latents active per token). Torch threads: {cores}. All four measured in one run, one after another.",
        "",
        "| | what | samples | seconds | samples/s | tokens/s |",
        "|---|---|---:|---:|---:|---:|",
        f"| (a) | pipeline end to end (1-worker LocalCluster, both passes, output) | {n} | {t_a:.1f} | {a_sps:.2f} | {a_tps:,.0f} |",
        f"| (a1) | pipeline first pass only (encode, top-k, statistics, checkpoints, tree merge) | {n} | {t_a1:.1f} | {n / t_a1:.2f} | {a1_tps:,.0f} |",
        f"| (a2) | context-window pass only | {n} | {r.timings['second_pass_s']:.1f} | | |",
        f"| (b) | encoder matmul + ReLU alone, in memory (fresh output per batch) | {n} | {t_b:.1f} | {n / t_b:.2f} | {b_tps:,.0f} |",
        f"| (b2) | the same, one reused output buffer (as the pipeline's first pass) | {n} | {t_b2:.1f} | {n / t_b2:.2f} | {b2_tps:,.0f} |",
        f"| (c) | plan's per-sample design (per-sample encode, max, Python heap push) | {n_c} | {t_c:.1f} | {c_sps:.2f} | {c_sps * SEQ:,.0f} |",
        f"| (d) | original per-feature loop | {n_d} | {t_d:.1f} | {d_sps:.3f} | {d_sps * SEQ:,.0f} |",
        *([
            "",
            f"Larger run, same shapes and settings, {big[0]} samples ({big[0] * SEQ:,} tokens), measured right after:",
            "",
            "| | what | samples | seconds | samples/s | tokens/s |",
            "|---|---|---:|---:|---:|---:|",
            f"| (a) | pipeline end to end | {big[0]} | {big[1]:.1f} | {big[0] / big[1]:.2f} | {big[0] * SEQ / big[1]:,.0f} |",
            f"| (a1) | first pass only | {big[0]} | {big[2]:.1f} | {big[0] / big[2]:.2f} | {big[0] * SEQ / big[2]:,.0f} |",
            f"| (a2) | context-window pass only | {big[0]} | {big[3]:.1f} | | |",
            f"| (b) | encoder matmul + ReLU alone (fresh output per batch) | {big[0]} | {big[4]:.1f} | {big[0] / big[4]:.2f} | {big[0] * SEQ / big[4]:,.0f} |",
            f"| (b2) | the same, one reused output buffer | {big[0]} | {big[5]:.1f} | {big[0] / big[5]:.2f} | {big[0] * SEQ / big[5]:,.0f} |",
        ] if big else []),
        "",
        "| target | measured | status |",
        "|---|---:|---|",
        f"| (a) >= 70 % of (b) tokens/s, {n} samples | {100 * ratio_b:.0f} % (first pass alone: {100 * ratio_b1:.0f} %; vs (b2): {100 * a_tps / b2_tps:.0f} %) | {ok(ratio_b >= 0.7)} |",
        *([
            f"| (a) >= 70 % of (b) tokens/s, {big[0]} samples | {100 * (big[4] / big[1]):.0f} % "
            f"(first pass alone: {100 * big[4] / big[2]:.0f} %; vs (b2): {100 * big[5] / big[1]:.0f} %) | {ok(big[4] / big[1] >= 0.7)} |"
        ] if big else []),
        f"| (a) >= 50x (c) | {ratio_c:.2f}x | {ok(ratio_c >= 50)} |",
        f"| (a) >= 1000x (d) | {ratio_d:.1f}x | {ok(ratio_d >= 1000)} |",
        f"| peak worker RSS differs <= 20 % for 10x samples (chunk {args.mem_chunk}, batch {batch}) | "
        f"{mem[0][0]} samples: {mem[0][1]:.0f} MiB; "
        f"{mem[1][0]} samples: {mem[1][1]:.0f} MiB; diff {100 * rss_diff:.1f} % | {ok(rss_diff <= 0.2)} |",
        "",
        f"(a) - (a1) = {t_a - t_a1:.1f} s is the context-window pass ((a2)), the output write and start-up. The",
        "window pass costs d_sae x top_k examples (1.6M here), not the sample count: it reads only the chunks",
        "holding examples and encodes, per sample, only the rows of its examples' windows (grouped in tiles of",
        "positions) against only those examples' encoder columns (a full encode where that is cheaper), so",
        "its work is about 1.6M x ~60 rows x d_in multiply-adds whatever the sample count. The output holds",
        "d_sae x top_k x 51 window tokens and activations (670 MB in memory) and is written once. Both are a",
        "fixed cost that a larger run amortises: the end-to-end ratio tends to the first-pass ratio (a1)/(b).",
        "(b) allocates a fresh latents tensor per batch, like a plain loop; the pipeline reuses one buffer",
        "(page faults of a fresh 134 MB tensor per batch cost ~10 % here), so (b2) is also shown.",
        "",
        "On a CPU the float32 encoder matmul (25 MFLOP per token) dominates every design, so (c) and (d)",
        "cannot be 50x/1000x slower than (a) here: their Python loops cost less than their own encode.",
        "Those two targets are GPU targets, where the encode of a sample takes microseconds and (c)'s",
        "Python heap pushes (~10^4 per sample) and (d)'s 16,384 column copies per sample are all that is",
        "left; run `--gpu` on a GPU machine. The comparable CPU figure is the share of (a) that is",
        "not the matmul: see (a) vs (b) and (b2).",
        "",
        "## Machine",
        "",
        machine_description(),
        f"- torch {__import__('torch').__version__}; no other jobs during the run",
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--samples-large", type=int, default=2048, help="second, larger pipeline run (0: skip)")
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
    args = p.parse_args()
    report = gpu_mode(args) if args.gpu else cpu_mode(args)
    print(report)
    out = args.out or os.path.join(HERE, "results", "extract_gpu.md" if args.gpu else "extract.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(report)
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
