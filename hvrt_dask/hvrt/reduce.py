"""``HVRT.reduce``: representative subset selection as ``map_blocks`` over partition chunks.

The fitted model holds its training rows grouped so that every partition lies inside one
chunk (``grouped_``) and caches one prepared *selection context* per chunk. ``reduce``

1. validates every argument before any work starts;
2. computes the per-partition budgets on the client
   (:func:`~hvrt_dask.hvrt._budgets.reduce_budgets`:
   floor, integerise, clip, redistribute);
3. runs ``strategy.select(context, budgets, rngs)`` once per chunk — a ``map_blocks`` over the
   cached contexts for lazy inputs, or the same per-chunk function on a thread pool for
   in-memory inputs — and gathers the selected raw rows and their original row numbers with
   exactly known output chunks.

Random strategies draw only from ``generator(random_state_, "reduce", call, partition_id)``, so
the selection does not depend on chunking, worker count or scheduler.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd

from hvrt_dask import config
from hvrt_dask._seeding import generator
from hvrt_dask.hvrt._budgets import reduce_budgets
from hvrt_dask.hvrt import output as _output
from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.selection import SelectionStrategy, get_selection_strategy

_VW = (True, False, "size_aware")


class _LazyStreams(Sequence):
    """``rngs[i]`` = the stream of partition ``ids[i]``; built on first use (FPS never draws)."""

    def __init__(self, seed: int, call: int, ids: np.ndarray) -> None:
        self._seed, self._call, self._ids = int(seed), int(call), np.asarray(ids)
        self._cache: dict[int, np.random.Generator] = {}

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if i not in self._cache:
            self._cache[i] = generator(self._seed, "reduce", self._call, int(self._ids[i]))
        return self._cache[i]


def select_chunk(
    strategy: SelectionStrategy,
    context: Any,
    table: ChunkPartitions,
    budgets: np.ndarray,
    seed: int,
    call: int,
) -> np.ndarray:
    """Chunk-local indices selected by ``strategy`` in one chunk (checked against the budgets)."""
    budgets = np.asarray(budgets, dtype=np.int64)
    if table.n_parts == 0 or int(budgets.sum()) == 0:
        return np.empty(0, dtype=np.int64)
    idx = np.asarray(strategy.select(context, budgets, _LazyStreams(seed, call, table.ids)))
    idx = idx.astype(np.int64, copy=False)
    want = int(budgets.sum())
    if idx.shape != (want,):
        raise RuntimeError(
            f"selection strategy {strategy.name!r} returned {idx.shape[0]} rows for a chunk "
            f"whose budgets sum to {want}"
        )
    return idx


def _select_block(
    ctx_block: np.ndarray,
    info_block: np.ndarray,
    strategy: SelectionStrategy,
    seed: int,
    call: int,
) -> np.ndarray:
    table, budgets = info_block[0, 0]
    return select_chunk(strategy, ctx_block[0, 0], table, budgets, seed, call)


def _take_rows(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return X[idx]


def _check_total(n: Any, ratio: Any, n_rows: int) -> int:
    """The requested total ``N`` (reference: ``n`` or ``max(1, floor(ratio * n_rows))``)."""
    if (n is None) == (ratio is None):
        raise ValueError("reduce() needs exactly one of n or ratio (got both or neither)")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real):
            raise TypeError(f"ratio must be a number in (0, 1], got {ratio!r}")
        ratio = float(ratio)
        if not (0.0 < ratio <= 1.0) or not np.isfinite(ratio):
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        return max(1, int(np.floor(ratio * n_rows)))
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n > n_rows:
        raise ValueError(f"n={n} is larger than the data ({n_rows} rows)")
    return n


def _check_strategy(method: Any) -> SelectionStrategy:
    strategy = get_selection_strategy(method)  # ValueError naming unknown names
    if not isinstance(strategy, SelectionStrategy):
        raise TypeError(
            f"method must be a registered name or an object with name, prepare() and select(); "
            f"got {type(strategy).__name__}"
        )
    return strategy


class ReduceMixin:
    """Adds :meth:`reduce` to the fitted HVRT estimator."""

    def reduce(
        self,
        n: int | None = None,
        ratio: float | None = None,
        method: str | SelectionStrategy | None = None,
        variance_weighted: bool | str | None = None,
        return_indices: bool = False,
        X: Any = None,
        output: str | os.PathLike | None = None,
        min_samples_per_partition: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Select a representative subset of the training rows.

        Parameters
        ----------
        n : int, optional
            Number of rows to keep (``1 <= n <= n_rows``). Exactly one of ``n``/``ratio``.
        ratio : float in (0, 1], optional
            Keep ``max(1, floor(ratio * n_rows))`` rows.
        method : str or SelectionStrategy, default ``hvrt.reduce.method`` (``"fps"``)
            ``"centroid_fps"`` (alias ``"fps"``), ``"medoid_fps"``, ``"variance_ordered"``,
            ``"stratified"``, any registered name, or a strategy object.
        variance_weighted : {True, False, "size_aware"}, default ``hvrt.reduce.variance-weighted``
            Budget weights: ``True`` mean |z| per partition (the reference rule, independent of
            size), ``False`` partition size, ``"size_aware"`` size x mean |z|.
        return_indices : bool, default False
            Also return the selected rows' 0-based indices in the original row order (numpy
            int64 for in-memory inputs, a dask array for lazy ones), e.g. to slice ``y``.
        X : array-like, optional
            External data with the training columns: it is partitioned by the fitted tree and
            reduced instead of the training rows (contexts are not cached).
        output : str or path, optional
            Write the selected rows to this new path (Zarr group, or Parquet for
            ``*.parquet``; :mod:`hvrt_dask.hvrt.output`) with their original row numbers
            (``source_row``) and the input DataFrame's index labels, and return the written
            path (read it with :func:`hvrt_dask.hvrt.read_output`).
        min_samples_per_partition : int, optional
            Budget floor per partition (default: the estimator's parameter).
        params : mapping, optional
            Strategy options passed to ``prepare`` (part of the context cache key).

        Returns
        -------
        X_reduced : same kind as the input
            Selected rows, grouped by partition (sorted partition id) — raw original units;
            a pandas result keeps the input's index labels of the selected rows.
        indices : ndarray or dask array of int64
            Only with ``return_indices=True``.
        """
        self._check_fitted()
        # ---- validate everything before any work ---------------------------------------
        if method is None:
            method = config.get("reduce.method", "fps")
        if variance_weighted is None:
            variance_weighted = config.get("reduce.variance-weighted", True)
        if not any(variance_weighted is v or variance_weighted == v for v in _VW) or (
            isinstance(variance_weighted, numbers.Number)
            and not isinstance(variance_weighted, bool)
        ):
            raise ValueError(
                f"variance_weighted must be True, False or 'size_aware', got {variance_weighted!r}"
            )
        if not isinstance(variance_weighted, str):
            variance_weighted = bool(variance_weighted)  # numpy bools
        strategy = _check_strategy(method)
        floor = (
            getattr(self, "min_samples_per_partition", 5)
            if min_samples_per_partition is None
            else min_samples_per_partition
        )
        if isinstance(floor, bool) or not isinstance(floor, numbers.Integral) or floor < 0:
            raise ValueError(f"min_samples_per_partition must be an integer >= 0, got {floor!r}")
        params = dict(params or {})
        if X is not None:
            grouped, sizes, mabsz, contexts = self._reduce_external_layout(X, strategy, params)
        else:
            grouped = self.grouped_
            sizes = np.asarray(self.partition_sizes_, dtype=np.int64)
            mabsz = np.asarray(self.partition_mean_abs_z_, dtype=np.float64)
            contexts = None
        n_rows = int(sizes.sum())
        total = _check_total(n, ratio, n_rows)
        _output.check_target(output, "hvrt.reduce")

        # ---- budgets (client side, P numbers) ------------------------------------------
        budgets = reduce_budgets(sizes, total, mabsz, variance_weighted, int(floor))
        chunk_budgets = [budgets[pi] for pi in grouped.part_index]
        seed = int(self.random_state_)
        call = int(self._next_call("reduce"))

        # ---- per-chunk selection ---------------------------------------------------------
        if contexts is None:
            contexts = self._reduce_contexts(strategy, params)
        tables = list(grouped.tables)
        if grouped.local is not None and contexts.local is not None:
            def run(c: int) -> np.ndarray:
                ctx = contexts.local[c]
                return select_chunk(strategy, ctx, tables[c], chunk_budgets[c], seed, call)

            sel = _map_threads(run, range(len(tables)))
            Xs = np.concatenate([grouped.local["X"][c][s] for c, s in enumerate(sel)])
            rows = np.concatenate([grouped.local["rows"][c][s] for c, s in enumerate(sel)])
            rows = rows.astype(np.int64, copy=False)
        else:
            bchunks = tuple(int(b.sum()) for b in chunk_budgets)
            # Each task gets only its own (table, budgets): one small object block per chunk.
            info = np.empty((len(tables), 1), dtype=object)
            for c, (t, b) in enumerate(zip(tables, chunk_budgets)):
                info[c, 0] = (t, b)
            info_arr = da.from_array(info, chunks=(1, 1), name=False)
            sel = da.map_blocks(
                _select_block,
                contexts.array,
                info_arr,
                strategy,
                seed,
                call,
                dtype=np.int64,
                drop_axis=1,
                chunks=(bchunks,),
                meta=np.empty((0,), dtype=np.int64),
            )
            Xs = da.blockwise(
                _take_rows, "ij", grouped.X, "ij", sel, "i",
                dtype=grouped.X.dtype, align_arrays=False, adjust_chunks={"i": bchunks},
                meta=np.empty((0, 0), dtype=grouped.X.dtype),
            )
            rows = da.blockwise(
                _take_rows, "i", grouped.rows, "i", sel, "i",
                dtype=np.int64, align_arrays=False, adjust_chunks={"i": bchunks},
                meta=np.empty((0,), dtype=np.int64),
            )
        prov = {"stage": "reduce", "n": total, "call": call, "method": strategy.name, "params": params,
                "variance_weighted": variance_weighted, "min_samples_per_partition": int(floor),
                "external_X": X is not None}
        out = self._reduce_output(Xs, output, rows, prov)
        if return_indices:
            return out, rows
        return out

    # ---- helpers (they isolate what reduce needs from the core) -----------------------
    def _reduce_contexts(self, strategy: SelectionStrategy, params: Mapping[str, Any]) -> Any:
        """Per-chunk selection contexts over all z columns, cached on the model."""
        return _contexts_for(self, strategy, params)

    def _reduce_output(self, arr: Any, output: Any, rows: Any, provenance: Mapping[str, Any]) -> Any:
        """The selected rows as the input's kind (a DataFrame keeps its index), or written."""
        if output is not None:
            return self._to_output(arr, output=output, kind="hvrt.reduce", provenance=provenance, rows=rows)
        out = self._to_output(arr)
        index = self.input_spec_.index
        if isinstance(out, pd.DataFrame) and index is not None and not isinstance(rows, da.Array):
            out.index = index[np.asarray(rows, dtype=np.int64)]
        return out

    def _reduce_external_layout(
        self, X: Any, strategy: SelectionStrategy, params: Mapping[str, Any]
    ) -> tuple[Any, np.ndarray, np.ndarray, Any]:
        """Partition external ``X`` with the fitted tree and group it (contexts not cached)."""
        from types import SimpleNamespace

        from hvrt_dask.hvrt import _input, _tree
        from hvrt_dask.hvrt._layout import group_rows

        values = _input.coerce_like(X, self.input_spec_)  # ValueError naming bad columns
        tf = self.transform_
        if isinstance(values, da.Array):
            bad = ~da.isfinite(values).all(axis=0)

            def _leaf_absz(block, tree=self.tree_, tf=tf):
                Z = tf(block)
                return np.column_stack(
                    [_tree.apply_block(Z, tree).astype(np.float64), np.abs(Z).mean(axis=1)]
                )

            bad, la = dask.compute(
                bad,
                values.map_blocks(_leaf_absz, dtype=np.float64, chunks=(values.chunks[0], (2,))),
            )
            leaves, absz = la[:, 0].astype(np.int64), la[:, 1]
        else:
            bad = ~np.isfinite(values).all(axis=0)
            Z = tf(np.asarray(values))
            leaves, absz = _tree.apply_block(Z, self.tree_), np.abs(Z).mean(axis=1)
        if np.any(bad):
            cols = [self.input_spec_.columns[j] for j in np.flatnonzero(bad)]
            raise ValueError(f"X contains NaN or infinite values in column(s) {cols}")
        unique = np.unique(leaves).astype(np.int64)
        pos = np.searchsorted(unique, leaves)
        sizes = np.bincount(pos, minlength=len(unique)).astype(np.int64)
        mabsz = np.bincount(pos, weights=absz, minlength=len(unique)) / sizes
        g = group_rows(values, leaves, unique, sizes, tf, self.grouped_.cont_cols)
        holder = SimpleNamespace(grouped_=g, _context_cache_={})
        return g, sizes, mabsz, _contexts_for(holder, strategy, params)


def _contexts_for(model: Any, strategy: SelectionStrategy, params: Mapping[str, Any]) -> Any:
    """The model's cached :class:`ContextEntry` for ``strategy`` (kind ``"select"``, all columns).

    In-memory data is prepared on a thread pool, one task per chunk (the core's in-memory
    loop is serial), and filed under the core's cache key; lazy data goes through the core's
    ``chunk_contexts`` (a persisted ``map_blocks``).
    """
    from hvrt_dask.hvrt._contexts import ContextEntry, chunk_contexts, context_key

    g = model.grouped_
    cache = model._context_cache_
    key = context_key("select", strategy, params, "all")
    if g.local is not None and key not in cache:
        local = _map_threads(
            lambda c: strategy.prepare(g.local["Xz"][c], g.tables[c], dict(params)),
            range(g.n_chunks),
        )
        arr = np.empty((g.n_chunks, 1), dtype=object)
        for c, ctx in enumerate(local):
            arr[c, 0] = ctx
        cache[key] = ContextEntry(da.from_array(arr, chunks=(1, 1), name=False), local)
    return chunk_contexts(model, "select", strategy, params, "all")


def _map_threads(fn, items) -> list:
    """Run ``fn`` over chunk indices on a small thread pool (numpy/BLAS release the GIL)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(i) for i in items]
    from hvrt_dask._threads import limit_threads

    # One BLAS/OpenMP thread per chunk task: the parallelism comes from the chunks.
    with limit_threads(1), ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, items))
