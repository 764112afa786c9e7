"""Partitions become chunks: per-chunk summaries, packing from counts, a P2P shuffle.

Partitions are packed, in sorted partition-id order, into chunks of at most
``hvrt.chunks.target-rows`` rows (a partition larger than that gets a chunk of its own).
Inside a chunk, partitions are contiguous and in sorted-id order, and a partition's rows
keep their original relative order. So the concatenation of all chunks is the same
"canonical" row order whatever the chunk size or the input chunking — which is what makes
generated output independent of chunking.

For data on a cluster nothing per row reaches the client:

1. every input chunk summarises its rows (:func:`chunk_summary`): row count and an
   *exact* |z| sum per partition — O(input chunks × partitions) numbers in all;
2. :func:`plan` derives partition sizes, the packing, every output chunk's size and the
   canonical position of the first row of each (input chunk, partition) from those counts;
3. every input chunk then tags each row with its canonical position and destination chunk
   (:func:`route_block`) and Dask's P2P shuffle moves the rows (:func:`shuffle_rows`);
   each output chunk places its rows by position (:func:`unpack_block`). The graph has
   O(input chunks + output chunks) tasks and no per-row data.
"""

from __future__ import annotations

import operator
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import dask
import dask.array as da
import numpy as np

from hvrt_dask import config
from hvrt_dask.hvrt import _tree, permutation
from hvrt_dask.hvrt._chunks import ChunkPartitions

LOCAL_MIN_ROWS = 5000  # below this, one in-memory chunk: thread start-up costs more than it saves
_LO_BITS = 26  # mantissas split in 27 + 26 bits: float64 bincount sums stay exact to 2**26 rows
_MAX_EXACT_ROWS = 2**26


def target_rows() -> int:
    return int(config.get("chunks.target-rows", 100_000))


def max_summary_bytes() -> int:
    return int(config.get("chunks.max-summary-bytes", 2**30))


def pack_partitions(sizes: np.ndarray, target: int) -> list[np.ndarray]:
    """Greedy packing of consecutive partitions into chunks of at most ``target`` rows.

    Returns, per chunk, the positions of its partitions (in the order of ``sizes``).
    A partition larger than ``target`` forms a chunk on its own.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    groups: list[np.ndarray] = []
    start, acc = 0, 0
    for i, s in enumerate(sizes):
        if acc and acc + s > target:
            groups.append(np.arange(start, i))
            start, acc = i, 0
        acc += int(s)
    if len(sizes):
        groups.append(np.arange(start, len(sizes)))
    return groups


# ----------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class ChunkSummary:
    """What one input chunk tells the client: O(partitions) numbers, nothing per row.

    Attributes
    ----------
    counts : ndarray of int64, shape (L,)
        Rows per tree leaf (all leaves of the tree, in sorted id order).
    keys, hi, lo : ndarray of int64
        Exact |z| sums as integer mantissa sums per (leaf, binary exponent) bucket:
        ``key = leaf_pos * n_exp + (exp - exp_min)``; value ``(hi << 26) + lo`` times
        ``2 ** exp``. Exact, so the combined sum does not depend on the chunking.
    exp_min, n_exp : int
    nonfinite : ndarray of bool, shape (d,)
        Columns holding NaN or inf in this chunk.
    """

    counts: np.ndarray
    keys: np.ndarray
    hi: np.ndarray
    lo: np.ndarray
    exp_min: int
    n_exp: int
    nonfinite: np.ndarray


def _exact_sums(pos: np.ndarray, v: np.ndarray, n_leaves: int):
    """Integer mantissa sums of ``v >= 0`` per (pos, exponent) bucket (see ChunkSummary)."""
    mant, exp = np.frexp(v)
    m = np.ldexp(mant, 53).astype(np.int64)  # exact: v == m * 2**(exp - 53)
    e = exp.astype(np.int64) - 53
    if len(e) == 0:
        z = np.empty(0, dtype=np.int64)
        return z, z, z, 0, 1
    e_min = int(e.min())
    n_exp = int(e.max()) - e_min + 1
    key = pos * n_exp + (e - e_min)
    n_keys = n_leaves * n_exp
    hi = np.zeros(n_keys, dtype=np.int64)
    lo = np.zeros(n_keys, dtype=np.int64)
    for a in range(0, len(v), _MAX_EXACT_ROWS):  # float64 bincount sums stay exact per slice
        s = slice(a, a + _MAX_EXACT_ROWS)
        hi += np.bincount(key[s], weights=(m[s] >> _LO_BITS), minlength=n_keys).astype(np.int64)
        lo += np.bincount(key[s], weights=(m[s] & ((1 << _LO_BITS) - 1)), minlength=n_keys).astype(np.int64)
    nz = np.flatnonzero(hi | lo)
    return nz.astype(np.int64), hi[nz], lo[nz], e_min, n_exp


def leaf_absz(block: np.ndarray, tree: Any, transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """Leaf id and mean |z| of every row of one raw block."""
    Z = transform(block)
    return _tree.apply_block(Z, tree), np.abs(Z).mean(axis=1)


def chunk_summary(
    block: np.ndarray, tree: Any, transform: Any, leaf_ids: np.ndarray, check_finite: bool = False
) -> ChunkSummary:
    """Counts and exact |z| sums per leaf for one input chunk (runs on a worker)."""
    block = np.asarray(block, dtype=np.float64)
    nonfinite = ~np.isfinite(block).all(axis=0) if check_finite else np.zeros(block.shape[1], dtype=bool)
    if nonfinite.any():  # the client raises naming the columns; no leaf work on bad rows
        z = np.empty(0, dtype=np.int64)
        return ChunkSummary(np.zeros(len(leaf_ids), dtype=np.int64), z, z, z, 0, 1, nonfinite)
    leaves, absz = leaf_absz(block, tree, transform)
    return summarize(np.searchsorted(leaf_ids, leaves), absz, len(leaf_ids), nonfinite)


def summarize(pos: np.ndarray, absz: np.ndarray, n_leaves: int, nonfinite: np.ndarray | None = None) -> ChunkSummary:
    """The :class:`ChunkSummary` of rows with leaf positions ``pos`` and mean |z| ``absz``."""
    counts = np.bincount(pos, minlength=n_leaves).astype(np.int64)
    keys, hi, lo, e_min, n_exp = _exact_sums(pos, absz, n_leaves)
    return ChunkSummary(counts, keys, hi, lo, e_min, n_exp, np.zeros(0, dtype=bool) if nonfinite is None else nonfinite)


def exact_abs_sums(summaries: list[ChunkSummary], n_leaves: int) -> np.ndarray:
    """Correctly rounded |z| sum per leaf over all chunks (independent of the chunking)."""
    exps = [s.exp_min for s in summaries if len(s.keys)]
    if not exps:
        return np.zeros(n_leaves)
    base = min(exps)
    total = [0] * n_leaves
    for s in summaries:
        if not len(s.keys):
            continue
        leaf, e = np.divmod(s.keys, s.n_exp)
        vals = (s.hi << _LO_BITS) + s.lo
        for p, ee, v in zip(leaf.tolist(), (e + s.exp_min - base).tolist(), vals.tolist()):
            total[p] += v << ee
    scale = Fraction(2) ** base
    return np.array([float(t * scale) for t in total], dtype=np.float64)


def check_summary_size(n_chunks: int, n_leaves: int) -> None:
    """Refuse layouts whose per-(chunk, partition) summary would itself be too large."""
    # counts + starts (8 B each) + a few exact-sum buckets (24 B each): 65 B of summary per
    # cell measured at 1M-row chunks and 1500 partitions
    est = 80 * int(n_chunks) * int(n_leaves)
    limit = max_summary_bytes()
    if est > limit:
        raise ValueError(
            f"the per-(input chunk, partition) summary would take about {est / 2**30:.2f} GiB "
            f"({n_chunks} input chunks x {n_leaves} partitions), over "
            f"hvrt.chunks.max-summary-bytes = {limit}: use larger input chunks (rechunk X), "
            f"fewer partitions (n_partitions=...), or raise hvrt.chunks.max-summary-bytes"
        )


# --------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Plan:
    """The layout derived from counts alone.

    Attributes
    ----------
    unique, sizes : ndarray of int64
        Sorted ids of the non-empty partitions and their sizes.
    groups : list of ndarray
        Per output chunk, the positions (in ``unique``) of its partitions.
    tables : list of ChunkPartitions
    bounds : ndarray of int64, shape (n_chunks + 1,)
        Canonical row offset of every output chunk.
    starts : ndarray of int64, shape (n_input_chunks, L) or None
        Canonical position of the first row of each (input chunk, tree leaf).
    """

    unique: np.ndarray
    sizes: np.ndarray
    groups: list[np.ndarray]
    tables: list[ChunkPartitions]
    bounds: np.ndarray
    starts: np.ndarray | None


def plan(counts: np.ndarray, leaf_ids: np.ndarray, target: int) -> Plan:
    """Pack partitions into output chunks from per-(input chunk, leaf) counts.

    Parameters
    ----------
    counts : ndarray of int64, shape (n_input_chunks, L)
    leaf_ids : ndarray of int64, shape (L,)
        Sorted tree leaf ids (columns of ``counts``).
    target : int
        Rows per output chunk (``hvrt.chunks.target-rows``).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = counts.sum(axis=0)
    present = np.flatnonzero(total)
    unique, sizes = np.asarray(leaf_ids, dtype=np.int64)[present], total[present]
    groups = pack_partitions(sizes, target)
    tables = [ChunkPartitions.from_sizes(unique[g], sizes[g]) for g in groups]
    bounds = np.concatenate([[0], np.cumsum([t.n_rows for t in tables])]).astype(np.int64)
    part_start = np.zeros(len(leaf_ids), dtype=np.int64)  # canonical offset of each leaf
    part_start[present] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    starts = part_start + np.cumsum(counts, axis=0) - counts  # rows of earlier input chunks
    return Plan(unique, sizes, [np.asarray(g, dtype=np.int64) for g in groups], tables, bounds, starts)


# ------------------------------------------------------------------------------ shuffle
def _xcols(d: int) -> list[str]:
    return [f"x{j}" for j in range(d)]


_KEYS = ["_partitions", "pos"]


def route_block(
    block: np.ndarray,
    starts: np.ndarray,
    tree: Any,
    transform: Any,
    leaf_ids: np.ndarray,
    bounds: np.ndarray,
) -> np.ndarray:
    """One input chunk as rows of (destination chunk, canonical position, row, values).

    Rows of a partition get consecutive canonical positions in original order, starting
    at ``starts[0, 1 + leaf]`` (that partition's rows in earlier input chunks come first);
    ``starts[0, 0]`` is the global row number of the chunk's first row.
    The integer keys are exact in float64 (< 2**53); :func:`place_rows` restores the dtypes.
    """
    block = np.asarray(block, dtype=np.float64)
    leaves, _ = leaf_absz(block, tree, transform)
    pos = np.searchsorted(leaf_ids, leaves)
    order = np.argsort(pos, kind="stable")
    sp = pos[order]
    counts = np.bincount(sp, minlength=len(leaf_ids))
    rank = np.arange(len(sp), dtype=np.int64) - (np.cumsum(counts) - counts)[sp]
    canon = starts[0, 1:][sp] + rank
    out = np.empty((len(sp), 3 + block.shape[1]), dtype=np.float64)
    out[:, 0] = np.searchsorted(bounds, canon, side="right") - 1
    out[:, 1] = canon
    out[:, 2] = starts[0, 0] + order
    out[:, 3:] = block[order]
    return out


def _typed(df: Any, dtypes: dict[str, Any]) -> Any:
    return df.astype(dtypes)


def unpack_block(df: Any, bounds: np.ndarray, relabel: Any = None, partition_info: dict | None = None) -> Any:
    """One output chunk with its rows placed at their canonical positions (checked).

    ``relabel(c, size)``, when given, says which keyed position (inside chunk ``c``) ends
    at each final position: a permutation of ``range(size)`` applied after placing.
    """
    c = int(partition_info["number"])
    start, size = int(bounds[c]), int(bounds[c + 1] - bounds[c])
    loc = df["pos"].to_numpy(dtype=np.int64) - start
    take = np.full(size, -1, dtype=np.int64)
    ok = len(loc) == size and (loc >= 0).all() and (loc < size).all()
    if ok:
        take[loc] = np.arange(size)
        ok = bool((take >= 0).all())
        if relabel is not None:
            take = take[relabel(c, size)]
    if not ok:
        raise RuntimeError(
            f"output chunk {c} received {len(loc)} rows for {size} canonical positions: the "
            f"input changed between the counting pass and the shuffle (is it deterministic?)"
        )
    return df.iloc[take].drop(columns=[k for k in ("_partitions", "pos") if k in df.columns])


def place_rows(
    keyed: da.Array, bounds: np.ndarray, dtypes: dict[str, Any], method: str, relabel: Any = None
) -> da.Array:
    """Move rows to the output chunks given by their keys with Dask's shuffle.

    ``keyed`` holds, per row, ``[destination chunk, position, *payload]`` (float64; integers
    exact below 2**53). Output chunk ``c`` holds positions ``bounds[c]:bounds[c + 1]`` in
    order. ``dtypes`` names the payload columns and the dtypes they travel in. Returns the
    payload as one float64 dask array with exactly those row chunks (one conversion, so
    the shuffle appears once in the graph). ``relabel``: see :func:`unpack_block`.
    """
    import dask.dataframe as dd
    from dask.dataframe.dask_expr import new_collection
    from dask.dataframe.dask_expr._shuffle import Shuffle

    frame = dd.from_dask_array(keyed, columns=_KEYS + list(dtypes))
    dtypes = {"_partitions": np.int64, "pos": np.int64, **dtypes}
    frame = frame.map_partitions(_typed, dtypes, meta=_typed(frame._meta, dtypes))
    # The destination chunk id *is* the output partition (no hashing): the low-level
    # shuffle expression that set_index/shuffle lower to, with that column given directly.
    shuffled = new_collection(Shuffle(frame.expr, "_partitions", len(bounds) - 1, True, method))
    placed = shuffled.map_partitions(unpack_block, bounds, relabel, meta=frame._meta.drop(columns=_KEYS))
    return placed.astype(np.float64).to_dask_array(lengths=tuple(np.diff(bounds).tolist()))


def shuffle_rows(
    values: da.Array,
    tree: Any,
    transform: Any,
    leaf_ids: np.ndarray,
    layout: Plan,
    store_dtype: np.dtype,
    method: str,
) -> tuple[da.Array, da.Array]:
    """Group the rows of ``values`` into the planned output chunks with a Dask shuffle.

    Returns the grouped raw values (``store_dtype``) and original global row numbers.
    ``method`` is ``"p2p"`` (distributed's peer-to-peer shuffle; needs a client) or
    ``"tasks"``.
    """
    d = int(values.shape[1])
    row0 = np.concatenate([[0], np.cumsum(values.chunks[0])]).astype(np.int64)
    # Each task gets only its own row of starts (one block per input chunk).
    starts = da.from_array(np.column_stack([row0[:-1], layout.starts]), chunks=(1, -1), name=False)
    # A fresh name per call: every key downstream (the shuffle's id included) is unique, so
    # two groupings of the same data never share keys on the scheduler.
    keyed = da.blockwise(
        route_block, "ij", values, "ij", starts, "ik", tree, None, transform, None, leaf_ids, None,
        layout.bounds, None, concatenate=True, align_arrays=False, adjust_chunks={"j": 3 + d}, dtype=np.float64,
        meta=np.empty((0, 0)), name=f"hvrt-route-{uuid.uuid4().hex}",
    )
    placed = place_rows(keyed, layout.bounds, {"row": np.int64, **{c: store_dtype for c in _xcols(d)}}, method)
    return placed[:, 1:].astype(store_dtype), placed[:, 0].astype(np.int64)


def _key_permuted(block: np.ndarray, dest: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    out = np.empty((len(block), 2 + block.shape[1]), dtype=np.float64)
    out[:, 0] = np.searchsorted(bounds, dest, side="right") - 1
    out[:, 1] = dest
    out[:, 2:] = block
    return out


@dataclass(frozen=True)
class _DestinationOrder:
    """``relabel`` for :func:`unpack_block`: the arrival that ends at each slot of a destination block."""

    seed: int
    call: int

    def __call__(self, t: int, size: int) -> np.ndarray:
        return permutation.destination_order(self.seed, self.call, t, size)


def permute_rows(arr: da.Array, seed: int, call: int, chunk_rows: int, method: str) -> da.Array:
    """Canonical row ``i`` of ``arr`` moved to ``permutation.expand_permutation(seed, call, n, chunk_rows)[i]``.

    Nothing of size ``n`` exists anywhere: one task draws the block table
    (``O((n / chunk_rows)**2)`` integers), one small task per grid block takes its column,
    each chunk of ``arr`` keys its rows by (destination block, arrival slot), Dask's shuffle
    moves them into chunks of ``chunk_rows`` rows, and each destination block puts its
    arrivals in their final order.
    """
    n = int(arr.shape[0])
    bounds = permutation.block_bounds(n, chunk_rows)
    token = dask.base.tokenize(seed, call, n, chunk_rows, arr.chunks[0])
    table, column, name = (f"hvrt-expand-permutation-{k}-{token}" for k in ("table", "column", "keys"))
    dsk: dict = {table: (permutation.permutation_table, int(seed), int(call), n, int(chunk_rows))}
    for s in range(len(bounds) - 1):
        dsk[(column, s)] = (operator.getitem, table, (slice(None), s))
    edges = np.concatenate([[0], np.cumsum(arr.chunks[0])]).astype(np.int64)
    for i in range(len(arr.chunks[0])):
        a, b = int(edges[i]), int(edges[i + 1])
        cols = [(column, s) for s in permutation.overlapping_blocks(bounds, a, b)]
        dsk[(name, i)] = (permutation.arrival_slots, int(seed), int(call), a, b, bounds, cols)
    slots = da.Array(dsk, name, chunks=(arr.chunks[0],), dtype=np.int64)
    d = int(arr.shape[1])
    keyed = da.blockwise(_key_permuted, "ij", arr.rechunk({1: -1}), "ij", slots, "i", bounds, None,
                         adjust_chunks={"j": 2 + d}, dtype=np.float64, meta=np.empty((0, 0)),
                         name=f"hvrt-permute-{uuid.uuid4().hex}")
    return place_rows(keyed, bounds, {c: np.float64 for c in _xcols(d)}, method, _DestinationOrder(int(seed), int(call)))


def scatter_rows(arr: da.Array, dest: da.Array, chunk_rows: int, method: str) -> da.Array:
    """``out[dest[i]] = arr[i]`` for a permutation ``dest`` (same row chunks as ``arr``).

    The rows move with Dask's shuffle into float64 chunks of ``chunk_rows`` rows; nothing per
    row reaches the client.
    """
    n, d = int(arr.shape[0]), int(arr.shape[1])
    bounds = np.unique(np.append(np.arange(0, n, max(1, int(chunk_rows)), dtype=np.int64), n))
    keyed = da.blockwise(_key_permuted, "ij", arr.rechunk({1: -1}), "ij", dest, "i", bounds, None,
                         adjust_chunks={"j": 2 + d}, dtype=np.float64, meta=np.empty((0, 0)),
                         name=f"hvrt-scatter-{uuid.uuid4().hex}")
    return place_rows(keyed, bounds, {c: np.float64 for c in _xcols(d)}, method)
