"""``stratified``: uniform random rows per partition, vectorised over the chunk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.selection.base import SELECTION_STRATEGIES


@dataclass(frozen=True)
class StratifiedContext:
    """Chunk layout only; the keys are drawn fresh on every call."""

    parts: ChunkPartitions
    labels: np.ndarray


class StratifiedStrategy:
    """One ``U(0, 1)`` key per row, rows sorted by (partition, key), first ``b_p`` kept.

    Each partition's keys come from that partition's own stream (``rngs[i]``), so the
    selection does not depend on how partitions are packed into chunks. Unlike the
    reference (which re-seeds every call), each ``reduce`` call draws fresh keys; the
    same seed and call sequence reproduces them.
    """

    name = "stratified"

    def prepare(
        self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]
    ) -> StratifiedContext:
        return StratifiedContext(parts=parts, labels=parts.labels())

    def select(
        self, context: StratifiedContext, budgets: np.ndarray, rngs: Sequence[np.random.Generator]
    ) -> np.ndarray:
        parts = context.parts
        if parts.n_parts == 0:
            return np.empty(0, dtype=np.int64)
        budgets = np.asarray(budgets, dtype=np.int64)
        keys = np.concatenate([rng.random(int(n)) for rng, n in zip(rngs, parts.sizes)])
        labels = context.labels
        # Rows are already contiguous per partition, so after the lexsort position k still
        # belongs to partition labels[k] and its rank inside the block is k - start.
        order = np.lexsort((keys, labels))
        rank = np.arange(labels.shape[0]) - parts.starts[labels]
        return order[rank < budgets[labels]].astype(np.int64, copy=False)


stratified = SELECTION_STRATEGIES.register(StratifiedStrategy())
