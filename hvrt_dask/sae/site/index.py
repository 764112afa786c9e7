"""The index page's data: rows by feature id, sorted/filtered views, the token search index.

Built from O(n_features) columns kept while the output is streamed (see :mod:`.build`).
"""

from __future__ import annotations

import numpy as np

from hvrt_dask.sae.site import tokens as _tokens
from hvrt_dask.sae.site.data import Writer, rounded

FILTERS = ("all", "dead", "rare", "dense")
SORT_KEYS = ("feature", "max_activation", "density", "frequency")


def top_tokens(center: np.ndarray, live: np.ndarray, n_top: int) -> np.ndarray:
    """Per feature, the ``n_top`` most frequent tokens at the max position of its top examples.

    Ties by the best rank they appear at. ``center``/``live``: ``[F, k]``. Returns ``[F, n_top]`` (-1 fill).
    """
    f_n, k = center.shape
    out = np.full((f_n, n_top), -1, np.int64)
    fi, ri = np.nonzero(live & (center >= 0))
    if fi.size == 0:
        return out
    t = center[fi, ri].astype(np.int64)
    order = np.lexsort((ri, t, fi))
    fi, ri, t = fi[order], ri[order], t[order]
    new = np.r_[True, (fi[1:] != fi[:-1]) | (t[1:] != t[:-1])]
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, fi.size])
    uf, ut, ur = fi[starts], t[starts], ri[starts]  # ri is the best rank (sorted asc within group)
    o2 = np.lexsort((ur, -counts, uf))
    uf, ut = uf[o2], ut[o2]
    gs = np.flatnonzero(np.r_[True, uf[1:] != uf[:-1]])
    rank = np.arange(uf.size) - np.repeat(gs, np.diff(np.r_[gs, uf.size]))
    keep = rank < n_top
    out[uf[keep], rank[keep]] = ut[keep]
    return out


def write_rows(writer: Writer, sub: dict, top: np.ndarray, table, i0: int, a: int, rpf: int) -> None:
    n_blk = sub["max_activation"].shape[0]
    for r0 in range(0, n_blk, rpf):
        r1 = min(n_blk, r0 + rpf)
        writer.put(f"rows/{(i0 + r0) // rpf:06d}", {
            "f0": a + r0,
            "max": rounded(sub["max_activation"][r0:r1]),
            "density": rounded(sub["density"][r0:r1]),
            "frequency": rounded(sub["frequency"][r0:r1]),
            "n_active_tokens": sub["n_active_tokens"][r0:r1].tolist(),
            "dead": sub["dead"][r0:r1].astype(int).tolist(),
            "top": [[table(t) for t in row if t >= 0] for row in top[r0:r1].tolist()],
        })


def filter_mask(cols: dict, name: str, rare: float, dense: float) -> np.ndarray:
    dead = cols["dead"]
    if name == "all":
        return np.ones(dead.shape, bool)
    if name == "dead":
        return dead
    if name == "rare":
        return ~dead & (cols["density"] < rare)
    return ~dead & (cols["density"] > dense)


def write_views(writer: Writer, cols: dict, lo: int, order_file: int, rare: float, dense: float) -> dict:
    """Sorted/filtered views as pages of global feature ids.

    ``feature`` ascending; the value keys descending with ties by feature ascending (the
    viewer reverses a view for the other direction). ``all``/``feature`` is the identity and
    is not written; ``dead`` only by feature (every value is 0).
    """
    views = {}
    ids_all = np.arange(cols["dead"].size, dtype=np.int64)
    for flt in FILTERS:
        mask = filter_mask(cols, flt, rare, dense)
        ids = ids_all[mask]
        for key in SORT_KEYS:
            if (flt == "all" and key == "feature") or (flt == "dead" and key != "feature"):
                continue
            if key == "feature":
                order = ids
            else:
                v = cols[key][mask].astype(np.float64)
                order = ids[np.lexsort((ids, -v))]
            name = f"{flt}-{key}"
            for p0 in range(0, order.size, order_file):
                writer.put(f"order/{name}/{p0 // order_file:06d}", (order[p0 : p0 + order_file] + lo).tolist())
            views[name] = {"n": int(order.size)}
    return views


def write_search(writer: Writer, top_tok: np.ndarray, mx: np.ndarray, lo: int, table, n_buckets: int,
                  search_max: int) -> None:
    """Token → features (most active first) in ``n_buckets`` files keyed by the normalised token."""
    n, n_top = top_tok.shape
    # rank of each feature by max activation (descending, ties by feature); int32 throughout
    # and one int64 sort key, so the transient memory stays ~20 bytes per (feature, top token)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), -mx.astype(np.float64)))] = np.arange(n)
    flat = top_tok.reshape(-1)
    pos = np.flatnonzero(flat >= 0)
    fi = (pos // n_top).astype(np.int32)
    t = flat[pos]
    del pos
    order = np.argsort(t.astype(np.int64) * n + rank[fi], kind="stable")
    fi, t = fi[order], t[order]
    del order, rank
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]]) if t.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], t.size]
    by_bucket: dict[int, list[tuple[str, int, int]]] = {}
    for s, e in zip(starts.tolist(), ends.tolist()):
        tid = int(t[s])
        key = str(tid) if table.tok is None else _tokens.search_key(table.raw(tid))
        if key:
            by_bucket.setdefault(_tokens.bucket(key, n_buckets), []).append((key, s, e))
    for bk in range(n_buckets):
        entries: dict[str, list[int]] = {}
        for key, s, e in by_bucket.get(bk, ()):
            entries.setdefault(key, []).extend(fi[s:e][:search_max].tolist())
        out = {}
        for key, feats in entries.items():
            f = np.unique(np.asarray(feats, np.int64))
            f = f[np.lexsort((f, -mx[f].astype(np.float64)))][:search_max]
            out[key] = (f + lo).tolist()
        writer.put(f"search/{bk:03d}", out)
