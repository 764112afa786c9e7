"""Exact SAE feature extraction: stream activation-store chunks through (GPU) workers.

Entry point: :func:`extract_features`. See ``docs/extraction.md`` for the input contract,
the output layout and the exactness guarantees.

Flow
----
1. Validate everything (store, SAE, parameters, output path) before writing anything.
2. First pass: one task per chunk of samples (futures, at most ``max_in_flight`` at a time,
   ``resources={"GPU": 1}`` when workers advertise a GPU). A task encodes its chunk in device
   batches and returns a small numpy partial (per-feature top-k + statistics); the worker
   also checkpoints it to ``<out>/partials/`` with a done marker.
3. Partials are merged by a tree reduction whose shape is fixed by chunk ids and
   ``split_every`` (combine tasks are submitted as soon as a group is complete).
4. Second pass: re-encode only the samples holding top examples, and only their features,
   to gather activations over each example's context window.
5. Write the xarray/Zarr output, then the completion marker last.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvrt_dask._client import resolve_client
from hvrt_dask import config
from hvrt_dask.sae import stats as _stats
from hvrt_dask.sae import topk as _topk
from hvrt_dask.sae.store import ActivationStore, open_store
from hvrt_dask.sae.weights import SAE, load_sae

log = logging.getLogger(__name__)

PARTIALS = "partials"
#: Most examples handled by one context-window task.
WINDOW_TASK_EXAMPLES = 524288
#: Tile widths (positions per pseudo-sample) the window pass considers besides the whole sequence.
WINDOW_TILES = (64, 32, 16, 8)
#: Columns charged per encoded row in the window pass's work model (gather, normalisation, small matmuls).
WINDOW_ROW_OVERHEAD = 128
#: Working memory of one window-pass device step (bytes).
WINDOW_BUDGET = 256 << 20
RUN_FILE = "run.json"
META_KEYS = ("chunks", "workers", "batch_size", "seconds", "read_seconds", "n_nonfinite_masked")
# run.json keys that must match for a resume to reuse partials
RESUME_KEYS = ("store", "n_samples", "seq_len", "d_in", "chunk_samples", "sae_hash", "top_k", "histogram_edges", "nonfinite")


class NonFiniteActivationError(ValueError):
    """A valid token of the activation store holds NaN or inf (message names chunk and sample)."""


class ChunkReadError(ValueError):
    """A chunk of the activation store could not be read (message names the chunk)."""


# --------------------------------------------------------------------------------------
# worker side: encoder cache and plugin
# --------------------------------------------------------------------------------------

_ENCODERS: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


def get_encoder(sae_path: str, sae_hash: str, device: str | None = None):
    """The worker's :class:`~hvrt_dask.sae.encode.TorchEncoder` for an SAE (loaded once per process).

    Keyed by path, content hash and device; a file whose hash changed since the run started
    is an error rather than a silent mix of two SAEs.
    """
    from hvrt_dask.sae.encode import TorchEncoder, resolve_device

    dev = str(resolve_device(device))
    key = (os.path.abspath(sae_path), sae_hash, dev)
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is None:
            sae = load_sae(sae_path)
            if sae.content_hash != sae_hash:
                raise ValueError(f"SAE {sae_path!r} changed during the run (hash {sae.content_hash[:12]} != {sae_hash[:12]})")
            enc = TorchEncoder(sae, dev)
            _ENCODERS[key] = enc
    return enc


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a hard dependency
    WorkerPlugin = object  # type: ignore[misc,assignment]


class SAEWorkerPlugin(WorkerPlugin):
    """Loads the SAE once per worker and sets torch's thread count deliberately.

    Nanny workers start with ``OMP_NUM_THREADS=1``; ``torch_threads`` maps a host to the
    intra-op thread count for workers on it (``None``: leave torch alone).
    """

    def __init__(self, sae_path: str, sae_hash: str, device: str | None, torch_threads: dict[str, int] | None):
        self.sae_path, self.sae_hash, self.device = sae_path, sae_hash, device
        self.torch_threads = torch_threads or {}
        self.name = f"hvrt-sae-{sae_hash[:16]}"

    def setup(self, worker) -> None:
        import torch

        host = worker.address.rsplit(":", 1)[0]
        n = self.torch_threads.get(host)
        if n:
            torch.set_num_threads(int(n))
        # GPU-less workers of a GPU cluster never run extraction tasks: load lazily there.
        if self.device is None and "GPU" not in (worker.state.total_resources or {}) and torch.cuda.is_available():
            return
        get_encoder(self.sae_path, self.sae_hash, self.device)


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def _partial_path(partials_dir: str, cid: int) -> tuple[str, str]:
    base = os.path.join(partials_dir, f"chunk-{cid:07d}")
    return base + ".npz", base + ".done"


def _node_path(partials_dir: str, level: int, idx: int) -> str:
    return os.path.join(partials_dir, f"node-{level:02d}-{idx:07d}.npz")


def _save_npz(fn: str, partial: dict) -> dict:
    """Write a partial atomically; returns its handle ``{"ref": fn}``."""
    tmp = f"{fn}.tmp-{os.getpid()}-{threading.get_ident()}.npz"
    np.savez(tmp, **partial)
    os.replace(tmp, fn)
    return {"ref": fn}


def save_partial(partials_dir: str, cid: int, partial: dict) -> dict:
    """Write a chunk partial atomically, then its done marker; returns its handle."""
    fn, done = _partial_path(partials_dir, cid)
    ref = _save_npz(fn, partial)
    with open(done, "w") as f:
        f.write(json.dumps({"chunk": cid, "worker": str(partial["workers"][0])}))
    return ref


def load_partial(path: str) -> dict:
    """Read a partial written by :func:`save_partial`."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _resolve(part: dict) -> dict:
    """A partial from a partial or a handle ``{"ref": path}``."""
    return load_partial(part["ref"]) if "ref" in part else part


@contextmanager
def _reading(store_path: str, cid: int, start: int, stop: int, what: str = ""):
    """Turn any read failure inside the block into a :class:`ChunkReadError` naming the chunk."""
    try:
        yield
    except Exception as exc:
        raise ChunkReadError(
            f"{what}chunk {cid} (samples {start}..{stop - 1}) of activation store {store_path!r} could not be read: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _read_chunk(store_path: str, cid: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Activations and validity mask of samples ``start..stop`` (token ids: :func:`window_tokens`)."""
    with _reading(store_path, cid, start, stop):
        st = open_store(store_path, require_complete=False)
        acts = st.activations[start:stop]
        mask = np.asarray(st.mask[start:stop], dtype=bool)
    return acts, mask


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


def read_chunk(spec: dict) -> dict:
    """Read task: one chunk's activations and validity mask, checked for NaN/inf.

    Separate from :func:`extract_chunk` so that a worker reads the next chunks on its spare
    threads while its GPU encodes the current one (the compute task then finds the data in
    the same worker's memory).
    """
    t0 = time.perf_counter()
    cid, start, stop = spec["chunk"], spec["start"], spec["stop"]
    acts, mask = _read_chunk(spec["store"], cid, start, stop)
    mask, n_masked = _check_finite(acts, mask, start, cid, spec["nonfinite"])
    return {"acts": acts, "mask": mask, "n_masked": n_masked, "read_s": time.perf_counter() - t0}


def extract_chunk(spec: dict, data: dict | None = None) -> dict:
    """First-pass task: the partial (top-k + statistics + meta) of one chunk of samples.

    ``data`` is the result of :func:`read_chunk` (read here when None).
    """
    import torch

    from hvrt_dask.sae.encode import resolve_batch_size, run_batches

    t0 = time.perf_counter()
    cid, start, stop = spec["chunk"], spec["start"], spec["stop"]
    enc = get_encoder(spec["sae_path"], spec["sae_hash"], spec["device"])
    dev = enc.device
    if data is None:
        data = read_chunk(spec)
    acts, mask, n_masked = data["acts"], data["mask"], data["n_masked"]
    s, t, d = acts.shape
    f = enc.d_sae
    # per-sample max / first argmax per feature, kept on the device until the chunk's top-k
    smax = torch.zeros((s, f), dtype=torch.float32, device=dev)
    sarg = torch.zeros((s, f), dtype=torch.int32, device=dev)
    acc = _stats.StatsAccumulator(f, np.asarray(spec["edges"], np.float32), dev)
    bs = resolve_batch_size(spec["batch_size"], t, d, f, dev)

    zbuf = [None]  # latents buffer, reused by every batch

    def step(a: int, b: int) -> None:
        nb = b - a
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(acts[a:b])).to(dev).reshape(-1, d)
            m = torch.from_numpy(mask[a:b]).to(dev).reshape(-1)
            if zbuf[0] is None or zbuf[0].numel() < nb * t * f:
                zbuf[0] = torch.empty(nb * t * f, dtype=torch.float32, device=dev)
            z = enc.encode(x, out=zbuf[0][: nb * t * f].view(nb * t, f))  # [nb * t, f], all latents >= 0
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

    bs = run_batches(s, bs, step, on_oom)
    if dev.type == "cpu":
        smax_np = smax.numpy()
        part = _topk.chunk(smax_np, sarg.numpy(), np.arange(start, stop, dtype=np.int64), spec["top_k"])
    else:
        part = _topk.chunk_sorted(smax, sarg, start, spec["top_k"])
        smax_np = smax.cpu().numpy()
    part.update(acc.result(smax_np))
    part.update(
        chunks=np.array([cid], np.int64),
        workers=np.array([_worker_address()]),
        batch_size=np.int64(bs),
        seconds=np.float64(time.perf_counter() - t0),
        read_seconds=np.float64(data["read_s"]),
        n_nonfinite_masked=np.int64(n_masked),
    )
    if spec.get("partials_dir"):
        # the partial lives on disk; the task's result is its handle, so a worker never holds
        # finished chunks' partials in memory while they wait for their tree node
        return save_partial(spec["partials_dir"], cid, part)
    return part


def combine_partials(*parts: dict) -> dict:
    """Exact merge of partials (or handles), folded left to right.

    One partial is loaded at a time, so memory holds two whatever the fan-in; float64 sums
    are added in argument order (the tree's fixed order), top-k selection is order-free.
    """
    acc = _resolve(parts[0])
    for p in parts[1:]:
        acc = _merge_two(acc, _resolve(p))
    return acc


def combine_to_file(out: str, *parts: dict) -> dict:
    """Tree-node task: :func:`combine_partials` saved to ``out``; returns its handle."""
    return _save_npz(out, combine_partials(*parts))


def _merge_two(*parts: dict) -> dict:
    parts = list(parts)
    out = _topk.combine([{k: p[k] for k in _topk.KEYS} for p in parts])
    out.update(_stats.combine(parts))
    out["chunks"] = np.sort(np.concatenate([p["chunks"] for p in parts]))
    out["workers"] = np.unique(np.concatenate([p["workers"] for p in parts]))
    out["batch_size"] = np.int64(min(int(p["batch_size"]) for p in parts))
    out["seconds"] = np.float64(sum(float(p["seconds"]) for p in parts))
    out["read_seconds"] = np.float64(sum(float(p["read_seconds"]) for p in parts))
    out["n_nonfinite_masked"] = np.int64(sum(int(p["n_nonfinite_masked"]) for p in parts))
    return out


def gather_windows(spec: dict) -> dict:
    """Second-pass task: the feature's activations over the context windows of some examples.

    ``spec`` holds examples of one chunk (``features``, ``samples``, ``positions``). Returns
    ``acts [E, W]`` (float32, NaN outside the sequence or at padding), ``W = prefix + 1 +
    suffix``. (The windows' token ids are gathered by the driver: :func:`window_tokens`.)

    Only the samples holding examples are read, and only window tokens are encoded: the
    examples are grouped into *pseudo-samples*, one per (sample, tile of ``tile`` positions),
    whose rows are the union of their examples' windows (clipped to the sequence). A
    pseudo-sample with few features is encoded against only their encoder columns (one
    batched matmul per step), one with many (or any of a ``topk`` SAE) is encoded fully.
    The tile width minimises the matmul work (:func:`_window_plan`). Each token's latents
    are a per-token computation, so restricting rows and columns never changes them.
    """
    import torch

    from hvrt_dask.sae.encode import scratch_buffer

    cid, start, stop = spec["chunk"], spec["start"], spec["stop"]
    prefix, suffix = spec["prefix"], spec["suffix"]
    feats = np.asarray(spec["features"], np.int64)
    samples = np.asarray(spec["samples"], np.int64)
    pos = np.asarray(spec["positions"], np.int64)
    w = prefix + 1 + suffix
    e = len(feats)
    if e == 0:
        return {"acts": np.full((0, w), np.nan, np.float32)}
    enc = get_encoder(spec["sae_path"], spec["sae_hash"], spec["device"])
    lo, hi = int(samples.min()), int(samples.max()) + 1  # only the samples holding examples
    acts, mask = _read_chunk(spec["store"], cid, max(lo, start), min(hi, stop))
    s_loc = samples - lo
    n, t, d = acts.shape
    plan = _window_plan(s_loc, pos, t, prefix, suffix, enc)
    order, starts, m, ps_sample, r0, rows, full = plan
    invalid = ~_windows(mask, s_loc, pos, prefix, suffix, False)
    out = np.empty((e, w), np.float32)  # every example belongs to one pseudo-sample
    zoff = np.arange(-prefix, suffix + 1)
    rows_in = torch.from_numpy(acts.reshape(n * t, d))
    # pseudo-samples by kind (restricted first), widest first: batches are padded to their
    # widest member, so similar widths go together
    ps_order = np.lexsort((-m, full))
    dev = enc.device
    rb = int(rows.max())
    scratch: dict = {}  # buffers reused by every step (fresh large tensors cost page faults)
    with torch.no_grad():
        a = 0
        while a < len(ps_order):
            is_full = bool(full[ps_order[a]])
            width = enc.d_sae if is_full else int(m[ps_order[a]])
            per_ps = 4 * (rb * d * 3 + (rb * width * 3 if is_full else width * d + rb * width * 2))
            b = min(len(ps_order), a + max(1, WINDOW_BUDGET // per_ps))
            kinds = full[ps_order[a:b]]
            if kinds[-1] != is_full:  # never mix kinds in one step
                b = a + int(np.argmax(kinds != is_full))
            sel = ps_order[a:b]
            a = b
            p = len(sel)
            r = int(rows[sel].max())
            cnt = m[sel]
            within = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)  # column in its pseudo-sample
            ex = order[np.repeat(starts[sel], cnt) + within]  # example ids
            psl = np.repeat(np.arange(p), cnt)  # local pseudo-sample of each example
            # the pseudo-samples' rows (clipped at the sequence end; extra rows are never read)
            src_rows = (ps_sample[sel] * t)[:, None] + np.minimum(r0[sel][:, None] + np.arange(r), t - 1)
            xb = scratch_buffer(scratch, "x", (p * r, d), "cpu", rows_in.dtype)
            torch.index_select(rows_in, 0, torch.from_numpy(src_rows.reshape(-1)), out=xb)
            x = xb.view(p, r, d).to(dev)
            if is_full:
                zc = enc.d_sae
                z = enc.encode(x.reshape(p * r, d), out=scratch_buffer(scratch, "z", (p * r, zc), dev))
                col = feats[ex]
            else:
                zc = int(cnt.max())
                fm = np.zeros((p, zc), np.int64)
                fm[psl, within] = feats[ex]
                z = enc.encode_sample_features(x, torch.from_numpy(fm).to(dev), scratch)
                col = within
            # flat index into z of each window token: positions inside the sequence lie in
            # their pseudo-sample's rows; the others (clamped into z) are invalid anyway
            zi = ((psl * r + pos[ex] - r0[sel][psl]) * zc + col)[:, None] + zoff * zc
            np.clip(zi, 0, z.numel() - 1, out=zi)
            out[ex] = torch.take(z, torch.from_numpy(zi).to(dev)).cpu().numpy()
    out[invalid] = np.nan
    return {"acts": out}


def _windows(rows: np.ndarray, which: np.ndarray, pos: np.ndarray, prefix: int, suffix: int, fill) -> np.ndarray:
    """``rows[which[i], pos[i] - prefix : pos[i] + suffix + 1]`` for every ``i`` (``[E, W]``),
    ``fill`` outside the sequence: sliding windows over the rows padded with ``fill``."""
    import torch

    n, t = rows.shape
    padded = np.full((n, prefix + t + suffix), fill, rows.dtype)
    padded[:, prefix : prefix + t] = rows
    # torch's gather over the unfolded view is ~6x faster than numpy's over sliding_window_view
    win = torch.from_numpy(padded).unfold(1, prefix + 1 + suffix, 1)
    return win[torch.from_numpy(np.asarray(which, np.int64)), torch.from_numpy(np.asarray(pos, np.int64))].numpy()


def window_tokens(st: ActivationStore, samples: np.ndarray, positions: np.ndarray, prefix: int, suffix: int) -> np.ndarray:
    """Token ids of every example's context window (``-1`` outside the sequence and for
    empty slots), in the layout of ``samples``/``positions`` plus a window axis.

    Reads only the ``tokens`` chunks that hold examples (tokens are ``d_in`` times smaller
    than the activations, so the driver does this itself and the window tasks return only
    activations).
    """
    w = prefix + 1 + suffix
    out = np.full(samples.shape + (w,), -1, np.int32)
    live = samples >= 0
    uniq, inv = np.unique(samples[live], return_inverse=True)
    if not len(uniq):
        return out
    cs = st.chunk_samples
    rows = np.empty((len(uniq), st.seq_len), np.int32)
    cuts = np.searchsorted(uniq, np.arange(uniq[0] // cs, uniq[-1] // cs + 2) * cs)
    for j in range(len(cuts) - 1):
        lo, hi = int(cuts[j]), int(cuts[j + 1])
        if lo == hi:
            continue
        a = int(uniq[lo]) // cs * cs
        b = min(a + cs, st.n_samples)
        with _reading(st.path, a // cs, a, b, "tokens of "):
            block = np.asarray(st.tokens[a:b])
        rows[lo:hi] = block[uniq[lo:hi] - a]
    out[live] = _windows(rows, inv, positions[live], prefix, suffix, -1)
    return out


def _window_plan(s_loc, pos, t, prefix, suffix, enc):
    """Pseudo-samples of the window pass at the tile width with the least matmul work.

    Returns ``order`` (examples grouped by pseudo-sample), per pseudo-sample ``starts`` (into
    ``order``), ``m`` (examples), ``sample``, first row ``r0``, ``rows`` and ``full`` (encode
    all features). Work of a pseudo-sample: ``rows * (width + WINDOW_ROW_OVERHEAD)``, with
    ``width`` = ``d_sae`` when fully encoded, else ``m`` (smaller tiles encode fewer rows per
    example but more rows in all, each with a fixed cost).
    """
    best = None
    for tile in (t, *[g for g in WINDOW_TILES if g < t]):
        key = s_loc * (-(-t // tile)) + pos // tile
        order = np.argsort(key, kind="stable")
        k = key[order]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        m = np.diff(np.r_[starts, len(k)])
        ps = pos[order]
        r0 = np.maximum(np.minimum.reduceat(ps, starts) - prefix, 0)
        rows = np.minimum(np.maximum.reduceat(ps, starts) + suffix + 1, t) - r0
        full = np.broadcast_to(enc.full_encode_cheaper(m), m.shape)
        cost = int((rows * (np.where(full, enc.d_sae, m) + WINDOW_ROW_OVERHEAD)).sum())
        if best is None or cost < best[0]:
            best = (cost, (order, starts, m, s_loc[order[starts]], r0, rows, full))
    return best[1]


# --------------------------------------------------------------------------------------
# driver helpers
# --------------------------------------------------------------------------------------


class _Done:
    """A finished 'future' for the in-process executor."""

    def __init__(self, value=None, exc: BaseException | None = None):
        self._value, self._exc = value, exc

    def result(self):
        if self._exc is not None:
            raise self._exc
        return self._value


class _Executor:
    """Submit tasks to a distributed client, or run them in this process (``client=None``)."""

    def __init__(self, client, resources: dict | None):
        self.client, self.resources = client, resources

    def submit(self, fn, *args, gpu: bool = False, key: str | None = None):
        if self.client is None:
            try:
                return _Done(fn(*[a.result() if isinstance(a, _Done) else a for a in args]))
            except Exception as exc:  # surfaced by result(), like a distributed future
                return _Done(exc=exc)
        kw = {"pure": False}
        if key:
            kw["key"] = f"{key}-{time.time_ns()}"
        if gpu and self.resources:
            kw["resources"] = self.resources
        return self.client.submit(fn, *args, **kw)

    def run_bounded(self, items: list, make, limit: int, on_done) -> None:
        """Submit ``make(item)`` for every item, at most ``limit`` at a time; ``on_done(item, fut)``."""
        if self.client is None:
            for it in items:
                on_done(it, make(it))
            return
        from distributed import as_completed

        queue = deque(items)
        owner = {}
        ac = as_completed()
        for _ in range(min(limit, len(queue))):
            it = queue.popleft()
            fut = make(it)
            owner[fut.key] = it
            ac.add(fut)
        try:
            for fut in ac:
                it = owner.pop(fut.key)
                if fut.status == "error":
                    fut.result()  # raises the task's exception
                on_done(it, fut)
                if queue:
                    nxt = queue.popleft()
                    nf = make(nxt)
                    owner[nf.key] = nxt
                    ac.add(nf)
        except BaseException:
            for f in list(ac.futures):
                f.cancel()
            raise


class _StreamingTree:
    """A fixed-shape tree reduction fed leaf by leaf (in any order).

    Leaves are indexed 0..n-1; level ``L+1`` node ``j`` combines level-``L`` nodes
    ``j*split_every .. (j+1)*split_every - 1``. A node is submitted as soon as its children
    exist, so the tree shape never depends on arrival order.
    """

    def __init__(self, n: int, split_every: int, make_node):
        self.se, self.make_node = split_every, make_node
        self.sizes = [n]
        while self.sizes[-1] > 1:
            self.sizes.append(-(-self.sizes[-1] // split_every))
        self.slots: list[dict[int, Any]] = [dict() for _ in self.sizes]

    def put(self, level: int, idx: int, item) -> None:
        self.slots[level][idx] = item
        if level == len(self.sizes) - 1:
            return
        parent = idx // self.se
        lo, hi = parent * self.se, min((parent + 1) * self.se, self.sizes[level])
        if all(i in self.slots[level] for i in range(lo, hi)):
            kids = [self.slots[level].pop(i) for i in range(lo, hi)]
            node = kids[0] if len(kids) == 1 else self.make_node(level + 1, parent, kids)
            self.put(level + 1, parent, node)

    def root(self):
        """The root's value (a partial or a handle)."""
        r = self.slots[-1][0]
        return r.result() if hasattr(r, "result") else r


class _Progress:
    """Chunks and samples done, samples/s, tokens/s and ETA on one terminal line."""

    def __init__(self, n_chunks: int, n_samples: int, seq_len: int, enabled: bool):
        self.n_chunks, self.n_samples, self.seq_len, self.enabled = n_chunks, n_samples, seq_len, enabled
        self.chunks = self.samples = self.skipped = 0
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.widget = None
        if enabled and _in_notebook():
            try:
                import ipywidgets
                from IPython.display import display

                self.widget = ipywidgets.IntProgress(min=0, max=n_chunks, description="extract")
                self.label = ipywidgets.Label()
                display(ipywidgets.HBox([self.widget, self.label]))
            except ImportError:
                self.widget = None

    def update(self, n_samples: int, resumed: bool = False, force: bool = False) -> None:
        self.chunks += 1
        self.samples += n_samples
        if resumed:
            self.skipped += n_samples
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.5 and not force and self.chunks < self.n_chunks):
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        rate = (self.samples - self.skipped) / el
        eta = (self.n_samples - self.samples) / rate if rate > 0 else float("nan")
        text = (
            f"chunks {self.chunks}/{self.n_chunks}  samples {self.samples}/{self.n_samples}  "
            f"{rate:,.1f} samples/s  {rate * self.seq_len:,.0f} tokens/s  ETA {eta:,.0f} s"
        )
        if self.widget is not None:
            self.widget.value = self.chunks
            self.label.value = text
        else:
            width = 30
            done = int(width * self.chunks / max(self.n_chunks, 1))
            print(f"\r[{'#' * done}{'.' * (width - done)}] {text}", end="", file=sys.stderr, flush=True)
            if self.chunks >= self.n_chunks:
                print(file=sys.stderr, flush=True)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return ip is not None and "IPKernelApp" in ip.config
    except Exception:
        return False


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)




def _gpu_resources(client) -> dict | None:
    if client is None:
        return None
    workers = client.scheduler_info(n_workers=-1)["workers"] if _accepts_n_workers(client) else client.scheduler_info()["workers"]
    if any((w.get("resources") or {}).get("GPU", 0) >= 1 for w in workers.values()):
        return {"GPU": 1}
    return None


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _torch_threads(client, setting) -> dict[str, int] | None:
    """Intra-op torch threads per host: ``"auto"`` = cores of the host / worker processes on it."""
    if client is None or setting in (None, "none"):
        return None
    workers = client.scheduler_info(n_workers=-1)["workers"] if _accepts_n_workers(client) else client.scheduler_info()["workers"]
    hosts: dict[str, int] = {}
    for addr in workers:
        h = addr.split("://")[-1].rsplit(":", 1)[0]
        hosts[h] = hosts.get(h, 0) + 1
    out = {}
    for addr, w in workers.items():
        h_full = addr.rsplit(":", 1)[0]
        h = addr.split("://")[-1].rsplit(":", 1)[0]
        out[h_full] = int(setting) if setting != "auto" else max(1, (os.cpu_count() or 1) // hosts[h])
    return out


# --------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------


@dataclass
class ExtractionResult:
    """What :func:`extract_features` returns.

    Attributes
    ----------
    path : str
        The output Zarr store (complete).
    batch_size : int
        The resolved device batch size (smallest used by any chunk after OOM halving).
    n_chunks, n_resumed : int
        Chunks in the run and chunks taken from checkpoints.
    workers : list of str
        Addresses of the workers that ran extraction tasks (``"local"`` in-process).
    timings : dict
        Seconds per phase and throughput.
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
    histogram_bins: int | None = None,
    histogram_range: tuple[float, float] | None = None,
    nonfinite: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    client=None,
    device: str | None = None,
    progress: bool = True,
    _fail_after: int | None = None,
) -> ExtractionResult:
    """Extract exact per-feature top-k examples and statistics of an SAE over an activation store.

    Parameters
    ----------
    store : path or ActivationStore
        The activation store (:mod:`hvrt_dask.sae.store`); must be complete.
    sae : path or SAE
        SAELens directory (``cfg.json`` + ``sae_weights.safetensors``). Workers load it from
        this path once each (the weights never travel inside tasks).
    out : path
        Output Zarr store (see :mod:`hvrt_dask.sae.output`). Refused if it exists unless
        ``resume`` or ``overwrite``.
    top_k : int, default ``extract.top-k`` (100)
        Examples per feature (one per sample, ranked by the sample's max activation).
    prefix, suffix : int, default 25/25
        Context window around each example's max position.
    batch_size : int or "auto", default "auto"
        Samples per device step; "auto" from free device memory (RAM on CPU), halved on OOM.
    split_every : int, default 8
        Fan-in of the tree reduction.
    max_in_flight : int, default 4
        Chunk tasks submitted at once.
    chunk_samples : int, optional
        Samples per task (default: the store's chunk size).
    histogram_bins, histogram_range : optional
        Histogram bin count and log10 range of the inner edges (fixed before the pass).
    nonfinite : {"raise", "mask"}, default "raise"
        NaN/inf at a valid token raises naming the chunk and sample, or the token is masked.
    resume : bool
        Continue an interrupted run in ``out`` from its checkpointed chunks.
    overwrite : bool
        Delete ``out`` first.
    client : distributed.Client, optional
        Defaults to the current default client; without one, tasks run in this process.
    device : str, optional
        Torch device for tasks; default CUDA when the worker has one, else CPU.
    progress : bool
        Print a progress line (a widget in Jupyter) and the dashboard link.

    Returns
    -------
    ExtractionResult
    """
    t_start = time.perf_counter()
    cfg = config.get("extract", {}) or {}
    top_k = _check_int("top_k", cfg.get("top-k", 100) if top_k is None else top_k, 1)
    prefix = _check_int("prefix", cfg.get("prefix", 25) if prefix is None else prefix, 0)
    suffix = _check_int("suffix", cfg.get("suffix", 25) if suffix is None else suffix, 0)
    split_every = _check_int("split_every", cfg.get("split-every", 8) if split_every is None else split_every, 2)
    max_in_flight = _check_int("max_in_flight", cfg.get("max-in-flight", 4) if max_in_flight is None else max_in_flight, 1)
    batch_size = cfg.get("batch-size", "auto") if batch_size is None else batch_size
    if batch_size != "auto":
        batch_size = _check_int("batch_size", batch_size, 1)
    n_bins = _check_int("histogram_bins", cfg.get("histogram-bins", 64) if histogram_bins is None else histogram_bins, 2)
    hrange = tuple(cfg.get("histogram-range", [-4, 4]) if histogram_range is None else histogram_range)
    edges = _stats.histogram_edges(n_bins, hrange)
    nonfinite = cfg.get("nonfinite", "raise") if nonfinite is None else nonfinite
    if nonfinite not in ("raise", "mask"):
        raise ValueError(f"nonfinite must be 'raise' or 'mask', got {nonfinite!r}")
    if device is None:
        device = cfg.get("device")

    st = store if isinstance(store, ActivationStore) else open_store(store)
    sae_obj = sae if isinstance(sae, SAE) else load_sae(sae)
    if sae_obj.d_in != st.d_in:
        raise ValueError(f"SAE d_in={sae_obj.d_in} ({sae_obj.path}) does not match the activation width d_in={st.d_in} of {st.path}")
    chunk_samples = st.chunk_samples if chunk_samples is None else _check_int("chunk_samples", chunk_samples, 1)
    out = os.path.abspath(os.fspath(out))
    partials_dir = os.path.join(out, PARTIALS)
    run_info = {
        "store": os.path.abspath(st.path),
        "n_samples": st.n_samples,
        "seq_len": st.seq_len,
        "d_in": st.d_in,
        "chunk_samples": chunk_samples,
        "sae_path": os.path.abspath(sae_obj.path),
        "sae_hash": sae_obj.content_hash,
        "top_k": top_k,
        "histogram_edges": [float(e) for e in edges],
        "nonfinite": nonfinite,
    }

    # ---- the output path: decided before anything is written
    from hvrt_dask.sae.output import is_complete

    for name, p in (("activation store", os.path.abspath(st.path)), ("SAE", os.path.abspath(sae_obj.path))):
        if os.path.commonpath([out, p]) in (out, p):
            raise ValueError(f"output {out!r} overlaps the {name} {p!r}; choose another output path")
    if os.path.exists(out):
        if overwrite:
            shutil.rmtree(out)
        elif resume:
            prev = _read_run(out)
            for key in RESUME_KEYS:
                if prev.get(key) != run_info[key]:
                    raise ValueError(
                        f"cannot resume {out!r}: {key!r} differs from the interrupted run "
                        f"({prev.get(key)!r} != {run_info[key]!r}); use overwrite=True"
                    )
            if is_complete(out) and prev.get("prefix") == prefix and prev.get("suffix") == suffix:
                from hvrt_dask.sae.output import read_summary

                return ExtractionResult(path=out, **read_summary(out))
        else:
            raise FileExistsError(f"output {out!r} already exists (pass resume=True to continue it or overwrite=True)")

    client = resolve_client(client)
    resources = _gpu_resources(client)
    ex = _Executor(client, resources)
    if progress and client is not None:
        print(f"hvrt_dask extract: dashboard {client.dashboard_link}", file=sys.stderr, flush=True)

    os.makedirs(partials_dir, exist_ok=True)
    run_info.update(prefix=prefix, suffix=suffix)
    _write_run(out, run_info)
    if client is not None:
        threads = _torch_threads(client, cfg.get("torch-threads", "auto"))
        client.register_plugin(SAEWorkerPlugin(os.path.abspath(sae_obj.path), sae_obj.content_hash, device, threads))

    n_chunks = -(-st.n_samples // chunk_samples)
    bounds = [(i, i * chunk_samples, min((i + 1) * chunk_samples, st.n_samples)) for i in range(n_chunks)]
    base_spec = {
        "store": os.path.abspath(st.path),
        "sae_path": os.path.abspath(sae_obj.path),
        "sae_hash": sae_obj.content_hash,
        "device": device,
        "top_k": top_k,
        "batch_size": batch_size,
        "edges": edges,
        "nonfinite": nonfinite,
        "partials_dir": partials_dir,
    }

    # ---- first pass
    t1 = time.perf_counter()
    # tree nodes are tasks that read their children from partials/ and write themselves there:
    # worker memory holds two partials at a time however many chunks wait for a node
    tree = _StreamingTree(
        n_chunks, split_every,
        lambda level, idx, kids: ex.submit(combine_to_file, _node_path(partials_dir, level, idx), *kids, key="hvrt-sae-combine"),
    )
    bar = _Progress(n_chunks, st.n_samples, st.seq_len, progress)
    todo = []
    n_resumed = 0
    for cid, a, b in bounds:
        fn, done = _partial_path(partials_dir, cid)
        if resume and os.path.exists(done) and os.path.exists(fn):
            tree.put(0, cid, {"ref": fn})
            n_resumed += 1
            bar.update(b - a, resumed=True)
        else:
            todo.append((cid, a, b))
    finished = [0]

    def make(item):
        cid, a, b = item
        spec = {**base_spec, "chunk": cid, "start": a, "stop": b}
        if client is None:
            return ex.submit(extract_chunk, spec)
        data = ex.submit(read_chunk, spec, key=f"hvrt-sae-read-{cid}")  # any thread, prefetched
        return ex.submit(extract_chunk, spec, data, gpu=True, key=f"hvrt-sae-chunk-{cid}")

    def on_done(item, fut):
        cid, a, b = item
        fut.result() if client is None else None
        tree.put(0, cid, fut)
        bar.update(b - a)
        finished[0] += 1
        if _fail_after is not None and finished[0] >= _fail_after:
            raise RuntimeError(f"injected failure after {finished[0]} chunks")

    ex.run_bounded(todo, make, max_in_flight, on_done)
    final = _resolve(tree.root())
    for name in os.listdir(partials_dir):  # tree nodes are intermediate (chunk partials stay)
        if name.startswith("node-"):
            os.remove(os.path.join(partials_dir, name))
    t2 = time.perf_counter()

    # ---- second pass: context windows of the top examples
    tk = _topk.aggregate({k: final[k] for k in _topk.KEYS})
    w = prefix + 1 + suffix
    # every example slot is written by exactly one window task; only empty slots are filled here
    win_tokens = window_tokens(st, tk["samples"], tk["positions"], prefix, suffix)
    win_acts = np.empty((sae_obj.d_sae, top_k, w), np.float32)
    empty_slots = tk["samples"] < 0
    win_acts[empty_slots] = np.nan
    fi, ri = np.nonzero(~empty_slots)
    samples = tk["samples"][fi, ri]
    # by sample (hence by chunk); within a sample the feature order is kept
    order = np.argsort(samples, kind="stable")
    fi, ri, samples = fi[order], ri[order], samples[order]
    chunk_of = samples // chunk_samples
    cuts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True]) if len(chunk_of) else np.array([0])
    # one task per chunk, split so that no task handles more than WINDOW_TASK_EXAMPLES examples
    # (bounds a task's memory when few samples hold the examples of many features); splits
    # fall on sample boundaries where they can, so that each sample is encoded once
    groups = []
    for j in range(len(cuts) - 1):
        lo, end = int(cuts[j]), int(cuts[j + 1])
        size = -(-(end - lo) // -(-(end - lo) // WINDOW_TASK_EXAMPLES))  # balanced pieces
        while lo < end:
            hi = min(lo + size, end)
            if hi < end:
                first = int(np.searchsorted(samples, samples[hi], side="left"))
                hi = first if first > lo else hi
            groups.append((int(chunk_of[lo]), lo, hi))
            lo = hi

    def make2(g):
        cid, lo, hi = g
        _, a, b = bounds[cid]
        spec = {
            **base_spec,
            "chunk": cid, "start": a, "stop": b, "prefix": prefix, "suffix": suffix,
            # compact dtypes: these arrays are the only sizeable part of a window task
            "features": fi[lo:hi].astype(np.int32), "samples": samples[lo:hi],
            "positions": tk["positions"][fi[lo:hi], ri[lo:hi]].astype(np.int32),
        }
        return ex.submit(gather_windows, spec, gpu=True, key=f"hvrt-sae-window-{cid}-{lo}")

    import torch

    slot = torch.from_numpy(fi * top_k + ri)  # flat (feature, rank) slot of every example
    acts_rows = torch.from_numpy(win_acts).view(-1, w)

    def on_done2(g, fut):
        _, lo, hi = g
        res = fut.result()["acts"]
        with warnings.catch_warnings():  # results deserialised from bytes are read-only (only read here)
            warnings.simplefilter("ignore", UserWarning)
            acts_rows.index_copy_(0, slot[lo:hi], torch.from_numpy(res))

    ex.run_bounded(groups, make2, max_in_flight, on_done2)
    t3 = time.perf_counter()

    # ---- output
    from hvrt_dask.sae.output import write_output

    stats = _stats.aggregate({k: final[k] for k in ("max", *_stats.SUM_KEYS)})
    timings = {
        "first_pass_s": t2 - t1,
        "second_pass_s": t3 - t2,
        # throughput of the chunks computed in this run (resumed chunks excluded)
        "samples_per_s": sum(b - a for _, a, b in todo) / max(t2 - t1, 1e-9),
        "tokens_per_s": sum(b - a for _, a, b in todo) * st.seq_len / max(t2 - t1, 1e-9),
        "task_seconds": float(final["seconds"]),
        "read_seconds": float(final["read_seconds"]),
    }
    workers = [str(x) for x in final["workers"]]
    summary = {
        "batch_size": int(final["batch_size"]),
        "n_chunks": n_chunks,
        "n_resumed": n_resumed,
        "workers": workers,
    }
    timings = write_output(
        out,
        topk=tk,
        stats=stats,
        edges=edges,
        window_tokens=win_tokens,
        window_acts=win_acts,
        prefix=prefix,
        suffix=suffix,
        store=st,
        sae=sae_obj,
        run_info={**run_info, "split_every": split_every, "max_in_flight": max_in_flight,
                  "batch_size_requested": batch_size, "device": device,
                  "n_nonfinite_masked": int(final["n_nonfinite_masked"])},
        summary=summary,
        timings_start=t_start,
        timings=timings,
    )
    timings["total_s"] = time.perf_counter() - t_start
    if progress:
        print(
            f"hvrt_dask extract: {st.n_samples} samples in {timings['total_s']:.1f} s "
            f"({timings['samples_per_s']:,.1f} samples/s first pass), batch_size={summary['batch_size']}",
            file=sys.stderr, flush=True,
        )
    return ExtractionResult(path=out, timings=timings, **summary)


def _write_run(out: str, info: dict) -> None:
    fn = os.path.join(out, PARTIALS, RUN_FILE)
    tmp = fn + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, fn)


def _read_run(out: str) -> dict:
    fn = os.path.join(out, PARTIALS, RUN_FILE)
    if not os.path.exists(fn):
        raise ValueError(f"cannot resume {out!r}: it holds no extraction run ({PARTIALS}/{RUN_FILE} missing); use overwrite=True")
    with open(fn) as f:
        return json.load(f)
