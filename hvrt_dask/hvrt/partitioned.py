"""``PartitionedData``: rows grouped by the fitted tree's partitions, and one way to build it.

``fit`` builds one for the training rows; ``expand(X=...)`` and ``reduce(X=...)`` build a
throw-away one for external data. :func:`partition` is the only place where rows are
assigned to leaves, counted and grouped:

- in memory (numpy / pandas input) one stable argsort of the leaf positions gives the
  canonical order and chunks are numpy views;
- on Dask every input chunk is summarised on the workers, the layout is planned from the
  counts on the client and the rows are moved by Dask's shuffle (P2P under a distributed
  client) — see :mod:`hvrt_dask.hvrt._layout`. Nothing per row reaches the client.

Both produce the same canonical order, so everything downstream is bit-identical.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from hvrt_dask._threads import map_local
from hvrt_dask.hvrt import _layout, _tree
from hvrt_dask.hvrt._chunks import ChunkPartitions


@dataclass
class PartitionedData:
    """Rows grouped so that each partition lies inside one chunk, with its partition tables.

    Attributes
    ----------
    X : dask array, float64, shape (n, d)
        Raw values (original units and column order; categorical codes), grouped rows.
    rows : dask array, int64, shape (n,)
        Original 0-based global row number of every grouped row.
    tables : list of ChunkPartitions
        One per chunk.
    unique, sizes : ndarray of int64
        Sorted non-empty partition ids and their row counts.
    mean_abs_z : ndarray of float64
        Mean over each partition's rows of the row mean |z| (exact sums; chunking-free).
    part_index : list of ndarray
        For each chunk, the positions (in ``unique``) of its partitions.
    cont_cols : ndarray of int
        Indices of the continuous columns inside z-space (``0..d_cont-1``).
    transform : callable
        Raw block → z-space ``[continuous | categorical]``.
    local : dict or None
        numpy blocks ``{"X", "Xz", "rows"}`` per chunk for in-memory data.
    persisted : bool
        The chunks are persisted on the cluster (so are the contexts built from them).
    cache : dict
        Per-chunk prepared contexts (see :mod:`hvrt_dask.hvrt._contexts`).
    """

    X: da.Array
    rows: da.Array
    tables: list[ChunkPartitions]
    unique: np.ndarray
    sizes: np.ndarray
    mean_abs_z: np.ndarray
    part_index: list[np.ndarray]
    cont_cols: np.ndarray
    transform: Any
    local: dict[str, list[np.ndarray]] | None = None
    persisted: bool = False
    cache: dict = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return len(self.tables)

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return tuple(int(t.n_rows) for t in self.tables)

    @property
    def part_chunk(self) -> np.ndarray:
        """For each entry of ``unique``, the chunk holding it."""
        out = np.empty(len(self.unique), dtype=np.int64)
        for c, g in enumerate(self.part_index):
            out[g] = c
        return out

    @property
    def Xz(self) -> da.Array:
        """z-space, same row chunks as ``X`` (derived block-wise: one cheap affine map)."""
        if self.local is not None:
            return _wrap_blocks(self.local["Xz"], "hvrt-grouped-Xz")
        return self.X.map_blocks(self.transform, dtype=np.float64)

    def contexts(self, kind: str, strategy: Any, params: Mapping[str, Any], columns: str) -> Any:
        """Per-chunk prepared contexts (a cached :class:`~._contexts.ContextEntry`)."""
        from hvrt_dask.hvrt._contexts import chunk_contexts

        return chunk_contexts(self, kind, strategy, params, columns)

    def chunk_map(self, fn: Any, rows: int | None = None) -> list[Any]:
        """``[fn(c) for c in chunks]`` for in-memory data (threads when the work is large)."""
        return map_local(fn, self.n_chunks, rows)

    def original_order(self) -> Any:
        """The raw rows in original order (numpy, or a lazy dask array)."""
        if self.local is not None:
            X = np.concatenate(self.local["X"], axis=0)
            out = np.empty_like(X)
            out[np.concatenate(self.local["rows"])] = X
            return out
        method = "p2p" if active_client() is not None else "tasks"
        return _layout.scatter_rows(self.X, self.rows, _layout.target_rows(), method)


def _wrap_blocks(blocks: list[np.ndarray], prefix: str) -> da.Array:
    """A dask array over existing numpy blocks (one per chunk) without copying them."""
    name = f"{prefix}-{uuid.uuid4().hex}"
    first = blocks[0]
    if first.ndim == 1:
        dsk = {(name, i): b for i, b in enumerate(blocks)}
        chunks = (tuple(len(b) for b in blocks),)
    else:
        dsk = {(name, i, 0): b for i, b in enumerate(blocks)}
        chunks = (tuple(len(b) for b in blocks), (first.shape[1],))
    return da.Array(dsk, name, chunks=chunks, dtype=first.dtype)


def active_client() -> Any:
    """The distributed client that will run computations, or None."""
    try:
        from distributed import get_client

        client = get_client()
    except (ImportError, ValueError):
        return None
    sched = dask.config.get("scheduler", None)
    if sched not in (None, "dask.distributed", "distributed"):
        return None
    return client


def _raise_nonfinite(bad: np.ndarray, columns: Any) -> None:
    if bad.any():
        names = ", ".join(repr(columns[j]) for j in np.flatnonzero(bad))
        raise ValueError(f"X contains NaN or infinite values in column(s) {names}")


def partition(
    values: Any,
    tree: Any,
    transform: Any,
    cont_cols: np.ndarray,
    *,
    columns: Any = None,
    check_finite: bool = True,
    target: int | None = None,
    store_dtype: np.dtype | None = None,
    persist: bool | None = None,
) -> PartitionedData:
    """Assign rows to the tree's leaves, count them and group them into partition chunks.

    Parameters
    ----------
    values : ndarray or dask array, float, shape (n, d)
        Raw values (original units; categorical codes).
    tree : fitted DecisionTreeRegressor
    transform : callable
        Raw block → z-space ``[continuous | categorical]`` (picklable).
    cont_cols : ndarray of int
        Continuous columns inside z-space.
    columns : sequence, optional
        Column labels for errors (default: positions).
    check_finite : bool, default True
        Refuse NaN / inf, naming the columns, before any grouping.
    target : int, optional
        Rows per chunk (default ``hvrt.chunks.target-rows``).
    store_dtype : numpy dtype, optional
        Keep the grouped raw chunks in this (narrower, lossless) dtype on the cluster
        (e.g. float32 for float32 input); ``X`` is still exposed as float64.
    persist : bool, optional
        Persist the grouped chunks (default: when a distributed client is active).
    """
    target = _layout.target_rows() if target is None else int(target)
    d = int(values.shape[1])
    columns = list(range(d)) if columns is None else list(columns)
    leaf_ids = _tree.leaf_ids(tree)
    if isinstance(values, da.Array):
        return _partition_lazy(values, tree, transform, cont_cols, leaf_ids, columns, check_finite, target,
                               store_dtype, persist)
    values = np.asarray(values, dtype=np.float64)
    if check_finite:
        _raise_nonfinite(~np.isfinite(values).all(axis=0), columns)
    # Leaf assignment on threads over row blocks (sklearn's apply and numpy release the GIL).
    per_core = max(_layout.LOCAL_MIN_ROWS, -(-len(values) // (os.cpu_count() or 1)))
    spans = [(a, min(a + per_core, len(values))) for a in range(0, max(len(values), 1), per_core)]

    def assign(k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = spans[k]
        Zk = transform(values[a:b])
        return Zk, np.searchsorted(leaf_ids, _tree.apply_block(Zk, tree))

    parts = map_local(assign, len(spans), len(values))
    Z = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    pos = np.concatenate([p[1] for p in parts])
    s = _layout.summarize(pos, np.abs(Z).mean(axis=1), len(leaf_ids))
    if target > 0:  # in memory, chunks are the unit of thread parallelism: a chunk per core
        target = min(target, per_core)
    layout = _layout.plan(s.counts[None, :], leaf_ids, target)
    mean_abs_z = _mean_abs_z([s], leaf_ids, layout)
    order = np.argsort(pos, kind="stable").astype(np.int64)  # canonical order
    Xs, Zs = values[order], Z[order]
    b = layout.bounds
    spans = [(b[c], b[c + 1]) for c in range(len(layout.tables))]
    local = {"X": [Xs[i:j] for i, j in spans], "Xz": [Zs[i:j] for i, j in spans],
             "rows": [order[i:j] for i, j in spans]}
    return PartitionedData(
        X=_wrap_blocks(local["X"], "hvrt-grouped-X"), rows=_wrap_blocks(local["rows"], "hvrt-grouped-rows"),
        tables=layout.tables, unique=layout.unique, sizes=layout.sizes, mean_abs_z=mean_abs_z,
        part_index=layout.groups, cont_cols=np.asarray(cont_cols, dtype=np.int64), transform=transform, local=local,
    )


def _mean_abs_z(summaries: list[_layout.ChunkSummary], leaf_ids: np.ndarray, layout: _layout.Plan) -> np.ndarray:
    sums = _layout.exact_abs_sums(summaries, len(leaf_ids))
    return sums[np.searchsorted(leaf_ids, layout.unique)] / layout.sizes


def _partition_lazy(values, tree, transform, cont_cols, leaf_ids, columns, check_finite, target, store_dtype,
                    persist) -> PartitionedData:
    values = values.rechunk({1: -1})
    _layout.check_summary_size(values.numblocks[0], len(leaf_ids))
    client = active_client()
    tree_d, tf_d, leaves_d = (dask.delayed(o, pure=True) for o in (tree, transform, leaf_ids))
    summaries = dask.compute(*[
        dask.delayed(_layout.chunk_summary, pure=True)(b, tree_d, tf_d, leaves_d, check_finite)
        for b in values.to_delayed().ravel()
    ])
    if check_finite:
        _raise_nonfinite(np.any([s.nonfinite for s in summaries], axis=0), columns)
    layout = _layout.plan(np.stack([s.counts for s in summaries]), leaf_ids, target)
    mean_abs_z = _mean_abs_z(list(summaries), leaf_ids, layout)
    store = np.dtype(np.float64 if store_dtype is None else store_dtype)
    Xg, rows = _layout.shuffle_rows(values, tree, transform, leaf_ids, layout, store,
                                    "p2p" if client is not None else "tasks")
    persist = client is not None if persist is None else bool(persist)
    if persist:
        Xg, rows = dask.persist(Xg, rows)
    if store != np.float64:  # exact: the values came from this dtype
        Xg = Xg.astype(np.float64)
    return PartitionedData(
        X=Xg, rows=rows, tables=layout.tables, unique=layout.unique, sizes=layout.sizes, mean_abs_z=mean_abs_z,
        part_index=layout.groups, cont_cols=np.asarray(cont_cols, dtype=np.int64), transform=transform,
        persisted=persist,
    )


def external(model: Any, X: Any) -> PartitionedData:
    """External data ``X`` partitioned by ``model``'s fitted tree and grouped (uncached).

    Not persisted: the result is used by one call, whose graph then runs the shuffle, the
    contexts and the per-chunk work together (persisted keys of a throw-away object would
    be released while the returned lazy result still needs them).
    """
    from hvrt_dask.hvrt import _input

    values = _input.coerce_like(X, model.input_spec_)  # ValueError naming bad columns
    return partition(values, model.tree_, model.transform_, model.grouped_.cont_cols,
                     columns=model.input_spec_.columns, persist=False)
