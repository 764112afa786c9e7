"""``HVRT.reduce``: argument validation, output kinds, indices, external X, caching."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import zarr

from hvrt_dask.hvrt import read_output
from hvrt_dask.hvrt.estimator import HVRT


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(11)
    A = rng.standard_normal((1500, 4))
    A[:, 3] = A[:, 0] * 0.5 + rng.standard_normal(1500) * 0.5
    return A


@pytest.fixture(scope="module")
def model(X):
    return HVRT(random_state=0).fit(X)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of n or ratio"),
        ({"n": 10, "ratio": 0.5}, "exactly one of n or ratio"),
        ({"ratio": 0.0}, r"ratio must be in \(0, 1\]"),
        ({"ratio": 1.5}, r"ratio must be in \(0, 1\]"),
        ({"ratio": -0.1}, r"ratio must be in \(0, 1\]"),
        ({"n": 1501}, "n=1501 is larger than the data"),
        ({"n": 0}, "n must be at least 1"),
        ({"n": 10, "method": "nope"}, "unknown selection strategy 'nope'"),
        ({"n": 10, "variance_weighted": "yes"}, "variance_weighted must be"),
        ({"n": 10, "min_samples_per_partition": -1}, "min_samples_per_partition"),
    ],
)
def test_bad_arguments_raise_value_error_before_work(model, kwargs, match, tmp_path):
    calls = dict(model._call_counters_)
    out = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match=match):
        model.reduce(output=out, **kwargs)
    assert not out.exists()  # nothing written
    assert model._call_counters_ == calls  # no call consumed


def test_bad_types_raise_type_error(model):
    with pytest.raises(TypeError, match="n must be a positive integer"):
        model.reduce(n=2.5)
    with pytest.raises(TypeError, match="ratio must be a number"):
        model.reduce(ratio="0.3")


def test_external_x_with_wrong_columns(X):
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    m = HVRT(random_state=0).fit(df)
    with pytest.raises(ValueError, match=r"missing the fitted columns \['d'\]"):
        m.reduce(n=10, X=df[["a", "b", "c"]])
    m2 = HVRT(random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 3 columns but the model was fitted on 4"):
        m2.reduce(n=10, X=X[:, :3])


def test_external_x_is_reduced_with_its_own_indices(X, model):
    ext = X[::2] + 0.01
    out, idx = model.reduce(n=100, X=ext, method="fps", return_indices=True)
    assert out.shape == (100, 4)
    np.testing.assert_array_equal(out, ext[idx])
    # same as fitting nothing new: the external rows are partitioned by the fitted tree
    leaves = model.apply_raw(ext)
    assert set(np.unique(leaves[idx])) <= set(model.unique_partitions_)
    with pytest.raises(ValueError, match="n=800 is larger than the data"):
        model.reduce(n=800, X=ext)


def test_numpy_output_and_indices(X, model):
    out, idx = model.reduce(ratio=0.2, return_indices=True)
    assert isinstance(out, np.ndarray) and out.shape == (300, 4)
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64
    assert len(np.unique(idx)) == 300
    np.testing.assert_array_equal(out, X[idx])
    only = model.reduce(ratio=0.2)
    assert isinstance(only, np.ndarray)


def test_pandas_output_keeps_column_names_and_slices_y(X):
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    y = pd.Series(np.arange(len(df)) * 2)
    m = HVRT(random_state=0).fit(df)
    out, idx = m.reduce(n=200, method="variance_ordered", return_indices=True)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(out.to_numpy(), X[idx])
    np.testing.assert_array_equal(y.to_numpy()[idx], 2 * idx)


def test_lazy_output_has_known_chunks_and_does_not_depend_on_chunking(X, sync_scheduler):
    results = []
    for in_chunks, target in ((300, 200), (1500, 10**6), (512, 700)):
        with dask.config.set({"hvrt.chunks.target-rows": target}):
            m = HVRT(random_state=0).fit(da.from_array(X, chunks=(in_chunks, -1)))
        out, idx = m.reduce(ratio=0.3, method="medoid_fps", return_indices=True)
        assert isinstance(out, da.Array) and isinstance(idx, da.Array)
        assert sum(out.chunks[0]) == 450 and out.chunks[1] == (4,)
        assert len(out.chunks[0]) == m.grouped_.n_chunks
        o, i = dask.compute(out, idx)
        np.testing.assert_array_equal(o, X[i])
        results.append(i)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    # in-memory model gives the same selection
    np.testing.assert_array_equal(
        HVRT(random_state=0).fit(X).reduce(ratio=0.3, method="medoid_fps", return_indices=True)[1],
        results[0],
    )


def test_zarr_path_output(X, tmp_path, sync_scheduler):
    src = tmp_path / "in.zarr"
    z = zarr.create_array(str(src), shape=X.shape, chunks=(400, 4), dtype="f8")
    z[:] = X
    m = HVRT(random_state=0).fit(str(src))
    dst = tmp_path / "out.zarr"
    out, idx = m.reduce(n=150, method="fps", output=dst, return_indices=True)
    back = read_output(dst)
    i = np.asarray(idx.compute() if hasattr(idx, "compute") else idx)
    np.testing.assert_array_equal(back.to_numpy(), X[i])
    np.testing.assert_array_equal(back.index.to_numpy(), i)  # source_row: the original row numbers
    with pytest.raises(ValueError, match="already exists"):
        m.reduce(n=150, output=dst)


def test_contexts_are_cached_and_reused(X):
    from hvrt_dask.hvrt.selection.variance_ordered import VarianceOrderedStrategy

    class Counting(VarianceOrderedStrategy):
        name = "test_counting_vo"
        prepared = 0

        def prepare(self, Xz, parts, params):
            type(self).prepared += 1
            return super().prepare(Xz, parts, params)

    strat = Counting()
    with dask.config.set({"hvrt.chunks.target-rows": 500}):
        m = HVRT(random_state=0).fit(X)
    a = m.reduce(n=200, method=strat, return_indices=True)[1]
    assert Counting.prepared == m.grouped_.n_chunks > 1
    b = m.reduce(n=300, method=strat, return_indices=True)[1]
    assert Counting.prepared == m.grouped_.n_chunks  # second call reused the contexts
    # the ranking is cached, so a larger budget extends the smaller selection
    assert set(a) <= set(b)


def test_size_aware_weighting_tracks_the_data_better_than_the_reference_rule(X):
    m = HVRT(random_state=0).fit(X)
    sd = X.std(axis=0)

    def marginal_err(vw):
        out = m.reduce(ratio=0.1, method="stratified", variance_weighted=vw)
        return np.mean(np.abs(out.std(axis=0) - sd) / sd)

    # the reference rule oversamples high-|z| leaves and inflates the spread
    assert marginal_err("size_aware") < marginal_err(True)


def test_lazy_external_x_matches_in_memory(X, sync_scheduler):
    ext = X[::2] + 0.01
    lazy = HVRT(random_state=0).fit(da.from_array(X, chunks=(500, -1)))
    o, i = lazy.reduce(n=100, X=da.from_array(ext, chunks=(300, -1)), method="variance_ordered",
                       return_indices=True)
    o, i = dask.compute(o, i)
    np.testing.assert_array_equal(o, ext[i])
    _, i2 = HVRT(random_state=0).fit(X).reduce(n=100, X=ext, method="variance_ordered",
                                               return_indices=True)
    np.testing.assert_array_equal(i, i2)
