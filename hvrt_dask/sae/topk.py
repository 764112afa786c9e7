"""Exact per-feature top-k of samples under a total order, with an exact merge.

One example per sample: a sample's score for a feature is its maximum activation over valid
tokens, at the first position reaching it. Examples are ranked by the total order

    value descending, sample index ascending, position ascending

and only samples with a positive maximum are candidates (an inactive sample is never an
example). A partial is three ``[d_sae, k]`` arrays (``values`` float32, ``samples`` int64,
``positions`` int32); empty slots hold ``-inf`` / ``-1`` / ``-1`` and sort last.

Because selection under a total order is associative and commutative, merging partials in
any grouping or order (:func:`combine`; the tree is :mod:`hvrt_dask.sae.extract.tree`)
gives bit-identical results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EMPTY_VALUE = -np.inf
KEYS = ("values", "samples", "positions")
#: :func:`chunk` sorts the candidates themselves when at most 1 in this many (sample, feature)
#: pairs is active (their sort is then cheaper than a selection over every pair).
SPARSE_CANDIDATES = 16


def empty(d_sae: int, k: int) -> dict[str, np.ndarray]:
    """A partial with no examples."""
    return {
        "values": np.full((d_sae, k), EMPTY_VALUE, np.float32),
        "samples": np.full((d_sae, k), -1, np.int64),
        "positions": np.full((d_sae, k), -1, np.int32),
    }


def from_candidates(
    features: np.ndarray,
    values: np.ndarray,
    samples: np.ndarray,
    positions: np.ndarray,
    d_sae: int,
    k: int,
) -> dict[str, np.ndarray]:
    """Select each feature's top ``k`` among candidate examples (flat arrays, any order).

    Each (feature, sample) pair must appear at most once.
    """
    out = empty(d_sae, k)
    keep = values > 0
    if not keep.all():
        features, values, samples, positions = features[keep], values[keep], samples[keep], positions[keep]
    if features.size == 0:
        return out
    features = features.astype(np.int64, copy=False)
    # lexsort: last key is primary -> feature asc, value desc, sample asc, position asc
    order = np.lexsort((positions, samples, -values.astype(np.float64), features))
    f = features[order]
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
    counts = np.diff(np.r_[starts, f.size])
    rank = np.arange(f.size) - np.repeat(starts, counts)
    sel = rank < k
    o = order[sel]
    out["values"][f[sel], rank[sel]] = values[o]
    out["samples"][f[sel], rank[sel]] = samples[o]
    out["positions"][f[sel], rank[sel]] = positions[o]
    return out


def chunk(
    sample_max: np.ndarray, sample_argmax: np.ndarray, sample_ids: np.ndarray, k: int, prefilter: bool = True
) -> dict[str, np.ndarray]:
    """Top-k partial of one chunk from per-sample maxima ``[S, d_sae]`` and their positions.

    ``prefilter`` (float32 maxima): a per-feature selection on packed keys
    (:func:`_select_packed`). Otherwise, and for other dtypes, the reference path: drop
    nothing, sort every positive candidate (:func:`from_candidates`). Both give the same
    arrays; when fewer than 1 in :data:`SPARSE_CANDIDATES` (sample, feature) pairs is active
    (trained SAEs: L0 is a small fraction of ``d_sae``) the reference path is taken, as its
    cost follows the candidates, not ``S x d_sae``.
    """
    s, d_sae = sample_max.shape
    ids = np.asarray(sample_ids, np.int64)
    active = sample_max > 0
    si, fi = np.nonzero(active)
    if prefilter and s and sample_max.dtype == np.float32 and si.size * SPARSE_CANDIDATES >= s * d_sae:
        import torch

        # a sample appears once per feature, so (value desc, sample asc) is a strict order;
        # the sample's rank among the chunk's ids breaks ties (low word = s - 1 - rank)
        by_rank = np.sort(ids)
        order = np.argsort(ids, kind="stable")
        low = torch.from_numpy(np.ascontiguousarray((s - 1 - np.argsort(order))[:, None]))
        key = _pack(torch.from_numpy(sample_max), low).T  # [d_sae, S] (a view)
        values, low_sel, rows, live = _select_packed(key, k)
        out = empty(d_sae, k)
        kk = rows.shape[1]
        flat = rows * d_sae + np.arange(d_sae)[:, None]  # (sample row, feature) in sample_argmax
        out["values"][:, :kk] = values
        out["samples"][:, :kk] = np.where(live, by_rank[np.clip(s - 1 - low_sel, 0, s - 1)], -1)
        out["positions"][:, :kk] = np.where(live, np.take(sample_argmax, flat), -1)
        return out
    return from_candidates(fi, sample_max[si, fi], ids[si], sample_argmax[si, fi], d_sae, k)


def _pack(values, low):
    """int64 keys ordered like (value, low) for positive float32 ``values``; -1 where ``values <= 0``.

    Torch tensors (elementwise work runs on all intra-op threads). A positive float32's bit
    pattern is monotonic in its value, so ``bits << 32 | low`` (``0 <= low < 2**32``) compares
    like the pair, and both halves are recovered from the key (:func:`_select_packed`).
    """
    import torch

    key = values.view(torch.int32).to(torch.int64).bitwise_left_shift_(32).bitwise_or_(low)
    return key.masked_fill_(~(values > 0), -1)


def _select_packed(key, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of packed keys ``[rows, n]`` (torch), the ``min(k, n)`` largest, descending.

    Returns ``values`` (float32, ``EMPTY_VALUE`` at dead slots), the keys' low words
    (int64), their columns and the live mask. Exact when the live (non-negative) keys of a
    row are distinct.
    """
    import torch

    kk = min(k, key.shape[1])
    top = torch.topk(key, kk, dim=1, largest=True, sorted=True)
    keys = top.values
    live = (keys >= 0).numpy()
    values = torch.bitwise_right_shift(keys, 32).to(torch.int32).view(torch.float32).numpy()
    values = np.where(live, values, np.float32(EMPTY_VALUE))
    low = keys.bitwise_and(0xFFFFFFFF).numpy()
    return values, low, top.indices.numpy(), live


def chunk_sorted(sample_max, sample_argmax, start: int, k: int) -> dict[str, np.ndarray]:
    """Device variant of :func:`chunk` for torch tensors ``[S, d_sae]`` of consecutive samples.

    A stable descending sort along samples keeps equal values in ascending sample order,
    which is exactly the total order (a sample appears once per feature, so positions never
    decide within a chunk). Used on GPUs, where a sort of the whole block is cheap.
    """
    import torch

    s, d_sae = sample_max.shape
    kk = min(k, s)
    vals, idx = torch.sort(sample_max, dim=0, descending=True, stable=True)
    vals, idx = vals[:kk], idx[:kk]
    pos = sample_argmax.gather(0, idx)
    out = empty(d_sae, k)
    v = vals.T.cpu().numpy()
    live = v > 0
    out["values"][:, :kk] = np.where(live, v, EMPTY_VALUE)
    out["samples"][:, :kk] = np.where(live, idx.T.cpu().numpy().astype(np.int64) + start, -1)
    out["positions"][:, :kk] = np.where(live, pos.T.cpu().numpy().astype(np.int32), -1)
    return out


def combine(partials: Sequence[dict[str, np.ndarray]], k: int | None = None) -> dict[str, np.ndarray]:
    """Exact merge of top-k partials (any number, any order)."""
    if not partials:
        raise ValueError("combine needs at least one partial")
    k = k or partials[0]["values"].shape[1]
    d_sae = partials[0]["values"].shape[0]
    vals = np.concatenate([p["values"] for p in partials], axis=1)
    samp = np.concatenate([p["samples"] for p in partials], axis=1)
    pos = np.concatenate([p["positions"] for p in partials], axis=1)
    if vals.dtype == np.float32 and vals.shape[1] and samp.max() < 2**32 - 1:
        import torch

        # partials cover disjoint samples: (value desc, sample asc) is a strict order per
        # feature, selected on packed keys (low word 2**32 - 1 - sample; ids < 2**32 - 1)
        st = torch.from_numpy(samp)
        key = _pack(torch.from_numpy(vals), (2**32 - 1) - st.clamp(min=0))
        key.masked_fill_(st < 0, -1)
        values, low, cols, live = _select_packed(key, k)
        kk = cols.shape[1]
        out = empty(d_sae, k)
        out["values"][:, :kk] = values
        out["samples"][:, :kk] = np.where(live, (2**32 - 1) - low, -1)
        out["positions"][:, :kk] = np.where(live, np.take_along_axis(pos, cols, 1), -1)
        return out
    live = samp >= 0
    if vals.shape[1] > k:
        # exact prefilter: entries strictly below a feature's k-th largest value cannot be
        # selected (ties at that value are all kept and settled by the total order)
        kth = -np.partition(-vals, k - 1, axis=1)[:, k - 1]
        live &= vals >= kth[:, None]
    fi, ci = np.nonzero(live)
    return from_candidates(fi, vals[fi, ci], samp[fi, ci], pos[fi, ci], d_sae, k)


def aggregate(partial: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Final form: empty slots get value NaN (sample/position stay -1)."""
    out = {key: partial[key].copy() for key in KEYS}
    out["values"][out["samples"] < 0] = np.nan
    return out
