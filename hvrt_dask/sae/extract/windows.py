"""Second pass: every top example's context window (token ids and the feature's activations).

One task per (feature block, sample chunk holding examples), split so that no task handles
more than :data:`WINDOW_TASK_EXAMPLES` examples. A task reads only the samples holding its
examples (verified store chunks) and re-encodes only what the windows need, against its
block's weights (and, for topk SAEs, the tokens' thresholds from the first pass).
"""

from __future__ import annotations

import numpy as np

from hvrt_dask.sae.extract import checkpoint as ckpt
from hvrt_dask.sae.extract.first_pass import read_samples
from hvrt_dask.sae.extract.params import Block, Chunk, RunSpec
from hvrt_dask.sae.extract.worker import get_encoder

#: Most examples handled by one context-window task.
WINDOW_TASK_EXAMPLES = 524288
#: Tile widths (positions per pseudo-sample) the window pass considers besides the whole sequence.
WINDOW_TILES = (64, 32, 16, 8)
#: Columns charged per encoded row in the window pass's work model (gather, normalisation, small matmuls).
WINDOW_ROW_OVERHEAD = 128
#: Working memory of one window-pass device step (bytes).
WINDOW_BUDGET = 256 << 20


def gather_windows(run: RunSpec, chunk: Chunk, block: Block, features: np.ndarray, samples: np.ndarray,
                   positions: np.ndarray, slots: np.ndarray, thresholds=None) -> dict:
    """Window task: token ids and the feature's activations over the windows of some examples.

    The examples (block-local ``features``, ``samples``, ``positions``) lie in ``chunk``.
    Returns ``slots`` (passed through), ``tokens [E, W]`` (int32, -1 outside the sequence)
    and ``acts [E, W]`` (float32, NaN outside the sequence or at padding),
    ``W = prefix + 1 + suffix``.

    The examples are grouped into *pseudo-samples*, one per (sample, tile of ``tile``
    positions), whose rows are the union of their examples' windows (clipped to the
    sequence). A pseudo-sample with few features is encoded against only their encoder
    columns (one batched matmul per step), one with many is encoded for the whole block.
    The tile width minimises the matmul work (:func:`_window_plan`). Each token's latents
    are a per-token computation (topk: given the token's threshold), so restricting rows
    and columns never changes them.
    """
    import torch

    from hvrt_dask.sae.encode import scratch_buffer

    prefix, suffix = run.prefix, run.suffix
    feats = np.asarray(features, np.int64)
    samples = np.asarray(samples, np.int64)
    pos = np.asarray(positions, np.int64)
    w = run.window
    e = len(feats)
    if e == 0:
        return {"slots": slots, "acts": np.full((0, w), np.nan, np.float32), "tokens": np.full((0, w), -1, np.int32)}
    # a range example is usually also a top-k example (same feature, sample and position, hence
    # the same window): each distinct window is computed once
    # (one packed int64 key: numpy's unique over rows is ~20x slower than over a flat array)
    s0, n_s, n_p = int(samples.min()), int(samples.max() - samples.min()) + 1, int(pos.max()) + 1
    _, first, inverse = np.unique((feats * n_s + (samples - s0)) * n_p + pos, return_index=True, return_inverse=True)
    if len(first) < e:
        out = gather_windows(run, chunk, block, feats[first], samples[first], pos[first], np.arange(len(first)), thresholds)
        inverse = inverse.reshape(-1)
        return {"slots": slots, "acts": out["acts"][inverse], "tokens": out["tokens"][inverse]}
    enc = get_encoder(run.sae_path, run.sae_hash, run.device, block.lo, block.hi)
    lo, hi = int(samples.min()), int(samples.max()) + 1  # only the samples holding examples
    acts, tokens, mask = read_samples(run.store, lo, hi)
    keys = ckpt.load_thresholds(thresholds)
    keys_rows = None if keys is None else torch.from_numpy(np.ascontiguousarray(keys[lo - chunk.start : hi - chunk.start]).reshape(-1))
    s_loc = samples - lo
    n, t, d = acts.shape
    tok = _windows(np.asarray(tokens, np.int32), s_loc, pos, prefix, suffix, -1)
    plan = _window_plan(s_loc, pos, t, prefix, suffix, enc)
    order, starts, m, ps_sample, r0, rows, full = plan
    invalid = ~_windows(np.asarray(mask, bool), s_loc, pos, prefix, suffix, False)
    out = np.empty((e, w), np.float32)  # every example belongs to one pseudo-sample
    zoff = np.arange(-prefix, suffix + 1)
    rows_in = torch.from_numpy(np.ascontiguousarray(acts).reshape(n * t, d))
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
            width = enc.width if is_full else int(m[ps_order[a]])
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
            src = torch.from_numpy(src_rows.reshape(-1))
            xb = scratch_buffer(scratch, "x", (p * r, d), "cpu", rows_in.dtype)
            torch.index_select(rows_in, 0, src, out=xb)
            x = xb.view(p, r, d).to(dev)
            tk = None if keys_rows is None else keys_rows[src].to(dev)
            if is_full:
                zc = enc.width
                z = enc.encode(x.reshape(p * r, d), out=scratch_buffer(scratch, "z", (p * r, zc), dev), token_key=tk)
                col = feats[ex]
            else:
                zc = int(cnt.max())
                fm = np.zeros((p, zc), np.int64)
                fm[psl, within] = feats[ex]
                z = enc.encode_sample_features(x, torch.from_numpy(fm).to(dev), scratch,
                                               token_key=None if tk is None else tk.view(p, r))
                col = within
            # flat index into z of each window token: positions inside the sequence lie in
            # their pseudo-sample's rows; the others (clamped into z) are invalid anyway
            zi = ((psl * r + pos[ex] - r0[sel][psl]) * zc + col)[:, None] + zoff * zc
            np.clip(zi, 0, z.numel() - 1, out=zi)
            out[ex] = torch.take(z, torch.from_numpy(zi).to(dev)).cpu().numpy()
    out[invalid] = np.nan
    return {"slots": slots, "acts": out, "tokens": tok}


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


def _window_plan(s_loc, pos, t, prefix, suffix, enc):
    """Pseudo-samples of the window pass at the tile width with the least matmul work.

    Returns ``order`` (examples grouped by pseudo-sample), per pseudo-sample ``starts`` (into
    ``order``), ``m`` (examples), ``sample``, first row ``r0``, ``rows`` and ``full`` (encode
    all features). Work of a pseudo-sample: ``rows * (width + WINDOW_ROW_OVERHEAD)``, with
    ``width`` = the block width when fully encoded, else ``m`` (smaller tiles encode fewer rows per
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
        cost = int((rows * (np.where(full, enc.width, m) + WINDOW_ROW_OVERHEAD)).sum())
        if best is None or cost < best[0]:
            best = (cost, (order, starts, m, s_loc[order[starts]], r0, rows, full))
    return best[1]



def plan_window_tasks(samples: np.ndarray, chunk_samples: int) -> list[tuple[int, int, int]]:
    """Window tasks of one block: ``(chunk id, lo, hi)`` ranges of its examples sorted by sample.

    One task per sample chunk, split so that no task handles more than
    :data:`WINDOW_TASK_EXAMPLES` examples (bounds a task's memory when few samples hold many
    examples); splits fall on sample boundaries where they can, so each sample is encoded once.
    """
    chunk_of = samples // chunk_samples
    cuts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True]) if len(chunk_of) else np.array([0])
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
    return groups
