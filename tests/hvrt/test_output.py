"""Self-describing, complete outputs: Zarr groups and Parquet read back exactly; incomplete refused.

The reference for every written output is the in-memory result of an identically seeded
model (``expand``/``reduce`` without ``output``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from hvrt_dask import ownership
from hvrt_dask.hvrt import HVRT, read_output
from hvrt_dask.hvrt.output import read_record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _frame(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    return pd.DataFrame({
        "x": z[:, 0],
        "n": rng.integers(0, 300, n).astype(np.int32),
        "level": rng.choice([-0.25, 0.5], n),
        "city": np.where(z[:, 1] > 0, "Oslo", "Rome"),
        "grade": pd.Categorical(rng.choice([3, 1, 2], n)),
        "flag": z[:, 1] > 1.0,
        "const": 4,
    }, index=pd.Index([f"id{i}" for i in range(n)], name="rid"))


@pytest.fixture(scope="module")
def df():
    return _frame()


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_expand_round_trip(df, tmp_path, suffix):
    ref = HVRT(random_state=3).fit(df).expand(2000)
    path = tmp_path / f"out{suffix}"
    written = HVRT(random_state=3).fit(df).expand(2000, output=str(path))
    assert written == os.path.realpath(path)
    for got in (read_output(path), read_output(written, lazy=True).compute()):
        got = got.reset_index(drop=True)
        pd.testing.assert_frame_equal(got, ref, check_index_type=False)
    assert ownership.is_complete(path) and ownership.owned_by(path, "hvrt.expand")
    prov = read_record(path)["provenance"]
    assert prov["seed"] == 3 and prov["n"] == 2000 and prov["generation_strategy"] == "epanechnikov"
    assert prov["model_params"]["bandwidth"] == "auto" and "numpy" in prov["versions"]


def test_zarr_group_opens_with_xarray(df, tmp_path):
    import xarray as xr

    path = tmp_path / "out.zarr"
    HVRT(random_state=1).fit(df).expand(700, output=str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain open_zarr works without complaints
        ds = xr.open_zarr(path)
    assert ds["data"].dims == ("row", "column") and ds["data"].shape == (700, 7)
    assert list(ds["column"].values) == list(df.columns)
    cols = {c["name"]: c for c in ds.attrs["hvrt_dask"]["columns"]}
    assert cols["city"]["labels"] == ["Oslo", "Rome"] and cols["grade"]["categories"] == [1, 2, 3]
    assert cols["n"]["dtype"] == "int32" and cols["level"]["kind"] == "discrete"
    assert cols["const"]["kind"] == "constant"


def test_numpy_input_zarr(tmp_path):
    X = np.random.default_rng(2).integers(0, 1000, size=(900, 3)).astype(np.int16)
    ref = HVRT(random_state=0).fit(X).expand(500)
    HVRT(random_state=0).fit(X).expand(500, output=str(tmp_path / "o.zarr"))
    got = read_output(tmp_path / "o.zarr")
    assert list(got.columns) == ["x0", "x1", "x2"] and (got.dtypes == np.int16).all()
    np.testing.assert_array_equal(got.to_numpy(), ref)


@pytest.mark.parametrize("suffix", [".zarr", ".parquet"])
def test_reduce_carries_rows_and_index(df, tmp_path, suffix):
    m = HVRT(random_state=0).fit(df)
    ref, rows = m.reduce(n=120, return_indices=True)
    assert list(ref.index) == list(df.index[rows])  # in memory: the DataFrame's own index
    path = tmp_path / f"r{suffix}"
    HVRT(random_state=0).fit(df).reduce(n=120, output=str(path))
    got = read_output(path)
    np.testing.assert_array_equal(got.index.to_numpy(), rows)  # source_row
    assert got.index.name == "source_row"
    assert list(got["rid"]) == list(df.index[rows])  # the original index labels
    pd.testing.assert_frame_equal(got.drop(columns="rid").reset_index(drop=True), ref.reset_index(drop=True))


@pytest.mark.parametrize("suffix", [None, ".zarr"])
def test_reduce_of_external_frame_carries_its_own_index(df, tmp_path, suffix):
    """reduce(X=other): the selected row numbers refer to ``other``, so do the labels."""
    m = HVRT(random_state=0).fit(df)
    rng = np.random.default_rng(7)
    other = df.sample(n=3 * len(df), replace=True, random_state=1).reset_index(drop=True)
    other.index = pd.Index([f"e{i}" for i in rng.permutation(len(other))], name="eid")
    if suffix is None:
        got, rows = m.reduce(n=80, X=other, return_indices=True)
        assert list(got.index) == list(other.index[rows])
        return
    path = tmp_path / f"r{suffix}"
    _, rows = HVRT(random_state=0).fit(df).reduce(n=80, X=other, return_indices=True)
    HVRT(random_state=0).fit(df).reduce(n=80, X=other, output=str(path))
    got = read_output(path)
    np.testing.assert_array_equal(got.index.to_numpy(), rows)
    assert list(got["eid"]) == list(other.index[rows])


def test_reduce_lazy_on_cluster(client, tmp_path):
    X = np.random.default_rng(4).standard_normal((4000, 3))
    with dask.config.set({"hvrt.chunks.target-rows": 1000}):
        m = HVRT(random_state=0).fit(da.from_array(X, chunks=900))
        out, rows = m.reduce(n=300, output=str(tmp_path / "r.zarr"), return_indices=True)
        m.expand(5000, output=str(tmp_path / "e.zarr"))
    assert out == os.path.realpath(tmp_path / "r.zarr")
    got = read_output(tmp_path / "r.zarr")
    rows = np.asarray(rows.compute())
    np.testing.assert_array_equal(got.index.to_numpy(), rows)
    np.testing.assert_array_equal(got.to_numpy(), X[rows])
    assert read_output(tmp_path / "e.zarr").shape == (5000, 3)


_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    import dask, dask.array as da, numpy as np
    from hvrt_dask.hvrt import HVRT
    from hvrt_dask.hvrt.generation.epanechnikov import EpanechnikovStrategy

    class Dies(EpanechnikovStrategy):
        name = "dies_mid_write"
        calls = 0
        def generate(self, context, budgets, rngs):
            Dies.calls += 1
            if Dies.calls == 4:  # a few chunks are on disk already
                os._exit(9)
            return super().generate(context, budgets, rngs)

    X = np.random.default_rng(0).standard_normal((6000, 3))
    with dask.config.set(scheduler="sync"), dask.config.set({"hvrt.chunks.target-rows": 1000,
                                                              "hvrt.expand.shuffle": "none"}):
        m = HVRT(random_state=0).fit(da.from_array(X, chunks=1000))
        m.expand(60000, generation_strategy=Dies(), output=sys.argv[1])
""")


def test_killed_writer_is_refused(tmp_path):
    path = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 9, res.stderr
    assert ownership.owned_by(path, "hvrt.expand") and os.path.exists(path / "zarr.json")
    assert not ownership.is_complete(path)
    with pytest.raises(ownership.IncompleteOutputError, match="incomplete"):
        read_output(path)
    m = HVRT().fit(np.random.default_rng(0).standard_normal((500, 3)))
    with pytest.raises(ValueError, match="already exists"):  # never written over
        m.expand(10, output=str(path))


def test_missing_output(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_output(tmp_path / "nothing.zarr")


def test_output_inside_input_refused(tmp_path):
    import zarr

    src = tmp_path / "in.zarr"
    z = zarr.create_array(str(src), shape=(600, 3), chunks=(300, 3), dtype="f8")
    z[:] = np.random.default_rng(0).standard_normal((600, 3))
    m = HVRT().fit(str(src))
    with pytest.raises(ValueError, match="already exists"):
        m.expand(10, output=str(src))
    with open(src / "zarr.json") as f:
        assert json.load(f)["node_type"] == "array"  # untouched
