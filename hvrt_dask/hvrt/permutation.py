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
2. **Sources.** A uniformly random order of source block ``s``'s rows
   (``generator(seed, "expand-shuffle", call, "source", s)``) is cut into runs of ``T[s, t]``
   rows; run ``t`` goes to destination block ``t``.
3. **Destinations.** The rows reaching block ``t`` are numbered ``j`` by source block, then
   by their place in the run, and row ``j`` lands at
   ``bounds[t] + pi_t[j]`` with ``pi_t = generator(seed, "expand-shuffle", call, "dest",
   t).permutation(size_t)``.

Each stage is uniform given the ones before, so the result is a uniformly random
permutation. Memory: the table is ``O((n / block)**2)`` small integers on one worker; a
source or destination task touches ``O(block)`` rows.
"""

from __future__ import annotations

import numpy as np

from hvrt_dask import config
from hvrt_dask._seeding import generator

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
    """``[2, S, S]`` int64: the table ``T`` and, per destination, rows from earlier sources.

    ``out[0, s, t]`` rows of source block ``s`` go to destination block ``t``; the first of
    them is the ``out[1, s, t]``-th row to arrive there (in canonical order).
    """
    sizes = np.diff(block_bounds(n, block))
    rng = generator(seed, "expand-shuffle", call, "table")
    table = np.zeros((2, len(sizes), len(sizes)), dtype=np.int64)
    room = sizes.copy()
    for s, m in enumerate(sizes):
        table[0, s] = _hypergeometric_row(rng, room, int(m))
        room -= table[0, s]
    np.cumsum(table[0, :-1], axis=0, out=table[1, 1:])
    return table


def source_arrivals(seed: int, call: int, s: int, table_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every row of source block ``s``: its destination block and arrival number there.

    ``table_rows`` is ``permutation_table(...)[:, s]`` (the block's counts and offsets). A
    uniformly random order of the block's rows is cut into runs of ``counts[t]`` rows: run
    ``t`` goes to block ``t`` and arrives there in run order.
    """
    counts, offsets = table_rows[0], table_rows[1]
    m = int(counts.sum())
    order = generator(seed, "expand-shuffle", call, "source", int(s)).permutation(m)
    labels, arrival = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.int64)
    run = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    labels[order] = run
    arrival[order] = np.arange(m, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts - offsets, counts)
    return labels, arrival


def destination_order(seed: int, call: int, t: int, size: int) -> np.ndarray:
    """Position inside destination block ``t`` of its ``j``-th arriving row."""
    return generator(seed, "expand-shuffle", call, "dest", int(t)).permutation(int(size))


def expand_permutation(seed: int, call: int, n: int, block: int) -> np.ndarray:
    """The whole permutation in memory: canonical row ``i`` goes to ``dest[i]``."""
    bounds = block_bounds(n, block)
    table = permutation_table(seed, call, n, block)
    dest = np.empty(int(n), dtype=np.int64)
    for s in range(len(bounds) - 1):
        labels, arrival = source_arrivals(seed, call, s, table[:, s])
        dest[bounds[s]:bounds[s + 1]] = arrival + bounds[labels]  # arrival order for now
    orders = [destination_order(seed, call, t, bounds[t + 1] - bounds[t]) for t in range(len(bounds) - 1)]
    final = np.concatenate(orders) + np.repeat(bounds[:-1], np.diff(bounds))
    return final[dest]
