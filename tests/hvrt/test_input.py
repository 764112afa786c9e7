"""Input coercion and output conversion for every supported input kind."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from hvrt_dask.hvrt import _input


def _data(n=50, d=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def test_numpy_stays_in_memory():
    X = _data().astype(np.float32)
    values, spec = _input.coerce_input(X)
    assert isinstance(values, np.ndarray) and values.dtype == np.float64
    assert spec.kind == "numpy" and spec.columns == ["x0", "x1", "x2"]
    out = _input.to_output(values, spec)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, X)


def test_pandas_roundtrip_restores_names_dtypes_and_string_categories():
    df = pd.DataFrame(
        {"a": np.arange(6, dtype=np.int32), "b": np.linspace(0, 1, 6), "c": ["x", "y", "x", "z", "z", "y"]}
    )
    values, spec = _input.coerce_input(df, ["continuous", "continuous", "categorical"])
    assert spec.kind == "pandas" and spec.columns == ["a", "b", "c"]
    # string categories are coded in lexicographic order
    np.testing.assert_array_equal(values[:, 2], [0, 1, 0, 2, 2, 1])
    values[:, 0] += 0.4  # non-integral values of an int column are rounded back
    out = _input.to_output(values, spec)
    assert list(out.columns) == ["a", "b", "c"]
    assert out["a"].dtype == np.int32 and out["a"].tolist() == list(range(6))
    assert out["c"].tolist() == df["c"].tolist()


def test_non_numeric_marked_continuous_raises_naming_column():
    df = pd.DataFrame({"a": [1.0, 2.0], "name": ["p", "q"]})
    with pytest.raises(TypeError, match="'name'"):
        _input.coerce_input(df, ["continuous", "continuous"])
    assert _input.coerce_input(df)[1].feature_types == ["auto", "categorical"]


def test_feature_types_wrong_length():
    with pytest.raises(ValueError, match="feature_types has 2 entries but X has 3 columns"):
        _input.coerce_input(_data(), ["continuous", "continuous"])
    with pytest.raises(ValueError, match="feature_types\\[1\\]"):
        _input.coerce_input(_data(), ["continuous", "ordinal", "continuous"])


def test_dask_array_and_dataframe():
    X = _data(100, 4)
    Xd = da.from_array(X, chunks=(30, 2))
    values, spec = _input.coerce_input(Xd)
    assert isinstance(values, da.Array) and spec.kind == "dask"
    assert len(values.chunks[1]) == 1  # one column chunk
    np.testing.assert_array_equal(values.compute(), X)
    import dask.dataframe as dd

    ddf = dd.from_pandas(pd.DataFrame(X, columns=list("pqrs")), npartitions=3)
    values, spec = _input.coerce_input(ddf)
    assert spec.kind == "dask_dataframe" and spec.columns == list("pqrs")
    out = _input.to_output(values, spec)
    assert isinstance(out, dd.DataFrame) and list(out.columns) == list("pqrs")
    np.testing.assert_allclose(out.compute().to_numpy(), X)


def test_zarr_array_and_path(tmp_path):
    import zarr

    X = _data(120, 3).astype(np.float32)
    path = str(tmp_path / "x.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(40, 3), dtype=np.float32)
    z[:] = X
    for src in (path, zarr.open_array(path, mode="r")):
        values, spec = _input.coerce_input(src)
        assert spec.kind == "zarr" and isinstance(values, da.Array)
        np.testing.assert_array_equal(values.compute(), X.astype(np.float64))
    out = _input.to_output(values, spec)
    assert isinstance(out, da.Array) and out.dtype == np.float32
    np.testing.assert_array_equal(out.compute(), X)


def test_missing_zarr_path():
    with pytest.raises(ValueError, match="does not exist"):
        _input.coerce_input("/nonexistent/path.zarr")


def test_xarray():
    import xarray as xr

    X = _data(40, 3)
    arr = xr.DataArray(X, dims=("row", "feat"), coords={"feat": ["u", "v", "w"]})
    values, spec = _input.coerce_input(arr)
    assert spec.kind == "xarray" and spec.columns == ["u", "v", "w"]
    np.testing.assert_array_equal(values.compute(), X)


def test_unsupported_type():
    with pytest.raises(TypeError, match="unsupported input type"):
        _input.coerce_input({"a": 1})
    with pytest.raises(ValueError, match="2-dimensional"):
        _input.coerce_input(np.ones(5))


def test_fit_expand_on_dask_dataframe():
    """A dask DataFrame in gives a lazy dask DataFrame out with the same columns."""
    import dask.dataframe as dd

    from hvrt_dask import HVRT

    X = _data(600, 4)
    ddf = dd.from_pandas(pd.DataFrame(X, columns=list("abcd")), npartitions=3)
    model = HVRT(random_state=0).fit(ddf)
    ref = HVRT(random_state=0).fit(X)
    assert model.n_partitions_ == ref.n_partitions_
    out = model.expand(900)
    assert isinstance(out, dd.DataFrame) and list(out.columns) == list("abcd")
    got = out.compute().to_numpy()
    # the same rows as from the numpy input: the input container changes nothing
    np.testing.assert_array_equal(got, np.asarray(ref.expand(900)))
