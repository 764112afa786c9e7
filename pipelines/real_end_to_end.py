"""Real activations end to end with the library functions: capture -> train SAE -> extract -> HTML.

Usage::

    python -m pipelines.real_end_to_end [--config configs/real_end_to_end.yaml]
        [--max-samples N] [--steps N] [--d-sae N] [--n-workers N] [--no-cluster]

Reads the ``capture``, ``train_sae``, ``extract``, ``html`` and ``jsonl`` sections of the
config (keyword names equal the library parameters), starts a LocalCluster on 127.0.0.1
(unless ``--no-cluster``), runs the chain and writes ``summary.json`` into ``run.dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "real_end_to_end.yaml")


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--max-samples", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--d-sae", type=int)
    p.add_argument("--n-workers", type=int)
    p.add_argument("--no-cluster", action="store_true", help="run every stage in this process")
    return p.parse_args(argv)


def run_chain(cfg: dict, client=None, log=print) -> dict:
    """Run capture -> train_sae -> extract -> HTML/JSONL from a parsed config; returns a summary."""
    from hvrt_dask.sae.capture import capture_activations
    from hvrt_dask.sae.export import export_html, export_jsonl
    from hvrt_dask.sae.extract import extract_features
    from hvrt_dask.sae.train import train_sae

    summary: dict = {"config": cfg}
    cap = dict(cfg["capture"])
    t = time.perf_counter()
    rep = capture_activations(cap.pop("source"), cap.pop("model_dir"), cap.pop("out"), client=client, **cap)
    summary["capture"] = {**rep.as_dict(), "wall_s": time.perf_counter() - t}
    log(f"capture: {rep.n_samples} samples, {rep.tokens:,} tokens, {rep.tokens_per_s:,.0f} tokens/s -> {rep.path}")
    tr = dict(cfg["train_sae"])
    t = time.perf_counter()
    rec = train_sae(tr.pop("store"), tr.pop("out_dir"), **tr)
    summary["train_sae"] = {k: v for k, v in rec.items() if k != "log"} | {"wall_s": time.perf_counter() - t}
    log(f"train_sae: FVE {rec['fve']:.3f}, L0 {rec['l0']:.1f}, dead {rec['dead_fraction']:.1%}, {rec['train_seconds']:.0f}s")
    ex = dict(cfg["extract"])
    t = time.perf_counter()
    res = extract_features(ex.pop("store"), ex.pop("sae"), ex.pop("out"), client=client, **ex)
    summary["extract"] = {"path": res.path, "n_chunks": res.n_chunks, "timings": res.timings, "wall_s": time.perf_counter() - t}
    log(f"extract: {res.n_chunks} chunks -> {res.path}")
    h = dict(cfg.get("html") or {})
    if h:
        n = min(int(h.get("features", 200)), int(rec["d_sae"]))
        export_html(res.path, h["path"], features=range(n), max_examples=int(h.get("max_examples", 10)))
        summary["html"] = h["path"]
        log(f"html: {h['path']}")
    j = dict(cfg.get("jsonl") or {})
    if j:
        summary["jsonl"] = {"path": j["path"], "records": export_jsonl(res.path, j["path"])}
    return summary


def main(argv=None) -> int:
    import yaml

    args = _parse(argv)
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    if args.max_samples:
        cfg["capture"]["max_samples"] = args.max_samples
    if args.steps:
        cfg["train_sae"]["steps"] = args.steps
    if args.d_sae:
        cfg["train_sae"]["d_sae"] = args.d_sae
    run_dir = (cfg.get("run") or {}).get("dir", "runs/real_end_to_end")
    os.makedirs(run_dir, exist_ok=True)
    t0 = time.perf_counter()
    if args.no_cluster:
        summary = run_chain(cfg, client=None)
    else:
        from distributed import Client, LocalCluster

        cl = cfg.get("cluster") or {}
        with LocalCluster(n_workers=args.n_workers or cl.get("n_workers", 2), threads_per_worker=cl.get("threads_per_worker", 1),
                          processes=True, host="127.0.0.1", dashboard_address=":0") as cluster, Client(cluster) as client:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
            summary = run_chain(cfg, client=client)
    summary["total_s"] = time.perf_counter() - t0
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print(f"done in {summary['total_s']:.0f}s; summary: {os.path.join(run_dir, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
