"""Per-chunk prepared contexts, built on the workers and cached on the fitted model.

One ``map_blocks(..., dtype=object)`` over the grouped z-space data calls
``strategy.prepare(Xz_chunk, table, params)`` once per chunk. The result is a dask object
array of shape ``(n_chunks, 1)`` with chunks ``((1,) * n_chunks, (1,))``, so it lines up
block-for-block with ``grouped_.X`` / ``grouped_.Xz`` (one column chunk) in a later
``map_blocks``. It is persisted (on the cluster, when the grouped data is) and cached on the
:class:`~hvrt_dask.hvrt.partitioned.PartitionedData`, keyed by ``(kind, strategy.name,
id(type(strategy)), frozen params, columns)``; a second call with the same key returns the
cached array without running ``prepare``. In-memory data is prepared on threads, one task
per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions

COLUMNS = ("continuous", "all")


def freeze(value: Any) -> Any:
    """A hashable, order-independent version of a params value (for cache keys)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class ContextEntry:
    """A cached set of per-chunk contexts.

    ``array`` is the persisted dask object array; ``local`` holds the same contexts as a
    list when the model works in memory (so in-memory expands never build a graph).
    """

    array: da.Array
    local: list[Any] | None = None


def _one(obj: Any) -> np.ndarray:
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = obj
    return out


def _prepare_block(
    Z: np.ndarray,
    strategy: Any,
    params: Mapping[str, Any],
    tables: list[ChunkPartitions],
    cols: np.ndarray | None,
    block_id: tuple[int, ...] | None = None,
) -> np.ndarray:
    table = tables[block_id[0]]
    Zc = Z if cols is None else np.ascontiguousarray(Z[:, cols])
    return _one(strategy.prepare(Zc, table, params))


def context_key(kind: str, strategy: Any, params: Mapping[str, Any], columns: str) -> tuple:
    return (kind, strategy.name, id(type(strategy)), freeze(dict(params)), columns)


def chunk_contexts(
    data: Any, kind: str, strategy: Any, params: Mapping[str, Any], columns: str
) -> ContextEntry:
    """Build (or fetch from ``data.cache``) one prepared context per chunk.

    Parameters
    ----------
    data : PartitionedData
        The grouped rows; owns the cache.
    kind : str
        Namespace of the cache (``"generate"``, ``"select"``, ...).
    strategy : object
        Has ``name`` and ``prepare(Xz, parts, params)``.
    params : mapping
        The strategy's options; part of the cache key.
    columns : {"continuous", "all"}
        Which z-space columns ``prepare`` sees.
    """
    if columns not in COLUMNS:
        raise ValueError(f"columns must be one of {COLUMNS}, got {columns!r}")
    key = context_key(kind, strategy, params, columns)
    cache: dict = data.cache
    if key in cache:
        return cache[key]
    cols = data.cont_cols if columns == "continuous" else None
    params = dict(params)
    nb = data.n_chunks
    if data.local is not None:

        def prep(c: int) -> Any:
            Z = data.local["Xz"][c]
            Zc = Z if cols is None else np.ascontiguousarray(Z[:, cols])
            return strategy.prepare(Zc, data.tables[c], params)

        local = data.chunk_map(prep)
        arr = np.empty((nb, 1), dtype=object)
        for c, ctx in enumerate(local):
            arr[c, 0] = ctx
        entry = ContextEntry(da.from_array(arr, chunks=(1, 1), name=False), local)
    else:
        arr = data.Xz.map_blocks(
            _prepare_block,
            strategy,
            params,
            list(data.tables),
            cols,
            dtype=object,
            chunks=((1,) * nb, (1,)),
            meta=np.empty((0, 0), dtype=object),
        )
        entry = ContextEntry(arr.persist() if data.persisted else arr)
    cache[key] = entry
    return entry
