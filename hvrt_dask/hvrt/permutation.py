"""One seeded, uniformly random permutation of ``n`` rows, drawn block by block.

``expand`` with ``hvrt.expand.shuffle: global`` sends canonical row ``i`` to position
``dest[i]``. The permutation is defined on a grid of blocks of ``block`` rows (the last
one shorter) — never on how the rows happen to be chunked — so every chunking, worker
count and the in-memory path give the same order, and no task ever holds all ``n``
positions:

1. **Table.** ``T[s, t]``, the number of rows of source block ``s`` that land in
   destination block ``t``, is drawn source block by source block from the multivariate
   hypergeometric law over the destination blocks' remaining room
   (``generator(seed, "expand-shuffle", call, "table")``).
2. **Sources.** Inside source block ``s`` the destination blocks are a uniformly random
   arrangement of ``T[s]`` labels (``generator(seed, "expand-shuffle", call, "source", s)``).
3. **Destinations.** The rows reaching block ``t`` are numbered in canonical order
   (``j``: rows from earlier source blocks, then rank inside ``s``); position ``k`` of the
   block receives arrival ``sigma_t[k]``, ``sigma_t = generator(seed, "expand-shuffle", call,
   "dest", t).permutation(size_t)``.

Each stage is uniform given the ones before, so the result is a uniformly random
permutation. Memory: the table is ``O((n / block)**2)`` small integers on one worker; a
source or destination task touches ``O(block)`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hvrt_dask import config
from hvrt_dask._seeding import generator
from hvrt_dask._threads import map_local

_MARGINALS_LIMIT = 10**9  # numpy's hypergeometric needs populations below 1e9


def shuffle_block_rows() -> int:
    """Rows per block of the permutation grid (``hvrt.expand.shuffle-block-rows``)."""
    rows = config.get("expand.shuffle-block-rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"hvrt.expand.shuffle-block-rows must be a positive integer, got {rows!r}")
    return rows


def block_bounds(n: int, block: int) -> np.ndarray:
    """Edges ``[0, block, 2 block, ..., n]`` of the permutation grid."""
    return np.unique(np.append(np.arange(0, int(n), max(1, int(block)), dtype=np.int64), int(n)))


def _hypergeometric_row(rng: np.random.Generator, room: np.ndarray, m: int) -> np.ndarray:
    """How ``m`` rows drawn without replacement fall into bins of sizes ``room``."""
    total = int(room.sum())
    if total < _MARGINALS_LIMIT:
        return rng.multivariate_hypergeometric(room, m)
    # Beyond numpy's limit: draw the m slots themselves (O(m)) and count them per bin.
    picks = rng.choice(total, size=m, replace=False, shuffle=False)
    return np.bincount(np.searchsorted(np.cumsum(room), picks, side="right"), minlength=len(room))


def permutation_table(seed: int, call: int, n: int, block: int) -> np.ndarray:
    """``[2, S, S]`` integers: the table ``T`` and, per destination, rows from earlier sources.

    ``out[0, s, t]`` rows of source block ``s`` go to destination block ``t``; the first of
    them is the ``out[1, s, t]``-th row to arrive there (in canonical order).
    """
    sizes = np.diff(block_bounds(n, block))
    rng = generator(seed, "expand-shuffle", call, "table")
    # Every entry is at most one block's rows: int32 halves the one big object of the scheme.
    table = np.zeros((2, len(sizes), len(sizes)), dtype=np.int32 if block < 2**31 else np.int64)
    room = sizes.copy()
    for s, m in enumerate(sizes):
        table[0, s] = _hypergeometric_row(rng, room, int(m))
        room -= table[0, s]
    np.cumsum(table[0, :-1], axis=0, out=table[1, 1:])
    return table


def source_arrivals(seed: int, call: int, s: int, table_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of source block ``s``: its destination block and arrival number there.

    ``table_rows`` is ``permutation_table(...)[:, s]`` (the block's counts and offsets). The
    destination labels are a uniformly random arrangement of ``counts[t]`` copies of each
    ``t``; rows bound for the same block arrive in canonical order (so an in-memory scatter
    writes each destination run sequentially).
    """
    counts, offsets = table_rows[0], table_rows[1]
    # uint16 labels when they fit: the stable sort below is then a linear radix sort.
    dtype = np.uint16 if len(counts) <= np.iinfo(np.uint16).max else np.int64
    labels = np.repeat(np.arange(len(counts), dtype=dtype), counts)
    labels = generator(seed, "expand-shuffle", call, "source", int(s)).permutation(labels)
    order = np.argsort(labels, kind="stable")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    labels = labels.astype(np.int64)
    return labels, offsets[labels] + rank


def destination_order(seed: int, call: int, t: int, size: int) -> np.ndarray:
    """Which arrival (``j``) ends at each position of destination block ``t``."""
    return generator(seed, "expand-shuffle", call, "dest", int(t)).permutation(int(size))


def arrival_slots(seed: int, call: int, a: int, b: int, bounds: np.ndarray, columns: Sequence[np.ndarray]) -> np.ndarray:
    """Global arrival slot ``bounds[t] + j`` of canonical rows ``a:b``.

    ``columns`` are the table columns ``permutation_table(...)[:, s]`` of the grid blocks
    overlapping ``a:b``, in order (the first holds row ``a``).
    """
    out = np.empty(b - a, dtype=np.int64)
    s = int(np.searchsorted(bounds, a, side="right")) - 1
    for col in columns:
        lo, hi = max(a, int(bounds[s])), min(b, int(bounds[s + 1]))
        labels, arrival = source_arrivals(seed, call, s, col)
        part = slice(lo - int(bounds[s]), hi - int(bounds[s]))
        out[lo - a:hi - a] = arrival[part] + bounds[labels[part]]
        s += 1
    return out


def overlapping_blocks(bounds: np.ndarray, a: int, b: int) -> range:
    """Grid blocks that rows ``a:b`` touch."""
    if b <= a:
        return range(0)
    return range(int(np.searchsorted(bounds, a, side="right")) - 1, int(np.searchsorted(bounds, b - 1, side="right")))


def settle(block: np.ndarray, seed: int, call: int, t: int) -> None:
    """Destination block ``t``, filled in arrival order, rearranged in place into its final order."""
    np.take(block.copy(), destination_order(seed, call, t, len(block)), axis=0, out=block)  # a gather: cheaper than a scatter


def all_arrival_slots(seed: int, call: int, n: int, block: int) -> np.ndarray:
    """Arrival slot of every canonical row (:func:`arrival_slots`), one grid block per task."""
    bounds = block_bounds(n, block)
    table = permutation_table(seed, call, n, block)
    parts = map_local(
        lambda s: arrival_slots(seed, call, int(bounds[s]), int(bounds[s + 1]), bounds, [table[:, s]]),
        len(bounds) - 1, n,
    )
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def expand_permutation(seed: int, call: int, n: int, block: int) -> np.ndarray:
    """The whole permutation as one array: canonical row ``i`` goes to ``dest[i]`` (tests, docs)."""
    bounds = block_bounds(n, block)
    final = np.arange(int(n), dtype=np.int64)
    for t in range(len(bounds) - 1):
        settle(final[bounds[t]:bounds[t + 1]], seed, call, t)
    inverse = np.empty_like(final)
    inverse[final] = np.arange(int(n), dtype=np.int64)
    return inverse[all_arrival_slots(seed, call, n, block)]
