"""Input coercion and output conversion.

Every supported input kind (numpy, pandas, dask array, dask DataFrame, Zarr array or path,
xarray DataArray) becomes a float64 array of *codes* plus an :class:`InputSpec` that
remembers what came in: the kind, column names, per-column dtypes, feature types and the
category labels of non-numeric categorical columns. :func:`to_output` turns a result in
original units back into the input's kind.

In-memory inputs (numpy, pandas) stay numpy so small problems never pay for a task graph;
everything else becomes a lazy dask array with a single column chunk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from hvrt_dask.hvrt._columns import check_feature_types

LAZY_KINDS = ("dask", "dask_dataframe", "zarr", "xarray")


@dataclass
class InputSpec:
    """What the training input looked like (used to mirror it on output).

    Attributes
    ----------
    kind : str
        One of ``"numpy"``, ``"pandas"``, ``"dask"``, ``"dask_dataframe"``, ``"zarr"``,
        ``"xarray"``.
    columns : list of str
        Column names (``"x0"``, ``"x1"``, ... when the input had none).
    has_names : bool
        Whether the input carried column names (pandas, dask DataFrame, xarray coords).
    dtypes : list of numpy.dtype
        Original per-column dtypes (``object`` for non-numeric categoricals).
    feature_types : list of str
        Per column: ``"auto"`` (until ``fit`` resolves it) or a kind of
        :data:`hvrt_dask.hvrt._columns.KINDS`.
    categories : dict of int to ndarray
        For non-numeric categorical columns: the original labels (object array), indexed by
        code; codes follow the lexicographic order of the labels' string form.
    pandas_dtypes : list, optional
        The exact pandas dtypes (``category``, nullable ints, ...) to restore on output.
    """

    kind: str
    columns: list[str]
    has_names: bool
    dtypes: list[np.dtype]
    feature_types: list[str]
    categories: dict[int, np.ndarray] = field(default_factory=dict)
    pandas_dtypes: list[Any] | None = None
    index: Any = None  # the pandas index of a DataFrame input (reduce outputs carry it)

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def lazy(self) -> bool:
        return self.kind in LAZY_KINDS

    @property
    def integer_mask(self) -> np.ndarray:
        return np.array([np.issubdtype(dt, np.integer) or dt == np.bool_ for dt in self.dtypes])


def _is_numeric(dt: np.dtype) -> bool:
    return np.issubdtype(dt, np.number) or dt == np.bool_


def _encode_labels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..K-1 in lexicographic order of the string form (as the reference does).

    Returns the codes and the original label objects (not their strings), so labels of any
    type round-trip exactly.
    """
    strs = values.astype(str)
    _, first, inv = np.unique(strs, return_index=True, return_inverse=True)
    labels = np.empty(len(first), dtype=object)
    labels[:] = list(values[first])
    return inv.reshape(-1).astype(np.float64), labels


def label_strings(labels: np.ndarray) -> np.ndarray:
    """The sorted string forms the codes of :func:`_encode_labels` index."""
    return np.asarray(labels).astype(str)


def _check_names(labels: Sequence[Any]) -> list[str]:
    """Column labels as strings; refuses duplicates and labels that collide once stringified."""
    names = [str(c) for c in labels]
    seen: dict[str, Any] = {}
    for raw, name in zip(labels, names):
        if name in seen:
            what = "duplicate column name" if seen[name] == raw else "column labels that collide as strings"
            raise ValueError(f"{what}: {seen[name]!r} and {raw!r} both become {name!r}; rename the columns")
        seen[name] = raw
    return names


def _check_rows(n: int) -> None:
    if n == 0:
        raise ValueError("X has 0 rows; HVRT needs data to fit")


def _from_pandas(X, feature_types) -> tuple[np.ndarray, InputSpec]:
    import pandas as pd

    columns = _check_names(list(X.columns))
    d = len(columns)
    ft = check_feature_types(feature_types, d)
    _check_rows(len(X))
    out = np.empty((len(X), d), dtype=np.float64)
    dtypes: list[np.dtype] = []
    categories: dict[int, np.ndarray] = {}
    for j, name in enumerate(X.columns):
        col = X[name]
        pd_dt = col.dtype
        if pd.api.types.is_complex_dtype(pd_dt):
            raise ValueError(f"Complex data not supported: column {columns[j]!r} is {pd_dt}; HVRT needs real values")
        if isinstance(pd_dt, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(pd_dt) or not _pandas_numeric(pd_dt):
            if ft[j] not in ("categorical", "constant", "auto"):
                raise TypeError(
                    f"column {columns[j]!r} is non-numeric ({pd_dt}); mark it 'categorical' "
                    "in feature_types or encode it numerically"
                )
            ft[j] = "categorical" if ft[j] == "auto" else ft[j]
            vals = col.astype(object).to_numpy()
            if pd.isna(vals).any():
                raise ValueError(f"column {columns[j]!r} contains missing values")
            out[:, j], categories[j] = _encode_labels(vals)
            dtypes.append(np.dtype(object))
        else:
            vals = col.to_numpy(dtype=np.float64, na_value=np.nan)
            out[:, j] = vals
            dtypes.append(np.dtype(pd_dt.numpy_dtype) if hasattr(pd_dt, "numpy_dtype") else np.dtype(pd_dt))
    spec = InputSpec("pandas", columns, True, dtypes, ft, categories, list(X.dtypes), X.index)
    spec.has_names = all(isinstance(c, str) for c in X.columns)
    return out, spec


def _pandas_numeric(dt) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt))


def _numeric_spec(arr: Any, kind: str, feature_types, columns=None, has_names=False) -> InputSpec:
    """Validate a 2-D numeric array (numpy or dask) and describe it."""
    if arr.ndim != 2:
        raise ValueError(f"X must be 2-dimensional, got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"Complex data not supported: X has dtype {arr.dtype}; HVRT needs real values")
    _check_rows(int(arr.shape[0]))
    if not _is_numeric(arr.dtype):
        raise TypeError(
            f"X has non-numeric dtype {arr.dtype}; encode categoricals numerically "
            "(or pass a pandas DataFrame with feature_types)"
        )
    d = arr.shape[1]
    ft = check_feature_types(feature_types, d)
    cols = _check_names(columns) if columns is not None else [f"x{j}" for j in range(d)]
    return InputSpec(kind, list(cols), has_names, [np.dtype(arr.dtype)] * d, ft)


def _numeric_dask(arr: da.Array, kind: str, feature_types, columns=None, has_names=False):
    spec = _numeric_spec(arr, kind, feature_types, columns, has_names)
    return arr.astype(np.float64).rechunk({1: -1}), spec


def coerce_input(X: Any, feature_types: Sequence[str] | None = None) -> tuple[Any, InputSpec]:
    """Return ``(values, spec)``: float64 values (numpy for in-memory inputs, else dask).

    Raises
    ------
    TypeError
        Unsupported input type, or non-numeric columns without ``feature_types``.
    ValueError
        Wrong dimensionality or a ``feature_types`` list of the wrong length.
    """
    import pandas as pd
    import scipy.sparse

    if scipy.sparse.issparse(X):
        raise TypeError("sparse input is not supported: HVRT needs dense data; pass X.toarray()")
    if isinstance(X, pd.DataFrame):
        return _from_pandas(X, feature_types)
    if isinstance(X, pd.Series):
        raise ValueError("X must be 2-dimensional; got a pandas Series (use X.to_frame())")
    if isinstance(X, da.Array):
        return _numeric_dask(X, "dask", feature_types)
    try:
        import dask.dataframe as dd

        if isinstance(X, dd.DataFrame):
            cols = list(X.columns)
            for c, dt in zip(cols, X.dtypes):
                if not _pandas_numeric(dt):
                    raise TypeError(
                        f"column {c!r} is non-numeric ({dt}); dask DataFrame inputs need "
                        "numeric (coded) categoricals"
                    )
            arr = X.to_dask_array(lengths=True)
            values, spec = _numeric_dask(arr, "dask_dataframe", feature_types, cols, True)
            spec.dtypes = [np.dtype(dt) for dt in X.dtypes]
            spec.has_names = all(isinstance(c, str) for c in X.columns)
            return values, spec
    except ImportError:  # pragma: no cover - dask[dataframe] is a pinned dependency
        pass
    try:
        import xarray as xr

        if isinstance(X, xr.DataArray):
            if X.ndim != 2:
                raise ValueError(f"X must be 2-dimensional, got dims {X.dims}")
            data = X.data if isinstance(X.data, da.Array) else da.from_array(np.asarray(X.data))
            coord = X.dims[1]
            names = list(X[coord].values) if coord in X.coords else None
            return _numeric_dask(data, "xarray", feature_types, names, names is not None)
    except ImportError:  # pragma: no cover
        pass
    import zarr

    if isinstance(X, (str, os.PathLike)):
        path = os.fspath(X)
        if not os.path.exists(path):
            raise ValueError(f"Zarr path {path!r} does not exist")
        try:
            X = zarr.open_array(path, mode="r")
        except Exception as exc:
            raise ValueError(f"{path!r} is not a Zarr array: {exc}") from None
    if isinstance(X, zarr.Array):
        return _numeric_dask(da.from_zarr(X), "zarr", feature_types)
    if isinstance(X, (list, tuple)) or isinstance(X, np.ndarray):
        arr = np.asarray(X)
        if arr.dtype == object:  # numbers held as objects work; anything else is refused
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"X has non-numeric dtype object ({exc}); encode categoricals numerically "
                    "or pass a pandas DataFrame"
                ) from None
        spec = _numeric_spec(arr, "numpy", feature_types)
        return np.asarray(arr, dtype=np.float64), spec
    raise TypeError(
        f"unsupported input type {type(X).__name__}; expected a numpy array, pandas or dask "
        "DataFrame, dask array, Zarr array or path, or xarray DataArray"
    )


def coerce_like(X: Any, spec: InputSpec) -> Any:
    """Coerce external data ``X`` to the fitted column layout (names matched when known).

    Raises ``ValueError`` naming the missing columns or the column-count mismatch.
    """
    import pandas as pd

    if isinstance(X, pd.DataFrame) and spec.has_names:
        missing = [c for c in spec.columns if c not in [str(c2) for c2 in X.columns]]
        if missing:
            raise ValueError(f"X is missing the fitted columns {missing}")
        X = X.rename(columns=str)[spec.columns]
    values, new = coerce_input(X, None)
    if new.n_features != spec.n_features:
        raise ValueError(f"X has {new.n_features} columns but the model was fitted on {spec.n_features}")
    for j, cats in spec.categories.items():
        if j in new.categories:  # re-map labels onto the fitted codes
            cats = label_strings(cats)
            labels = label_strings(new.categories[j])[values[:, j].astype(np.int64)]
            pos = np.searchsorted(cats, labels)
            bad = (pos >= len(cats)) | (cats[np.minimum(pos, len(cats) - 1)] != labels)
            if bad.any():
                raise ValueError(f"column {spec.columns[j]!r} has unseen categories {sorted(set(labels[bad]))[:5]}")
            values[:, j] = pos
    return values


def restore_dtypes_block(block: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Round the integer-dtype columns of a float block (they are cast back to integers).

    Categorical and discrete values are never rounded: they are exact copies of observed
    values (e.g. a numeric categorical {0.25, 0.5}).
    """
    mask = spec.integer_mask
    if mask.any():
        block = block.copy()
        block[:, mask] = np.rint(block[:, mask])
    return block


def _numeric_out_dtype(spec: InputSpec) -> np.dtype:
    kinds = {dt for dt in spec.dtypes}
    if len(kinds) == 1 and _is_numeric(next(iter(kinds))):
        return next(iter(kinds))
    return np.dtype(np.float64)


def to_output(arr: Any, spec: InputSpec) -> Any:
    """Convert a result in original units (float, original column order) to the input's kind.

    Parameters
    ----------
    arr : ndarray or dask array, shape (N, d)
    spec : InputSpec

    Writing to disk is :func:`hvrt_dask.hvrt.output.write`'s job.
    """
    arr = arr if isinstance(arr, da.Array) else np.asarray(arr)
    if spec.kind in ("numpy", "pandas"):
        out = np.asarray(arr.compute() if isinstance(arr, da.Array) else arr)
        out = restore_dtypes_block(out, spec)
        if spec.kind == "numpy":
            return out.astype(_numeric_out_dtype(spec), copy=False)
        return _to_pandas(out, spec)
    darr = arr if isinstance(arr, da.Array) else da.from_array(arr, chunks=(max(1, min(len(arr), 100_000)), -1))
    darr = darr.map_blocks(restore_dtypes_block, spec, dtype=np.float64).astype(_numeric_out_dtype(spec))
    if spec.kind == "dask_dataframe":
        import dask.dataframe as dd

        df = dd.from_dask_array(darr, columns=spec.columns)
        return df.astype({c: dt for c, dt in zip(spec.columns, spec.dtypes)})
    if spec.kind == "xarray":
        import xarray as xr

        return xr.DataArray(darr, dims=("sample", "feature"), coords={"feature": spec.columns} if spec.has_names else None)
    return darr


def _to_pandas(out: np.ndarray, spec: InputSpec):
    import pandas as pd

    data = {}
    for j, name in enumerate(spec.columns):
        col = out[:, j]
        if j in spec.categories:
            cats = spec.categories[j]
            vals = cats[np.clip(col.astype(np.int64), 0, len(cats) - 1)]
            s = pd.Series(vals, name=name)
        else:
            s = pd.Series(col.astype(spec.dtypes[j]) if _is_numeric(spec.dtypes[j]) else col, name=name)
        if spec.pandas_dtypes is not None:
            try:
                s = s.astype(spec.pandas_dtypes[j])
            except (TypeError, ValueError):
                pass
        data[name] = s
    return pd.DataFrame(data)
