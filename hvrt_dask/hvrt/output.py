"""Self-describing, complete ``expand``/``reduce`` outputs, and the one call that reads them.

``output="x.zarr"`` (any path not ending in ``.parquet``/``.pq``) writes a Zarr **group**
that ``xarray.open_zarr`` opens:

- ``data`` — the 2-D variable, dims ``(row, column)``: numbers and category codes (one
  numeric dtype: the input's when all columns share it, else float64);
- ``column`` — coordinate with the column names;
- ``source_row`` (``reduce`` only) — the original 0-based row number of every row, and
  ``source_index`` when the input DataFrame had an index other than a ``RangeIndex``;
- attribute ``hvrt_dask`` — per column name, kind, original dtype, category labels; the
  provenance (seed, strategy and its params, ``n``, model parameters, package versions).

``output="x.parquet"`` writes a Parquet dataset through ``dask.dataframe`` with the original
dtypes (pandas metadata) and the same ``hvrt_dask`` record in the file metadata.

Safety (:mod:`hvrt_dask.ownership`): the path is checked before any work
(:func:`check_target`: it must not exist), the ownership marker is written first, the data
are written by the workers, chunk by chunk, into chunk-aligned regions (never through the
client), and the completion marker comes last. :func:`read_output` refuses an output
without it, so an interrupted write never looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd

from hvrt_dask import ownership
from hvrt_dask.hvrt._input import InputSpec, _numeric_out_dtype, _to_pandas, restore_dtypes_block

VARIABLE, ROW, COLUMN = "data", "row", "column"
SOURCE_ROW, SOURCE_INDEX = "source_row", "source_index"
ATTR = "hvrt_dask"
FORMAT = 1
_PARQUET = (".parquet", ".pq")
#: Largest row count ``expand`` accepts (int64 budget arithmetic stays exact below 2**53).
MAX_ROWS = 2**53


def output_format(path: str | os.PathLike) -> str:
    """``"parquet"`` for ``*.parquet``/``*.pq`` paths, else ``"zarr"``."""
    return "parquet" if os.fspath(path).lower().endswith(_PARQUET) else "zarr"


def check_target(path: str | os.PathLike | None, kind: str, inputs: tuple = ()) -> None:
    """Refuse an output path before any work: it must not exist (nothing is ever overwritten)
    and must not overlap an input (:func:`hvrt_dask.ownership.check_output_path`)."""
    if path is None:
        return
    if os.path.lexists(os.fspath(path)):
        raise ValueError(f"output path {os.fspath(path)!r} already exists; refusing to overwrite")
    ownership.check_output_path(path, kind, inputs=[p for p in inputs if isinstance(p, (str, os.PathLike))])


def check_size(n: int, d: int, output: str | os.PathLike | None) -> None:
    """Refuse row counts that overflow, or whose in-memory result would not fit (no ``output``)."""
    if n > MAX_ROWS:
        raise ValueError(f"n = {n} is too large: at most 2**53 rows can be generated")
    if output is None:
        import psutil

        need = n * d * 8 * 2  # the float64 result plus one working copy
        avail = psutil.virtual_memory().available
        if need > avail:
            raise ValueError(
                f"expand({n}) would need about {need / 2**30:.1f} GiB in memory but {avail / 2**30:.1f} GiB "
                "are available; pass output='path.zarr' (or .parquet) to stream it to disk"
            )


# ------------------------------------------------------------------------------ schema
def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def _dtype_name(spec: InputSpec, j: int) -> str:
    if spec.pandas_dtypes is not None:
        return str(spec.pandas_dtypes[j])
    return str(spec.dtypes[j])


def schema(spec: InputSpec) -> list[dict[str, Any]]:
    """One JSON-able record per column: name, kind, dtype, labels (coded), categories."""
    out = []
    for j, name in enumerate(spec.columns):
        rec: dict[str, Any] = {"name": name, "kind": spec.feature_types[j], "dtype": _dtype_name(spec, j)}
        if j in spec.categories:
            rec["labels"] = [_jsonable(v) for v in spec.categories[j]]
        pdt = spec.pandas_dtypes[j] if spec.pandas_dtypes is not None else None
        if isinstance(pdt, pd.CategoricalDtype):
            rec["categories"] = [_jsonable(v) for v in pdt.categories]
            rec["ordered"] = bool(pdt.ordered)
        out.append(rec)
    return out


def _spec_from_schema(cols: list[dict[str, Any]]) -> InputSpec:
    pdts, dts, cats = [], [], {}
    for j, rec in enumerate(cols):
        if "categories" in rec:
            pdt = pd.CategoricalDtype(rec["categories"], ordered=rec.get("ordered", False))
        else:
            pdt = pd.api.types.pandas_dtype(rec["dtype"])
        pdts.append(pdt)
        dts.append(np.dtype(object) if "labels" in rec else np.dtype(getattr(pdt, "numpy_dtype", pdt)))
        if "labels" in rec:
            labels = np.empty(len(rec["labels"]), dtype=object)
            labels[:] = rec["labels"]
            cats[j] = labels
    return InputSpec("pandas", [c["name"] for c in cols], True, dts, [c["kind"] for c in cols], cats, pdts)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("hvrt-dask", "numpy", "dask", "distributed", "zarr", "xarray", "pandas", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def record(spec: InputSpec, kind: str, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The ``hvrt_dask`` attribute / metadata record of an output."""
    index = spec.index
    return {
        "format": FORMAT,
        "kind": kind,
        "input_kind": spec.kind,
        "columns": schema(spec),
        "index_name": None if index is None or index.name is None else str(index.name),
        "provenance": {**{k: _jsonable(v) if not isinstance(v, Mapping) else {str(a): _jsonable(b) for a, b in v.items()}
                          for k, v in provenance.items()}, "versions": _versions()},
    }


# ------------------------------------------------------------------------------ writing
def _as_dask(arr: Any, rows: int | None = None) -> da.Array:
    if isinstance(arr, da.Array):
        return arr
    arr = np.asarray(arr)
    step = rows or max(1, min(len(arr), 100_000))
    return da.from_array(arr, chunks=(step,) + arr.shape[1:], name=False)


def _uniform(arr: da.Array) -> da.Array:
    """Uniform row chunks (the last may be shorter): every dask chunk is one Zarr chunk."""
    rows = max(1, max(arr.chunks[0]) if arr.shape[0] else 1)
    return arr.rechunk({0: rows})


def _source_index(spec: InputSpec) -> pd.Index | None:
    idx = spec.index
    if idx is None or isinstance(idx, pd.RangeIndex):
        return None
    return idx


def write(
    arr: Any,
    spec: InputSpec,
    path: str | os.PathLike,
    kind: str,
    provenance: Mapping[str, Any],
    rows: Any = None,
) -> str:
    """Write ``arr`` (raw codes, original column order) as a complete, self-describing output.

    Parameters
    ----------
    arr : ndarray or dask array, shape (N, d)
    spec : InputSpec
        The fitted input's description (names, dtypes, kinds, labels).
    path : path
        New Zarr (default) or Parquet (``*.parquet``) output; checked by :func:`check_target`.
    kind : str
        ``"hvrt.expand"`` or ``"hvrt.reduce"`` (the ownership marker's kind).
    provenance : mapping
        Seed, strategy, n, parameters: stored with the output.
    rows : ndarray or dask array of int64, optional
        Original row numbers (``reduce``).

    Returns
    -------
    str
        The resolved output path.
    """
    rec = record(spec, kind, provenance)
    if rows is not None and _source_index(spec) is not None and (rec["index_name"] or SOURCE_INDEX) in spec.columns:
        raise ValueError(f"the input's index name {rec['index_name'] or SOURCE_INDEX!r} is also a column name; "
                         "rename the index (it becomes a column of the reduce output)")
    out = ownership.claim(path, kind, is_file=False)  # ownership marker first
    darr = _as_dask(arr).map_blocks(restore_dtypes_block, spec, dtype=np.float64)
    rows_d = None if rows is None else _as_dask(rows)
    if output_format(out) == "zarr":
        _write_zarr(darr, spec, out, rec, rows_d)
    else:
        _write_parquet(darr, spec, out, rec, rows_d)
    ownership.mark_complete(out, rows=int(darr.shape[0]), kind=kind)  # completion marker last
    return out


def _write_zarr(darr: da.Array, spec: InputSpec, out: str, rec: dict, rows: da.Array | None) -> None:
    import xarray as xr

    data = _uniform(darr.astype(_numeric_out_dtype(spec)))
    variables: dict[str, Any] = {VARIABLE: ((ROW, COLUMN), data)}
    if rows is not None:
        rows = rows.astype(np.int64).rechunk({0: data.chunks[0]})
        variables[SOURCE_ROW] = ((ROW,), rows)
        index = _source_index(spec)
        if index is not None:
            labels = rows.map_blocks(_take_labels, index, dtype=_label_dtype(index))
            variables[SOURCE_INDEX] = ((ROW,), labels)
    ds = xr.Dataset(variables, coords={COLUMN: np.asarray(spec.columns, dtype=object)})
    ds.attrs[ATTR] = json.loads(json.dumps(rec))
    # mode "a": the directory already holds our ownership marker (and nothing else).
    # Consolidated metadata lets a plain xarray.open_zarr(path) open it without warnings.
    with _quiet_zarr():
        ds.to_zarr(out, mode="a", compute=True, consolidated=True)


@contextlib.contextmanager
def _quiet_zarr():
    """Silence zarr's notes about our dot-file markers and v3 consolidated metadata."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at \.hvrt_dask")
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


def _label_dtype(index: pd.Index) -> np.dtype:
    dt = np.asarray(index[:0]).dtype
    return np.asarray(index).astype(str).dtype if dt == object else dt  # fixed width: the longest label


def _take_labels(rows: np.ndarray, index: pd.Index) -> np.ndarray:
    """Index labels of the given rows (object labels as strings, Zarr stores fixed types)."""
    out = np.asarray(index[np.asarray(rows, dtype=np.int64)])
    return out.astype(_label_dtype(index)) if out.dtype == object else out


def _decode_block(block: np.ndarray, spec: InputSpec, rows: Any, labels: Any,
                  index_name: str | None) -> pd.DataFrame:
    """Raw codes → DataFrame with restored dtypes; indexed by source rows (and labels) if given."""
    df = _to_pandas(np.asarray(block), spec)
    if rows is not None:
        df.index = pd.Index(np.asarray(rows, dtype=np.int64), name=SOURCE_ROW)
    if labels is not None:
        df[index_name or SOURCE_INDEX] = np.asarray(labels)
    return df




def _frame(darr: da.Array, spec: InputSpec, rows: da.Array | None, labels: da.Array | None,
           index_name: str | None):
    """A dask DataFrame, one partition per row chunk of ``darr`` (decoded on the workers)."""
    import dask.dataframe as dd
    from dask import delayed

    darr = darr.rechunk({1: -1})
    parts = darr.to_delayed().ravel()
    n = len(parts)
    rparts = [None] * n if rows is None else rows.rechunk({0: darr.chunks[0]}).to_delayed().ravel()
    lparts = [None] * n if labels is None else labels.rechunk({0: darr.chunks[0]}).to_delayed().ravel()
    meta = _decode_block(np.empty((0, darr.shape[1])), spec, None if rows is None else np.empty(0, np.int64),
                         None if labels is None else np.empty(0, dtype=labels.dtype), index_name)
    return dd.from_delayed([delayed(_decode_block)(p, spec, r, lab, index_name)
                            for p, r, lab in zip(parts, rparts, lparts)], meta=meta, verify_meta=False)


def _write_parquet(darr: da.Array, spec: InputSpec, out: str, rec: dict, rows: da.Array | None) -> None:
    index = _source_index(spec) if rows is not None else None
    labels = None if index is None else rows.map_blocks(_take_labels, index, dtype=_label_dtype(index))
    df = _frame(darr, spec, rows, labels, rec["index_name"])
    df.to_parquet(out, write_index=rows is not None, custom_metadata={ATTR.encode(): json.dumps(rec).encode()},
                  compute=True)


# ------------------------------------------------------------------------------ reading
def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The ``hvrt_dask`` record (columns, provenance) of a complete output."""
    p = ownership.require_complete(path, "hvrt_dask output")
    if output_format(p) == "zarr":
        import xarray as xr

        with _quiet_zarr():
            return dict(xr.open_zarr(p).attrs[ATTR])
    import pyarrow.parquet as pq

    files = sorted(f for f in os.listdir(p) if f.endswith(".parquet") and not f.startswith((".", "_")))
    meta = pq.read_schema(os.path.join(p, files[0])).metadata
    return json.loads(meta[ATTR.encode()].decode())


def read_output(path: str | os.PathLike, lazy: bool = False) -> Any:
    """Read an ``expand``/``reduce`` output back with names, dtypes and categories restored.

    Parameters
    ----------
    path : path
        A Zarr group or Parquet dataset written by ``expand(..., output=)`` or
        ``reduce(..., output=)``.
    lazy : bool, default False
        Return a dask DataFrame (one partition per stored chunk / file) instead of pandas.

    Returns
    -------
    pandas.DataFrame or dask.dataframe.DataFrame
        Columns in the original order and dtypes (pandas ``category``/``string``/``bool``,
        integer dtypes, category labels). ``reduce`` outputs are indexed by ``source_row``
        (the original row number) and, when the input DataFrame had an index other than a
        ``RangeIndex``, carry its labels in one more, last column named after that index
        (``source_index`` when it had no name).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    hvrt_dask.ownership.IncompleteOutputError
        The output has no completion marker (its writer was interrupted or still runs).
    """
    p = ownership.require_complete(path, "hvrt_dask output")
    rec = read_record(p)
    spec = _spec_from_schema(rec["columns"])
    if output_format(p) == "parquet":
        import dask.dataframe as dd

        dtypes = dict(zip(spec.columns, spec.pandas_dtypes))  # exact string/category dtypes
        if not lazy:
            return _astype(pd.read_parquet(p), dtypes)
        df = dd.read_parquet(p)
        return df.map_partitions(_astype, dtypes, meta=_astype(df._meta, dtypes))
    import xarray as xr

    with _quiet_zarr():
        ds = xr.open_zarr(p)
    data = ds[VARIABLE].data
    rows = ds[SOURCE_ROW].data if SOURCE_ROW in ds else None
    labels = ds[SOURCE_INDEX].data if SOURCE_INDEX in ds else None
    if lazy:
        return _frame(data, spec, rows, labels, rec["index_name"])
    return _decode_block(np.asarray(data), spec, None if rows is None else np.asarray(rows),
                         None if labels is None else np.asarray(labels), rec["index_name"])


def _astype(df: pd.DataFrame, dtypes: Mapping[str, Any]) -> pd.DataFrame:
    """The recorded dtypes; categoricals re-coded (equal unordered dtypes compare equal in any order)."""
    df = df.astype(dtypes)
    for c, dt in dtypes.items():
        if isinstance(dt, pd.CategoricalDtype):
            df[c] = pd.Categorical(np.asarray(df[c], dtype=object), dtype=dt)
    return df


def open_dataset(path: str | os.PathLike):
    """The complete Zarr output as an ``xarray.Dataset`` (refuses incomplete outputs)."""
    import xarray as xr

    with _quiet_zarr():
        return xr.open_zarr(ownership.require_complete(path, "hvrt_dask output"))
