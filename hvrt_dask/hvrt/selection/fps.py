"""Greedy farthest-point sampling per partition: ``centroid_fps`` (alias ``fps``), ``medoid_fps``.

Distance definition
-------------------
All distances are Euclidean in z-space over *all* columns of ``Xz``.

* The centroid seed is the row with the smallest squared distance to the partition mean
  (first index on ties).
* The medoid minimises the **sum of Euclidean (not squared) distances** to the other rows.
  (A sum of *squared* distances is minimised by the row nearest the centroid, which would make
  ``medoid_fps`` identical to ``centroid_fps``.) It is exact for ``n_p <= 200``; above that,
  as in the reference, the medoid is searched among the ``k = min(max(floor(sqrt(n_p)), 30),
  n_p)`` rows nearest the centroid. Ties go to the smallest row index.
* The greedy loop keeps, for every row, the squared distance to its nearest selected row and
  picks the arg-max (first index on ties; a selected row is never picked again). The squared
  distances are evaluated as ``|x|^2 - 2 x.c + |c|^2`` (one batched BLAS product per step), so
  rows that duplicate a selected row carry rounding noise instead of an exact zero.

Speed
-----
The loop is O(b_p * n_p * d) per partition and inherently sequential within a partition, so
all partitions of a chunk advance *together*: their rows are padded into one
``(P, max n_p, d)`` block (partitions of similar size are batched to bound the padding) and
every step costs one batched matrix-vector product plus an arg-max. Partitions are ordered by
descending budget, so the active set is a shrinking prefix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.selection.base import SELECTION_STRATEGIES

#: Largest partition whose medoid is computed exactly (reference value).
EXACT_MEDOID_MAX = 200
#: A batch of padded partitions may hold at most this factor more rows than it really has.
_MAX_PADDING = 1.5
#: Padded rows per batch: keeps the (P, d, m) block cache-resident.
_MAX_BATCH_ROWS = 65536


@dataclass(frozen=True)
class FPSContext:
    """Per-chunk state: the chunk's z-rows (by reference), squared norms and seeds.

    ``seeds[i]`` is the partition-local row index of partition ``i``'s first pick.
    """

    Xz: np.ndarray
    parts: ChunkPartitions
    sqnorm: np.ndarray
    seeds: np.ndarray


def centroid_seed(Xp: np.ndarray) -> int:
    """Partition-local index of the row nearest (squared Euclidean) the partition mean."""
    dist = ((Xp - Xp.mean(axis=0)) ** 2).sum(axis=1)
    return int(np.argmin(dist))


def medoid_seed(Xp: np.ndarray, exact_max: int = EXACT_MEDOID_MAX) -> int:
    """Partition-local index of the (approximate above ``exact_max`` rows) medoid."""
    n = Xp.shape[0]
    if n <= exact_max:
        cand = np.arange(n)
    else:
        k = min(max(int(np.sqrt(n)), 30), n)
        dc = ((Xp - Xp.mean(axis=0)) ** 2).sum(axis=1)
        cand = np.sort(np.argsort(dc, kind="stable")[:k])
    Y = Xp[cand]
    sums = cdist(Y, Y).sum(axis=1)
    return int(cand[int(np.argmin(sums))])


def _batches(sizes: np.ndarray, idx: np.ndarray) -> list[np.ndarray]:
    """Group partitions ``idx`` (by ascending size) so that padding stays bounded."""
    order = idx[np.argsort(sizes[idx], kind="stable")]
    out: list[np.ndarray] = []
    cur: list[int] = []
    total = 0
    for i in order:
        n = int(sizes[i])
        if cur and (
            (len(cur) + 1) * n > _MAX_PADDING * (total + n) or (len(cur) + 1) * n > _MAX_BATCH_ROWS
        ):
            out.append(np.asarray(cur))
            cur, total = [], 0
        cur.append(int(i))
        total += n
    if cur:
        out.append(np.asarray(cur))
    return out


def _fps_batch(
    Xz: np.ndarray,
    sqnorm: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    seeds: np.ndarray,
    budgets: np.ndarray,
) -> list[np.ndarray]:
    """Run FPS on several partitions at once; returns partition-local picks per partition.

    Every partition must have ``1 <= budgets[i] < sizes[i]``.
    """
    order = np.argsort(-budgets, kind="stable")  # active partitions form a prefix
    k = order.shape[0]
    m = int(sizes.max())
    d = Xz.shape[1]
    # Layout (P, d, m) and pre-scaled by -2 (exact in floating point): each step is one
    # batched row-vector x matrix product, ``|x|^2 - 2 x.c`` then comes from in-place adds.
    Xt = np.zeros((k, d, m))
    sq = np.zeros((k, m))
    mind = np.full((k, m), -np.inf)  # padding rows stay at -inf and are never picked
    for r, i in enumerate(order):
        s, n = int(starts[i]), int(sizes[i])
        Xt[r, :, :n] = Xz[s : s + n].T
        sq[r, :n] = sqnorm[s : s + n]
        mind[r, :n] = np.inf
    Xc = Xt.transpose(0, 2, 1)  # (P, m, d) view used to gather the picked rows
    Xt *= -2.0
    b = budgets[order]
    bmax = int(b[0])
    # active[t] = number of partitions that still need pick t
    active = k - np.searchsorted(np.sort(b), np.arange(bmax + 1), side="right")
    picks = np.empty((k, bmax), dtype=np.int64)
    cur = seeds[order].astype(np.int64)
    ar = np.arange(k)
    for t in range(bmax):
        kk = int(active[t])
        picks[:kk, t] = cur[:kk]
        kn = int(active[t + 1])
        if kn == 0:
            break
        a = ar[:kn]
        ck = cur[:kn]
        c = Xc[a, ck] * -0.5  # (kn, d) the rows just picked (undo the exact -2 scaling)
        dist = np.matmul(c[:, None, :], Xt[:kn])[:, 0, :]  # -2 x.c
        dist += sq[:kn]
        dist += sq[a, ck][:, None]
        mk = mind[:kn]
        np.minimum(mk, dist, out=mk)
        mk[a, ck] = -np.inf
        cur[:kn] = np.argmax(mk, axis=1)
    # map back from budget order to the caller's order
    back: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * k
    for r, i in enumerate(order):
        back[int(i)] = picks[r, : int(b[r])].copy()
    return back


def farthest_point_select(
    Xz: np.ndarray,
    parts: ChunkPartitions,
    sqnorm: np.ndarray,
    seeds: np.ndarray,
    budgets: np.ndarray,
) -> np.ndarray:
    """Chunk-local indices of the FPS picks, grouped by partition in chunk order."""
    budgets = np.asarray(budgets, dtype=np.int64)
    sizes, starts = parts.sizes, parts.starts
    result: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * parts.n_parts
    run = []
    for i in range(parts.n_parts):
        if budgets[i] >= sizes[i]:
            result[i] = np.arange(starts[i], starts[i] + sizes[i], dtype=np.int64)
        elif budgets[i] > 0:
            run.append(i)
    if run:
        for batch in _batches(sizes, np.asarray(run)):
            picks = _fps_batch(
                Xz, sqnorm, starts[batch], sizes[batch], seeds[batch], budgets[batch]
            )
            for i, p in zip(batch, picks):
                result[int(i)] = starts[i] + p
    if not result:
        return np.empty(0, dtype=np.int64)
    return np.concatenate(result).astype(np.int64, copy=False)


class _FPSBase:
    name = ""

    def _seed(self, Xp: np.ndarray, params: Mapping[str, Any]) -> int:
        raise NotImplementedError

    def prepare(
        self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]
    ) -> FPSContext:
        Xz = np.asarray(Xz, dtype=np.float64)
        seeds = np.array(
            [self._seed(Xz[sl], params) if sl.stop > sl.start else 0 for sl in parts.slices()],
            dtype=np.int64,
        )
        return FPSContext(Xz=Xz, parts=parts, sqnorm=np.einsum("ij,ij->i", Xz, Xz), seeds=seeds)

    def select(
        self, context: FPSContext, budgets: np.ndarray, rngs: Sequence[np.random.Generator]
    ) -> np.ndarray:
        return farthest_point_select(
            context.Xz, context.parts, context.sqnorm, context.seeds, budgets
        )


class CentroidFPSStrategy(_FPSBase):
    """FPS seeded at the row nearest the partition centroid (deterministic; ``rngs`` unused)."""

    name = "centroid_fps"

    def _seed(self, Xp: np.ndarray, params: Mapping[str, Any]) -> int:
        return centroid_seed(Xp)


class MedoidFPSStrategy(_FPSBase):
    """FPS seeded at the partition medoid (Euclidean sum; approximate above 200 rows)."""

    name = "medoid_fps"

    def _seed(self, Xp: np.ndarray, params: Mapping[str, Any]) -> int:
        return medoid_seed(Xp, int(params.get("exact_medoid_max", EXACT_MEDOID_MAX)))


centroid_fps = SELECTION_STRATEGIES.register(CentroidFPSStrategy(), "fps")
medoid_fps = SELECTION_STRATEGIES.register(MedoidFPSStrategy())
