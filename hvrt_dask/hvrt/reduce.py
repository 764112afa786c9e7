"""``HVRT.reduce``: representative subset selection as ``map_blocks`` over partition chunks.

The fitted model holds its training rows grouped so that every partition lies inside one
chunk (``grouped_``, a :class:`~hvrt_dask.hvrt.partitioned.PartitionedData`) which caches one
prepared *selection context* per chunk. :func:`reduce` (``HVRT.reduce``)

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
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from hvrt_dask import config
from hvrt_dask._seeding import generator
from hvrt_dask.hvrt import output as _output
from hvrt_dask.hvrt._budgets import reduce_budgets
from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.partitioned import external
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


def reduce(
    model: Any,
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
    model : fitted HVRT estimator
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
        a pandas result keeps the input's index labels of the selected rows. The written
        path (str) when ``output`` is given.
    indices : ndarray or dask array of int64
        Only with ``return_indices=True``.
    """
    model._check_fitted()
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
        getattr(model, "min_samples_per_partition", 5)
        if min_samples_per_partition is None
        else min_samples_per_partition
    )
    if isinstance(floor, bool) or not isinstance(floor, numbers.Integral) or floor < 0:
        raise ValueError(f"min_samples_per_partition must be an integer >= 0, got {floor!r}")
    params = dict(params or {})
    _output.check_target(output, "hvrt.reduce")
    grouped = model.grouped_ if X is None else external(model, X)
    sizes, mabsz = grouped.sizes, grouped.mean_abs_z
    total = _check_total(n, ratio, int(sizes.sum()))

    # ---- budgets (client side, P numbers) ------------------------------------------
    budgets = reduce_budgets(sizes, total, mabsz, variance_weighted, int(floor))
    chunk_budgets = [budgets[pi] for pi in grouped.part_index]
    seed = int(model.random_state_)
    call = int(model._next_call("reduce"))

    # ---- per-chunk selection ---------------------------------------------------------
    contexts = grouped.contexts("select", strategy, params, "all")
    tables = list(grouped.tables)
    if grouped.local is not None and contexts.local is not None:
        def run(c: int) -> np.ndarray:
            ctx = contexts.local[c]
            return select_chunk(strategy, ctx, tables[c], chunk_budgets[c], seed, call)

        sel = grouped.chunk_map(run)
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
    # The labels the selected row numbers refer to: the training input's, or external X's.
    index = model.input_spec_.index if X is None else (X.index if isinstance(X, pd.DataFrame) else None)
    out = _reduce_output(model, Xs, output, rows, prov, index)
    if return_indices:
        return out, rows
    return out


def _reduce_output(model: Any, arr: Any, output: Any, rows: Any, provenance: Mapping[str, Any], index: Any) -> Any:
    """The selected rows as the input's kind (a DataFrame keeps the labels in ``index``), or written."""
    if output is not None:
        return model._to_output(arr, output=output, kind="hvrt.reduce", provenance=provenance, rows=rows,
                                index=index)
    out = model._to_output(arr)
    if isinstance(out, pd.DataFrame) and index is not None and not isinstance(rows, da.Array):
        out.index = index[np.asarray(rows, dtype=np.int64)]
    return out
