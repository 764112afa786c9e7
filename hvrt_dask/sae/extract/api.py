"""The public entry point: plan → first pass → merge → windows → write."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from hvrt_dask import config, ownership
from hvrt_dask._client import resolve_client
from hvrt_dask.sae import stats as _stats
from hvrt_dask.sae.extract import checkpoint as ckpt
from hvrt_dask.sae.extract import finish, first_pass, windows
from hvrt_dask.sae.extract.executor import Executor, gpu_resources
from hvrt_dask.sae.extract.params import Block, Chunk, RunSpec, plan_blocks, plan_chunks
from hvrt_dask.sae.extract.progress import Progress
from hvrt_dask.sae.extract.tree import StreamingTree
from hvrt_dask.sae.extract.worker import SAEWorkerPlugin, torch_threads
from hvrt_dask.sae.output import (KIND, create_output, create_range_examples, finalize_output, is_complete,
                                  range_layout, read_summary)
from hvrt_dask.sae.store import ActivationStore, StoreError, open_store
from hvrt_dask.sae.weights import SAE, SAEError, load_sae

# run.json keys that must match for a resume to reuse partials
RESUME_KEYS = ("store", "n_samples", "seq_len", "d_in", "chunk_samples", "sae_hash", "top_k", "histogram_edges",
               "nonfinite", "feature_block", "store_fingerprint", "seed", "range_examples")
#: Private test hook (never set in production): a dask.config integer; the driver raises after
#: this many sample chunks finished, as if interrupted (tests of resume).
FAIL_AFTER_KEY = "hvrt.testing.extract-fail-after"


@dataclass
class ExtractionResult:
    """What :func:`extract_features` returns.

    Attributes
    ----------
    path : str
        The output Zarr store (complete).
    batch_size : int
        The resolved device batch size (smallest used by any task after OOM halving).
    n_chunks, n_resumed : int
        Sample chunks in the run and chunks taken whole from checkpoints.
    workers : list of str
        Addresses of the workers that ran extraction tasks (``"local"`` in-process).
    timings : dict
        Seconds per phase, throughput and output bytes.
    """

    path: str
    batch_size: int
    n_chunks: int
    n_resumed: int
    workers: list[str]
    timings: dict = field(default_factory=dict)

    def open(self):
        """The output as an :class:`xarray.Dataset` (lazy)."""
        from hvrt_dask.sae.output import open_output

        return open_output(self.path)

    def _repr_html_(self) -> str:
        """A short summary for Jupyter, every value escaped, with the command that builds the browser."""
        import html
        import shlex

        import zarr

        g = zarr.open_group(self.path, mode="r")
        attrs = dict(g.attrs)
        dead, rare, dense = _density_counts(g)
        n_features = int(g["density"].shape[0])
        top_k = attrs.get("config", {}).get("top_k")
        rows = [
            ("output", self.path),
            ("features", f"{n_features:,} ({dead:,} dead, {rare:,} rare, {dense:,} dense)"),
            ("samples", f"{int(attrs.get('n_samples', 0)):,} ({int(attrs.get('n_valid_tokens', 0)):,} valid tokens)"),
            ("top_k", str(top_k)),
            ("total time", f"{float(self.timings.get('total_s', float('nan'))):.1f} s"),
            ("batch size", str(self.batch_size)),
            ("workers", ", ".join(self.workers) or "none"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                       for k, v in rows)
        cmd = f"hvrt-dask site {shlex.quote(self.path)} <dir>"
        return (f"<div><strong>hvrt_dask extraction</strong><table>{body}</table>"
                f"<p>Feature browser: <code>{html.escape(cmd)}</code></p></div>")


def extract_features(
    store: str | os.PathLike | ActivationStore,
    sae: str | os.PathLike | SAE,
    out: str | os.PathLike,
    *,
    top_k: int | None = None,
    prefix: int | None = None,
    suffix: int | None = None,
    batch_size: int | str | None = None,
    split_every: int | None = None,
    max_in_flight: int | None = None,
    chunk_samples: int | None = None,
    feature_block: int | None = None,
    histogram_bins: int | None = None,
    histogram_range: tuple[float, float] | None = None,
    nonfinite: str | None = None,
    range_examples: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    client=None,
    device: str | None = None,
    progress: bool = True,
) -> ExtractionResult:
    """Extract exact per-feature top-k examples and statistics of an SAE over an activation store.

    Parameters
    ----------
    store : path or ActivationStore
        The activation store (:mod:`hvrt_dask.sae.store`); must be complete.
    sae : path or SAE
        SAELens directory (``cfg.json`` + ``sae_weights.safetensors``). Workers read their
        feature blocks' weights from this path (the weights never travel inside tasks).
    out : path
        Output Zarr store (see :mod:`hvrt_dask.sae.output`). Refused if it exists unless
        ``resume`` or ``overwrite``; never an input, never data hvrt_dask did not write.
    top_k : int, default ``extract.top-k`` (100)
        Examples per feature (one per sample, ranked by the sample's max activation).
    prefix, suffix : int, default 25/25
        Context window around each example's max position.
    batch_size : int or "auto", default "auto"
        Samples per device step; "auto" from free device memory (RAM on CPU), halved on OOM.
    split_every : int, default 8
        Fan-in of the tree reduction (one tree per feature block).
    max_in_flight : int, default 4
        Tasks submitted at once.
    chunk_samples : int, optional
        Samples per task (default: the store's chunk size).
    feature_block : int, default ``extract.feature-block`` (16384)
        Features per task: the second axis of the work. Client and worker memory depend on
        it, not on ``d_sae``.
    histogram_bins, histogram_range : optional
        Histogram bin count and log10 range of the inner edges (fixed before the pass).
    nonfinite : {"raise", "mask"}, default "raise"
        NaN/inf at a valid token raises naming the chunk and sample, or the token is masked.
    range_examples : int, default ``extract.range-examples`` (5)
        Examples per (feature, histogram bin) across the activation range: the ``m`` samples
        with the smallest keyed hash among those whose max activation falls in the bin
        (:mod:`hvrt_dask.sae.range_examples`), with their windows. 0 disables them.
    seed : int, default ``seed-default``
        Keys the range examples' hash (recorded in the output; a resume must use the same).
    resume : bool
        Continue an interrupted run in ``out`` from its checkpoints (refused when the store
        or the SAE changed since).
    overwrite : bool
        Replace ``out`` when it is an extraction output written by hvrt_dask (never anything else).
    client : distributed.Client, optional
        Defaults to the current default client; without one, tasks run in this process.
    device : str, optional
        Torch device for tasks; default CUDA when the worker has one, else CPU.
    progress : bool
        Print a progress line (a widget in Jupyter) and the dashboard link.

    Returns
    -------
    ExtractionResult

    Raises
    ------
    StoreError, SAEError, ValueError, TypeError
        Bad input, before anything is written.
    hvrt_dask.ownership.OwnershipError
        ``out`` holds data hvrt_dask did not write, or overlaps the store or the SAE.
    """
    t_start = time.perf_counter()
    # ---- plan: every check before anything is written
    p = _parameters(top_k, prefix, suffix, batch_size, split_every, max_in_flight, feature_block, histogram_bins,
                    histogram_range, nonfinite, device, range_examples, seed)
    st = store if isinstance(store, ActivationStore) else open_store(store)
    if st.n_samples == 0:
        raise StoreError(f"activation store {st.path!r} holds 0 samples: nothing to extract")
    sae_obj = sae if isinstance(sae, SAE) else load_sae(sae, weights=False)
    if sae_obj.d_in != st.d_in:
        raise SAEError(f"SAE d_in={sae_obj.d_in} ({sae_obj.path}) does not match the activation width "
                       f"d_in={st.d_in} of {st.path}")
    chunk_samples = st.chunk_samples if chunk_samples is None else _check_int("chunk_samples", chunk_samples, 1)
    run_info = {
        "store": os.path.abspath(st.path), "n_samples": st.n_samples, "seq_len": st.seq_len, "d_in": st.d_in,
        "chunk_samples": chunk_samples, "sae_path": os.path.abspath(sae_obj.path), "sae_hash": sae_obj.content_hash,
        "top_k": p["top_k"], "histogram_edges": [float(e) for e in p["edges"]], "nonfinite": p["nonfinite"],
        "feature_block": p["feature_block"], "store_fingerprint": st.fingerprint(),
        "prefix": p["prefix"], "suffix": p["suffix"], "seed": p["seed"], "range_examples": p["range_examples"],
        "partials_format": ckpt.PARTIALS_FORMAT,
    }
    out = os.path.abspath(os.fspath(out))
    done = _prepare_output(out, st, sae_obj, run_info, resume, overwrite)
    if done is not None:
        return done
    partials_dir = os.path.join(out, ckpt.PARTIALS)
    run = RunSpec(store=run_info["store"], sae_path=run_info["sae_path"], sae_hash=sae_obj.content_hash,
                  architecture=sae_obj.architecture, d_sae=sae_obj.d_sae, device=p["device"], top_k=p["top_k"],
                  prefix=p["prefix"], suffix=p["suffix"], batch_size=p["batch_size"],
                  edges=tuple(float(e) for e in p["edges"]), nonfinite=p["nonfinite"], partials_dir=partials_dir,
                  out=out, range_m=p["range_examples"], seed=p["seed"])
    chunks = plan_chunks(st.n_samples, chunk_samples)
    blocks = plan_blocks(sae_obj.d_sae, p["feature_block"])
    fingerprints = {c.cid: st.fingerprint(c.start, c.stop) for c in chunks}

    client = resolve_client(client)
    ex = Executor(client, gpu_resources(client))
    if progress and client is not None:
        print(f"hvrt_dask extract: dashboard {client.dashboard_link}", file=sys.stderr, flush=True)
    if client is not None:
        client.register_plugin(SAEWorkerPlugin(sae_obj.content_hash, torch_threads(client, p["torch_threads"])))
    create_output(out, d_sae=sae_obj.d_sae, top_k=p["top_k"], prefix=p["prefix"], suffix=p["suffix"],
                  edges=p["edges"], feature_block=p["feature_block"], range_m=p["range_examples"])

    # ---- first pass, merged per feature block as chunks finish
    t1 = time.perf_counter()
    roots, thresholds, n_resumed, computed = _first_pass(ex, run, st, chunks, blocks, fingerprints, p, resume, progress)
    t2 = time.perf_counter()

    # ---- windows and output, block by block (workers write their block's region)
    metas = _windows_and_write(ex, run, chunks, blocks, roots, thresholds, chunk_samples, p["max_in_flight"])
    t3 = time.perf_counter()

    # ---- attributes, then the completion marker (last)
    timings = {
        "first_pass_s": t2 - t1,
        "second_pass_s": t3 - t2,
        # throughput of the chunks computed in this run (resumed chunks excluded)
        "samples_per_s": computed / max(t2 - t1, 1e-9),
        "tokens_per_s": computed * st.seq_len / max(t2 - t1, 1e-9),
        "task_seconds": sum(m["seconds"] for m in metas),
        "read_seconds": sum(m["read_seconds"] for m in metas),
        "output_array_bytes": sum(m["bytes"] for m in metas),
    }
    summary = {
        "batch_size": min(m["batch_size"] for m in metas),
        "n_chunks": len(chunks),
        "n_resumed": n_resumed,
        "workers": sorted({w for m in metas for w in m["workers"]}),
    }
    ckpt.remove_partials(out, KIND)
    timings["output_disk_bytes"] = _disk_bytes(out)
    timings["total_s"] = time.perf_counter() - t_start
    finalize_output(out, {
        "store": {"path": st.path, "n_samples": st.n_samples, "seq_len": st.seq_len, "d_in": st.d_in,
                  "dtype": str(st.dtype), "fingerprint": run_info["store_fingerprint"],
                  **{k: st.attrs.get(k) for k in ("model", "layer", "hook", "tokenizer")}},
        "sae": sae_obj.describe(),
        "config": {**run_info, "split_every": p["split_every"], "max_in_flight": p["max_in_flight"],
                   "batch_size_requested": p["batch_size"], "device": p["device"],
                   "n_nonfinite_masked": metas[0]["n_nonfinite_masked"]},
        "batch_size": summary["batch_size"],
        "summary": summary,
        "timings": timings,
        "n_valid_tokens": metas[0]["n_valid_tokens"],
        "n_samples": metas[0]["n_samples"],
        "histogram": "log10-spaced inner edges fixed from config before the pass; bin i = (bin_lower, bin_upper]",
    })
    if progress:
        print(f"hvrt_dask extract: {st.n_samples} samples in {timings['total_s']:.1f} s "
              f"({timings['samples_per_s']:,.1f} samples/s first pass), batch_size={summary['batch_size']}",
              file=sys.stderr, flush=True)
    return ExtractionResult(path=out, timings=timings, **summary)


def _first_pass(ex: Executor, run: RunSpec, st, chunks: list[Chunk], blocks: list[Block], fingerprints: dict,
                p: dict, resume: bool, progress: bool):
    """Submit (chunk × block) tasks (topk: a threshold task per chunk first), feed each
    block's tree; returns the block roots, the thresholds' handles, chunks resumed, samples computed."""
    topk = run.architecture == "topk"
    kk = run.top_k
    trees = [StreamingTree(len(chunks), p["split_every"], _node_maker(ex, run, b.j, kk)) for b in blocks]
    thresholds: dict[int, Any] = {}
    todo: list[tuple[Chunk, Block]] = []
    n_resumed = 0
    bar = Progress(len(chunks), st.n_samples, st.seq_len, progress)
    for c in chunks:
        if topk:
            fn, dn = ckpt.threshold_path(run.partials_dir, c.cid)
            if resume and ckpt.resumable(dn, fn, fingerprints[c.cid]):
                thresholds[c.cid] = {"ref": fn}
        missing = []
        for b in blocks:
            fn, dn = ckpt.partial_path(run.partials_dir, c.cid, b.j)
            if resume and ckpt.resumable(dn, fn, fingerprints[c.cid]):
                trees[b.j].put(0, c.cid, {"ref": fn})
            else:
                missing.append((c, b))
        todo.extend(missing)
        if not missing:
            n_resumed += 1
            bar.update(c.n, resumed=True)
    remaining = {c.cid: 0 for c in chunks}
    for c, _ in todo:
        remaining[c.cid] += 1
    data: dict[int, Any] = {}
    fail_after = dask.config.get(FAIL_AFTER_KEY, None)
    finished = [0]

    def make(item):
        c, b = item
        if c.cid not in data:  # one read per chunk, shared by its blocks (prefetched on any thread)
            data[c.cid] = ex.submit(first_pass.read_chunk, run, c, key=f"hvrt-sae-read-{c.cid}")
        if topk and c.cid not in thresholds:
            thresholds[c.cid] = ex.submit(first_pass.token_thresholds, run, c, tuple(blocks), data[c.cid],
                                          fingerprints[c.cid], gpu=True, key=f"hvrt-sae-thresholds-{c.cid}")
        return ex.submit(first_pass.extract_block, run, c, b, data[c.cid], thresholds.get(c.cid),
                         fingerprints[c.cid], gpu=True, key=f"hvrt-sae-chunk-{c.cid}-{b.j}")

    def on_done(item, fut):
        c, b = item
        trees[b.j].put(0, c.cid, fut)
        remaining[c.cid] -= 1
        if remaining[c.cid] == 0:  # the chunk is done: release its data
            data.pop(c.cid, None)
            bar.update(c.n)
            finished[0] += 1
            if fail_after is not None and finished[0] >= int(fail_after):
                raise RuntimeError(f"injected failure after {finished[0]} chunks ({FAIL_AFTER_KEY})")

    ex.run_bounded(todo, make, p["max_in_flight"], on_done)
    roots = [_result(t.root()) for t in trees]
    # windows read the thresholds from their files (futures are not needed any more)
    thr_refs = {c.cid: {"ref": ckpt.threshold_path(run.partials_dir, c.cid)[0]} for c in chunks} if topk else {}
    run_cids = {c.cid for c, _ in todo}
    computed = sum(c.n for c in chunks if c.cid in run_cids)
    return roots, thr_refs, n_resumed, computed


def _node_maker(ex: Executor, run: RunSpec, j: int, k: int):
    # tree nodes are tasks that read their children from partials/ and write themselves there:
    # worker memory holds two partials at a time however many chunks wait for a node
    def make(level, idx, kids):
        return ex.submit(first_pass.combine_to_file, ckpt.node_path(run.partials_dir, j, level, idx), k, *kids,
                         key=f"hvrt-sae-combine-{j}")
    return make


def _result(x):
    return x.result() if hasattr(x, "result") else x


def _windows_and_write(ex: Executor, run: RunSpec, chunks: list[Chunk], blocks: list[Block], roots: list,
                       thresholds: dict, chunk_samples: int, max_in_flight: int) -> list[dict]:
    """Per block: plan its window tasks from its examples (the only O(block × top_k) data the
    client touches, one block at a time), then a finish task that writes the block."""
    metas: list[dict] = [None] * len(blocks)  # type: ignore[list-item]
    range_rows = np.zeros(len(blocks), np.int64)
    if run.range_m:  # the blocks' example counts (O(blocks)) place each block's rows
        chunk, range_rows, n_rows = _range_rows(run, roots)
        create_range_examples(run.out, n_rows=n_rows, chunk=chunk, window=run.window)

    def make(b: Block):
        fi, ri, tsmp, tpos = finish.block_examples(roots[b.j])
        # range examples go through the same window tasks, their slots offset past the top-k's
        rslot, rsmp, rpos = finish.block_range_examples(roots[b.j])
        n_bins = len(run.edges) + 1
        per_feature = n_bins * max(run.range_m, 1)
        slots = np.concatenate([fi * run.top_k + ri, b.width * run.top_k + rslot])
        fi = np.concatenate([fi, rslot // per_feature])
        smp = np.concatenate([tsmp, rsmp])
        pos = np.concatenate([tpos, rpos]).astype(np.int32)
        order = np.argsort(smp, kind="stable")  # by sample (hence by chunk); slot order kept within
        fi, smp, pos, slots = fi[order], smp[order], pos[order], slots[order]
        tasks = [(chunks[cid], b, fi[lo:hi].astype(np.int32), smp[lo:hi], pos[lo:hi], slots[lo:hi], thresholds.get(cid))
                 for cid, lo, hi in windows.plan_window_tasks(smp, chunk_samples)]
        # one window task: the finish task runs it (one task per block instead of two)
        wins = tasks if len(tasks) == 1 else [
            ex.submit(windows.gather_windows, run, *t, gpu=True, key=f"hvrt-sae-window-{b.j}-{t[0].cid}")
            for t in tasks]
        return ex.submit(finish.finish_block, run, b, roots[b.j], int(range_rows[b.j]), *wins, gpu=bool(len(tasks) == 1),
                         key=f"hvrt-sae-write-{b.j}")

    def on_done(b: Block, fut):
        metas[b.j] = fut.result()

    # a block's window results wait on a worker for its finish task: few blocks at a time
    ex.run_bounded(blocks, make, max(1, min(2, max_in_flight)), on_done)
    return metas


def _range_rows(run: RunSpec, roots: list) -> tuple[int, np.ndarray, int]:
    """:func:`~hvrt_dask.sae.output.range_layout` of the blocks' range-example counts."""
    return range_layout([finish.block_range_count(r) for r in roots])


def _prepare_output(out: str, st, sae_obj, run_info: dict, resume: bool, overwrite: bool) -> ExtractionResult | None:
    """Decide what happens to ``out`` (before anything is written); claim it. Returns the
    finished result when ``resume`` finds the same output already complete."""
    ownership.check_output_path(out, KIND, inputs=(st.path, sae_obj.path))
    if os.path.exists(out) and os.listdir(out):
        if overwrite:
            ownership.clear(out, KIND)
        elif resume:
            if is_complete(out):
                prev = _complete_config(out)
                changed = [k for k in RESUME_KEYS if prev.get(k) != run_info[k]]
                if changed:
                    raise ValueError(
                        f"output {out!r} is complete but was computed with different {', '.join(map(repr, changed))} "
                        f"({'the activation store or the SAE changed since' if set(changed) & {'store_fingerprint', 'sae_hash'} else 'other parameters'}); "
                        "write to another path, or pass overwrite=True to recompute it")
                if prev.get("prefix") == run_info["prefix"] and prev.get("suffix") == run_info["suffix"]:
                    return ExtractionResult(path=out, **read_summary(out))
            else:
                prev = ckpt.read_run(out)
                if prev is None:
                    raise ValueError(f"cannot resume {out!r}: it holds no interrupted extraction run "
                                     f"({ckpt.PARTIALS}/{ckpt.RUN_FILE} missing); write to another path or pass overwrite=True")
                for key in (*RESUME_KEYS, "partials_format"):  # partials of another layout cannot be read
                    if prev.get(key) != run_info[key]:
                        what = {"store_fingerprint": "the activation store changed since the interrupted run",
                                "sae_hash": "the SAE changed since the interrupted run"}.get(key, f"{key!r} differs from the interrupted run")
                        raise ValueError(f"cannot resume {out!r}: {what} ({prev.get(key)!r} != {run_info[key]!r}); "
                                         "rerun with the same inputs, write to another path, or pass overwrite=True")
        else:
            raise FileExistsError(f"output {out!r} already exists (pass resume=True to continue it or overwrite=True "
                                  "to replace it)")
    ownership.claim(out, KIND)
    ownership.unmark_complete(out)  # a complete output being recomputed is not complete any more
    os.makedirs(os.path.join(out, ckpt.PARTIALS), exist_ok=True)
    ckpt.write_run(out, run_info)
    return None


def _complete_config(out: str) -> dict:
    import zarr

    return dict(zarr.open_group(out, mode="r").attrs).get("config", {})


def _density_counts(g) -> tuple[int, int, int]:
    """Dead, rare and dense features of an output (the site's filters, ``hvrt.site``
    thresholds), read a slice of ``feature`` at a time."""
    from hvrt_dask.sae.site.index import filter_mask

    rare_t, dense_t = float(config.get("site.rare-density")), float(config.get("site.dense-density"))
    counts = [0, 0, 0]
    n, step = g["density"].shape[0], 1 << 16
    for a in range(0, n, step):
        cols = {"dead": g["dead"][a : a + step], "density": g["density"][a : a + step]}
        for i, name in enumerate(("dead", "rare", "dense")):
            counts[i] += int(filter_mask(cols, name, rare_t, dense_t).sum())
    return counts[0], counts[1], counts[2]


def _disk_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def _parameters(top_k, prefix, suffix, batch_size, split_every, max_in_flight, feature_block, histogram_bins,
                histogram_range, nonfinite, device, range_examples=None, seed=None) -> dict:
    """Validated parameters, defaults from ``hvrt.extract`` (the seed from ``hvrt.seed-default``)."""
    cfg = config.get("extract", {}) or {}

    def pick(value, key, default):
        return cfg.get(key, default) if value is None else value

    p = {
        "top_k": _check_int("top_k", pick(top_k, "top-k", 100), 1),
        "prefix": _check_int("prefix", pick(prefix, "prefix", 25), 0),
        "suffix": _check_int("suffix", pick(suffix, "suffix", 25), 0),
        "split_every": _check_int("split_every", pick(split_every, "split-every", 8), 2),
        "max_in_flight": _check_int("max_in_flight", pick(max_in_flight, "max-in-flight", 4), 1),
        "feature_block": _check_int("feature_block", pick(feature_block, "feature-block", 16384), 1),
        "range_examples": _check_int("range_examples", pick(range_examples, "range-examples", 5), 0),
        "seed": _check_int("seed", config.get("seed-default", 0) if seed is None else seed, 0),
        "torch_threads": cfg.get("torch-threads", "auto"),
        "device": pick(device, "device", None),
    }
    bs = pick(batch_size, "batch-size", "auto")
    p["batch_size"] = bs if bs == "auto" else _check_int("batch_size", bs, 1)
    n_bins = _check_int("histogram_bins", pick(histogram_bins, "histogram-bins", 64), 2)
    p["edges"] = _stats.histogram_edges(n_bins, tuple(pick(histogram_range, "histogram-range", [-4, 4])))
    nf = pick(nonfinite, "nonfinite", "raise")
    if nf not in ("raise", "mask"):
        raise ValueError(f"nonfinite must be 'raise' or 'mask', got {nf!r}")
    p["nonfinite"] = nf
    return p


#: Parameters :func:`check_parameters` validates (the tunables of :func:`extract_features`).
PARAMETERS = ("top_k", "prefix", "suffix", "batch_size", "split_every", "max_in_flight", "chunk_samples",
              "feature_block", "histogram_bins", "histogram_range", "nonfinite", "device", "range_examples", "seed")


def check_parameters(**params: Any) -> dict:
    """Validate extraction parameters exactly as :func:`extract_features` does, without running.

    Unset parameters take their ``hvrt.extract`` defaults. Used by the CLI's ``validate`` so that
    a config is refused before any cluster starts.

    Raises
    ------
    TypeError, ValueError
        Naming the parameter (an unknown name is a TypeError).
    """
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise TypeError(f"unknown extraction parameter(s) {unknown}; known: {list(PARAMETERS)}")
    if params.get("chunk_samples") is not None:
        _check_int("chunk_samples", params["chunk_samples"], 1)
    return _parameters(*(params.get(n) for n in PARAMETERS if n != "chunk_samples"))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


__all__ = ["ExtractionResult", "check_parameters", "extract_features"]
