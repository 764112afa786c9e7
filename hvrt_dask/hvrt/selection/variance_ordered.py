"""``variance_ordered``: rows with the most uneven k-nearest-neighbour distances first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors
from hvrt_dask._threads import limit_threads

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.selection.base import SELECTION_STRATEGIES

#: Neighbours per row (the row itself included), capped at ``n_p - 1``.
K_NEIGHBOURS = 10
#: Partitions up to this size use a dense pairwise-distance matrix.
_SMALL = 256


def knn_variance_scores(Xp: np.ndarray, k_max: int = K_NEIGHBOURS) -> np.ndarray:
    """Variance (ddof 0) of each row's ``k = min(k_max, n_p - 1)`` nearest-neighbour distances.

    Neighbours are searched within the partition and include the row itself at distance 0,
    as ``NearestNeighbors(k).fit(Xp).kneighbors(Xp)`` does. Rows with ``k <= 1`` score 0.
    """
    n = Xp.shape[0]
    k = min(k_max, n - 1)
    if k <= 1:
        return np.zeros(n)
    if n <= _SMALL:
        # Small partitions: exact pairwise distances (self at exactly 0) + partial sort is
        # ~20x cheaper than setting up a NearestNeighbors search.
        D = cdist(Xp, Xp)
        dist = np.partition(D, k - 1, axis=1)[:, :k]
    else:
        # Brute force (sklearn's compiled ArgKmin) is ~3x faster than a kd-tree at d ~ 10
        # and leaf sizes ~1e3. Its GEMM-based distances leave ~1e-8 of noise on the
        # self-distance, so column 0 (the row itself, or an exact duplicate) is set to 0.
        dist, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(Xp).kneighbors(Xp)
        dist[:, 0] = 0.0
    return dist.var(axis=1)


@dataclass(frozen=True)
class VarianceOrderedContext:
    """Per-chunk state: the chunk-local row order (by partition, descending score)."""

    parts: ChunkPartitions
    order: np.ndarray


class VarianceOrderedStrategy:
    """Top ``b_p`` rows per partition by descending kNN-distance variance (stable).

    The scores do not depend on the budget, so ``prepare`` computes the whole ranking once
    and cached contexts make later ``reduce`` calls a slice. Deterministic (``rngs`` unused).
    """

    name = "variance_ordered"

    def prepare(
        self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]
    ) -> VarianceOrderedContext:
        Xz = np.asarray(Xz, dtype=np.float64)
        k_max = int(params.get("k", K_NEIGHBOURS))
        order = np.empty(parts.n_rows, dtype=np.int64)
        # One OpenMP/BLAS thread per task: parallelism comes from the chunks, and sklearn's
        # OpenMP pool degrades badly (~50x) when the cores are already busy.
        with limit_threads(1):
            for sl in parts.slices():
                if sl.stop == sl.start:
                    continue
                scores = knn_variance_scores(Xz[sl], k_max)
                order[sl] = sl.start + np.argsort(-scores, kind="stable")
        return VarianceOrderedContext(parts=parts, order=order)

    def select(
        self,
        context: VarianceOrderedContext,
        budgets: np.ndarray,
        rngs: Sequence[np.random.Generator],
    ) -> np.ndarray:
        parts = context.parts
        if parts.n_parts == 0:
            return np.empty(0, dtype=np.int64)
        budgets = np.minimum(np.asarray(budgets, dtype=np.int64), parts.sizes)
        labels = parts.labels()
        rank = np.arange(labels.shape[0]) - parts.starts[labels]
        # A partition taken whole comes back in row order (as the FPS strategies do).
        full = (budgets >= parts.sizes)[labels]
        order = np.where(full, np.arange(labels.shape[0]), context.order)
        return order[rank < budgets[labels]]


variance_ordered = SELECTION_STRATEGIES.register(VarianceOrderedStrategy())
