"""Partitions become chunks: group rows by partition with a Dask shuffle (a take).

Partitions are packed, in sorted partition-id order, into chunks of at most
``hvrt.chunks.target-rows`` rows (a partition larger than that gets a chunk of its own).
Inside a chunk, partitions are contiguous and in sorted-id order, and a partition's rows
keep their original relative order. So the concatenation of all chunks is the same
"canonical" row order whatever the chunk size — which is what makes generated output
independent of chunking.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np

from hvrt_dask import config
from hvrt_dask.hvrt._chunks import ChunkPartitions


@dataclass
class GroupedData:
    """Training rows grouped so that each partition lies inside one chunk.

    Attributes
    ----------
    X : dask array, float64, shape (n, d)
        Raw values (original units and column order; categorical codes), grouped rows.
    Xz : dask array, float64, shape (n, d)
        z-space, columns ``[continuous | categorical]``, same row chunks as ``X``.
    rows : dask array, int64, shape (n,)
        Original 0-based global row index of every grouped row.
    tables : list of ChunkPartitions
        One per chunk.
    cont_cols : ndarray of int
        Indices of the continuous columns inside ``Xz`` (``0..d_cont-1``).
    part_chunk : ndarray of int64
        For each entry of ``unique_partitions_``, the chunk holding it.
    part_index : list of ndarray
        For each chunk, the positions (in ``unique_partitions_``) of its partitions.
    """

    X: da.Array
    Xz: da.Array
    rows: da.Array
    tables: list[ChunkPartitions]
    cont_cols: np.ndarray
    part_chunk: np.ndarray
    part_index: list[np.ndarray] = field(default_factory=list)
    local: dict[str, list[np.ndarray]] | None = None  # numpy blocks for in-memory inputs

    @property
    def n_chunks(self) -> int:
        return len(self.tables)

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return tuple(int(t.n_rows) for t in self.tables)


LOCAL_MIN_ROWS = 5000  # below this, one chunk: thread start-up costs more than it saves
LOCAL_PARALLEL_ROWS = 50_000  # in-memory work of at least this many rows runs chunks on threads


def map_local(fn: Callable[[int], Any], n_items: int, rows: int) -> list[Any]:
    """``[fn(i) for i in range(n_items)]``, on a thread pool when the work is large.

    numpy releases the GIL in the random fills, ufuncs and gathers the strategies spend
    their time in, so chunks run in parallel on threads without copying data.
    """
    workers = min(n_items, os.cpu_count() or 1)
    if workers < 2 or rows < LOCAL_PARALLEL_ROWS:
        return [fn(i) for i in range(n_items)]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, range(n_items)))


def target_rows() -> int:
    return int(config.get("chunks.target-rows", 100_000))


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


def _wrap_blocks(blocks: list[np.ndarray], prefix: str) -> da.Array:
    """A dask array over existing numpy blocks (one per chunk) without copying them."""
    import uuid

    name = f"{prefix}-{uuid.uuid4().hex}"
    first = blocks[0]
    if first.ndim == 1:
        dsk = {(name, i): b for i, b in enumerate(blocks)}
        chunks = (tuple(len(b) for b in blocks),)
    else:
        dsk = {(name, i, 0): b for i, b in enumerate(blocks)}
        chunks = (tuple(len(b) for b in blocks), (first.shape[1],))
    return da.Array(dsk, name, chunks=chunks, dtype=first.dtype)


def group_rows(
    X: Any,
    leaves: np.ndarray,
    unique: np.ndarray,
    sizes: np.ndarray,
    to_z: Callable[[np.ndarray], np.ndarray],
    cont_cols: np.ndarray,
    target: int | None = None,
    persist: bool = False,
    store_dtype: np.dtype | None = None,
) -> GroupedData:
    """Group the rows of ``X`` (numpy or dask) by partition into partition-aligned chunks.

    Parameters
    ----------
    X : ndarray or dask array, shape (n, d)
        Raw float64 values, one column chunk.
    leaves : ndarray of int64, shape (n,)
        Partition id of every row.
    unique, sizes : ndarray
        Sorted partition ids and their sizes.
    to_z : callable
        Block-wise transform raw → z-space ``[continuous | categorical]``.
    target : int, optional
        Rows per chunk (default ``hvrt.chunks.target-rows``).
    persist : bool
        Persist the grouped arrays (when a distributed client is active).
    store_dtype : numpy dtype, optional
        Keep the persisted raw chunks in this (narrower, lossless) dtype, e.g. float32 for
        float32 input; ``X`` is still exposed as float64.
    """
    target = target_rows() if target is None else int(target)
    if not isinstance(X, da.Array) and target > 0:
        # In memory, chunks are the unit of thread parallelism: give every core a chunk
        # (results do not depend on the chunking).
        target = min(target, max(LOCAL_MIN_ROWS, -(-len(leaves) // (os.cpu_count() or 1))))
    pos = np.searchsorted(unique, leaves)
    order = np.argsort(pos, kind="stable").astype(np.int64)  # canonical order
    groups = pack_partitions(sizes, target)
    chunk_sizes = [int(sizes[g].sum()) for g in groups]
    tables = [ChunkPartitions.from_sizes(unique[g], sizes[g]) for g in groups]
    part_chunk = np.empty(len(unique), dtype=np.int64)
    for c, g in enumerate(groups):
        part_chunk[g] = c
    bounds = np.concatenate([[0], np.cumsum(chunk_sizes)]).astype(np.int64)

    if isinstance(X, da.Array):
        # A fancy-index take with the canonical order (dask plans it as a shuffle), then
        # exact partition-aligned row chunks. ``da.shuffle`` with per-chunk groups was
        # measured to be as fast but fails on groups larger than an input chunk
        # (it splits columns and then mis-indexes) in dask 2026.8.0.
        Xg = X[order].rechunk({0: tuple(chunk_sizes), 1: -1})
        rows = da.from_array(order, chunks=(tuple(chunk_sizes),))
        local = None
        narrow = store_dtype is not None and np.dtype(store_dtype) != np.float64
        if narrow:
            Xg = Xg.astype(store_dtype)
        if persist:
            Xg, rows = dask.persist(Xg, rows)
        if narrow:  # exact: the values came from this dtype
            Xg = Xg.astype(np.float64)
        # z-space is derived block-wise from the persisted raw chunks on demand, rather than
        # persisted too: it is one cheap affine map, and keeping it would double the memory.
        Xz = Xg.map_blocks(to_z, dtype=np.float64)
    else:
        Xs = np.asarray(X)[order]
        Zs = to_z(Xs)
        blocks = [(bounds[c], bounds[c + 1]) for c in range(len(groups))]
        local = {
            "X": [Xs[a:b] for a, b in blocks],
            "Xz": [Zs[a:b] for a, b in blocks],
            "rows": [order[a:b] for a, b in blocks],
        }
        Xg = _wrap_blocks(local["X"], "hvrt-grouped-X")
        Xz = _wrap_blocks(local["Xz"], "hvrt-grouped-Xz")
        rows = _wrap_blocks(local["rows"], "hvrt-grouped-rows")
    return GroupedData(
        X=Xg,
        Xz=Xz,
        rows=rows,
        tables=tables,
        cont_cols=np.asarray(cont_cols, dtype=np.int64),
        part_chunk=part_chunk,
        part_index=[np.asarray(g, dtype=np.int64) for g in groups],
        local=local,
    )
