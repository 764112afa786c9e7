"""First-pass tasks: read a sample chunk, (topk) its token thresholds over all feature
blocks, then one partial per (sample chunk, feature block), merged per block in a tree."""

from __future__ import annotations

import time

import numpy as np

from hvrt_dask.sae import range_examples as _rx
from hvrt_dask.sae import stats as _stats
from hvrt_dask.sae import topk as _topk
from hvrt_dask.sae.extract import checkpoint as ckpt
from hvrt_dask.sae.extract.params import Block, Chunk, RunSpec
from hvrt_dask.sae.extract.worker import get_encoder, worker_address
from hvrt_dask.sae.store import ChunkReadError, open_store, read_chunk as read_store_chunk

META_KEYS = ("chunks", "workers", "batch_size", "seconds", "read_seconds", "n_nonfinite_masked")


class NonFiniteActivationError(ValueError):
    """A valid token of the activation store holds NaN or inf (message names chunk and sample)."""


_STORES: dict[tuple[str, float], object] = {}


def _open(store: str):
    """The opened store, once per process while its metadata file is unchanged."""
    import os

    key = (store, os.stat(os.path.join(store, "zarr.json")).st_mtime)
    st = _STORES.get(key)
    if st is None:
        _STORES.clear()
        st = _STORES[key] = open_store(store, require_complete=False)
    return st


def read_samples(store: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations, token ids and mask of samples ``[start, stop)``.

    Whole store chunks are read (Zarr decodes whole chunks anyway) and each is checked
    against the checksum its writer recorded (:func:`hvrt_dask.sae.store.read_chunk`).
    """
    st = _open(store)
    cs = st.chunk_samples
    parts = [read_store_chunk(st, i) for i in range(start // cs, -(-stop // cs))]
    a = start - (start // cs) * cs
    out = [np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in range(3)]
    return tuple(x[a : a + stop - start] for x in out)  # type: ignore[return-value]


def _check_finite(acts: np.ndarray, mask: np.ndarray, start: int, cid: int, mode: str) -> tuple[np.ndarray, int]:
    finite = np.isfinite(acts).all(axis=2)
    bad = mask & ~finite
    if not bad.any():
        return mask, 0
    if mode == "raise":
        s, t = np.argwhere(bad)[0]
        raise NonFiniteActivationError(
            f"non-finite activation (NaN/inf) in chunk {cid}: sample {start + int(s)}, position {int(t)} "
            f"({int(bad.sum())} such tokens in this chunk); pass nonfinite='mask' to skip them"
        )
    return mask & finite, int(bad.sum())


def read_chunk(run: RunSpec, chunk: Chunk) -> dict:
    """Read task: one sample chunk's activations and validity mask, verified and checked for NaN/inf.

    Separate from the compute tasks so that a worker reads the next chunks on its spare
    threads while its device encodes (every feature block of the chunk reuses this result).
    """
    t0 = time.perf_counter()
    try:
        acts, _, mask = read_samples(run.store, chunk.start, chunk.stop)
    except ChunkReadError:
        raise
    except Exception as exc:
        raise ChunkReadError(f"chunk {chunk.cid} (samples {chunk.start}..{chunk.stop - 1}) of activation store "
                             f"{run.store!r} could not be read: {type(exc).__name__}: {exc}") from exc
    mask, n_masked = _check_finite(acts, np.asarray(mask, bool), chunk.start, chunk.cid, run.nonfinite)
    return {"acts": acts, "mask": mask, "n_masked": n_masked, "read_s": time.perf_counter() - t0}


def _batches(run: RunSpec, data: dict, width: int, enc, step) -> int:
    from hvrt_dask.sae.encode import resolve_batch_size, run_batches

    s, t, d = data["acts"].shape
    return run_batches(s, resolve_batch_size(run.batch_size, t, d, width, enc.device), step)


def token_thresholds(run: RunSpec, chunk: Chunk, blocks: tuple[Block, ...], data: dict, fingerprint: str) -> dict:
    """topk threshold task: every token's k-th largest key over all feature blocks
    (:mod:`hvrt_dask.sae.architectures`), saved to ``partials/``; returns its handle."""
    import torch

    acts = data["acts"]
    s, t, d = acts.shape
    running = [None] * s  # per batch of samples: the running top-k keys of its tokens
    bounds: list[tuple[int, int]] = []
    for blk in blocks:
        enc = get_encoder(run.sae_path, run.sae_hash, run.device, blk.lo, blk.hi)

        def step(a: int, b: int) -> None:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(acts[a:b])).reshape(-1, d)
                running[a] = enc.kth_keys(x, running[a])

        if not bounds:  # the first block fixes the batches (later blocks reuse them)
            def first(a: int, b: int) -> None:
                step(a, b)
                bounds.append((a, b))

            _batches(run, data, blk.width, enc, first)
        else:
            for a, b in bounds:
                step(a, b)
    keys = np.empty((s, t), np.int64)
    for a, b in bounds:
        keys[a:b] = running[a].amin(dim=-1).view(b - a, t).cpu().numpy()
    return ckpt.save_thresholds(run.partials_dir, chunk.cid, keys, fingerprint)


def extract_block(run: RunSpec, chunk: Chunk, block: Block, data: dict, thresholds, fingerprint: str) -> dict:
    """First-pass task: the partial (top-k + statistics + range examples + meta) of one
    (sample chunk, feature block), checkpointed to ``partials/`` with its done marker; returns its handle."""
    import torch

    t0 = time.perf_counter()
    enc = get_encoder(run.sae_path, run.sae_hash, run.device, block.lo, block.hi)
    dev = enc.device
    acts, mask, n_masked = data["acts"], data["mask"], data["n_masked"]
    keys = ckpt.load_thresholds(thresholds)
    s, t, d = acts.shape
    f = block.width
    # per-sample max / first argmax per feature, kept on the device until the chunk's top-k
    smax = torch.zeros((s, f), dtype=torch.float32, device=dev)
    sarg = torch.zeros((s, f), dtype=torch.int32, device=dev)
    acc = _stats.StatsAccumulator(f, np.asarray(run.edges, np.float32), dev)
    zbuf = [None]  # latents buffer, reused by every batch

    def step(a: int, b: int) -> None:
        nb = b - a
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(acts[a:b])).to(dev).reshape(-1, d)
            m = torch.from_numpy(mask[a:b]).to(dev).reshape(-1)
            tk = None if keys is None else torch.from_numpy(keys[a:b].reshape(-1)).to(dev)
            if zbuf[0] is None or zbuf[0].numel() < nb * t * f:
                zbuf[0] = torch.empty(nb * t * f, dtype=torch.float32, device=dev)
            z = enc.encode(x, out=zbuf[0][: nb * t * f].view(nb * t, f), token_key=tk)  # [nb * t, f], >= 0
            # Everything after the encode works on the nonzero latents only (sparse):
            # statistics, and each sample's max per feature with its first position.
            flat = z.view(-1)
            idx = flat.nonzero().squeeze(1)
            v = flat[idx]
            row = idx // f
            feat = idx - row * f
            all_valid = bool(m.all())
            if not all_valid:  # padding never counts
                keep = m[row]
                row, feat, v = row[keep], feat[keep], v[keep]
            dense = None
            if dev.type != "cpu":
                if not all_valid:
                    z[~m] = 0
                dense = z
            delta = acc.delta(feat, v, dense)
            sample = row // t
            pos = row - sample * t
            key = sample * f + feat
            mx = torch.zeros(nb * f, dtype=torch.float32, device=dev).scatter_reduce_(0, key, v, "amax")
            first = torch.where(v == mx[key], pos, torch.full_like(pos, t))
            am = torch.full((nb * f,), t, dtype=torch.int64, device=dev).scatter_reduce_(0, key, first, "amin")
            smax[a:b] = mx.view(nb, f)
            sarg[a:b] = am.clamp_(max=t - 1).view(nb, f).to(torch.int32)
            acc.add(delta, int(m.sum()))

    def on_oom() -> None:
        zbuf[0] = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    from hvrt_dask.sae.encode import resolve_batch_size, run_batches

    bs = run_batches(s, resolve_batch_size(run.batch_size, t, d, f, dev), step, on_oom)
    kk = min(run.top_k, s)  # a chunk holds at most one example per sample: store only kk slots
    ids = np.arange(chunk.start, chunk.stop, dtype=np.int64)
    if dev.type == "cpu":
        smax_np, sarg_np = smax.numpy(), sarg.numpy()
        part = _topk.chunk(smax_np, sarg_np, ids, kk)
    else:
        part = _topk.chunk_sorted(smax, sarg, chunk.start, kk)
        smax_np = smax.cpu().numpy()
        sarg_np = sarg.cpu().numpy() if run.range_m else None
    part.update(acc.result(smax_np))
    if run.range_m:  # examples across the activation range, from the same per-sample maxima
        part.update(_rx.chunk_partial_sparse(smax_np, sarg_np, ids, np.asarray(run.edges, np.float32), run.range_m,
                                             run.seed, feature_offset=block.lo))
    part.update(
        chunks=np.array([chunk.cid], np.int64),
        workers=np.array([worker_address()]),
        batch_size=np.int64(bs),
        seconds=np.float64(time.perf_counter() - t0),
        read_seconds=np.float64(data["read_s"]),
        n_nonfinite_masked=np.int64(n_masked),
    )
    # the partial lives on disk; the task's result is its handle, so a worker never holds
    # finished partials in memory while they wait for their tree node
    return ckpt.save_partial(run.partials_dir, chunk.cid, block.j, part, fingerprint)


def combine_partials(k: int, *parts: dict) -> dict:
    """Exact merge of partials (or handles), folded left to right.

    One partial is loaded at a time, so memory holds two whatever the fan-in; float64 sums
    are added in argument order (the tree's fixed order), top-k selection is order-free.
    """
    acc = ckpt.resolve(parts[0])
    for p in parts[1:]:
        acc = _merge_two(k, acc, ckpt.resolve(p))
    return acc


def combine_to_file(out: str, k: int, *parts: dict) -> dict:
    """Tree-node task: :func:`combine_partials` saved to ``out``; returns its handle."""
    return ckpt.save_npz(out, combine_partials(k, *parts))


def _merge_two(k: int, *parts: dict) -> dict:
    parts = list(parts)
    n = sum(int(p["n_samples"]) for p in parts)
    out = _topk.combine([{key: p[key] for key in _topk.KEYS} for p in parts], min(k, n))
    out.update(_stats.combine(parts))
    if _rx.KEYS[0] in parts[0]:  # order-free: any fan-in or resume gives the same arrays
        out.update(_rx.merge_sparse([{key: p[key] for key in (*_rx.KEYS, _rx.SPARSE_SHAPE, _rx.SPARSE_INDEX) if key in p}
                                     for p in parts]))
    out["chunks"] = np.sort(np.concatenate([p["chunks"] for p in parts]))
    out["workers"] = np.unique(np.concatenate([p["workers"] for p in parts]))
    out["batch_size"] = np.int64(min(int(p["batch_size"]) for p in parts))
    out["seconds"] = np.float64(sum(float(p["seconds"]) for p in parts))
    out["read_seconds"] = np.float64(sum(float(p["read_seconds"]) for p in parts))
    out["n_nonfinite_masked"] = np.int64(sum(int(p["n_nonfinite_masked"]) for p in parts))
    return out
