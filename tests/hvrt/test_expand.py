"""expand(): strategy moments vs theory, budgets, contexts cache, output kinds, fixes."""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from hvrt_dask.hvrt import read_output
from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.estimator import HVRT, FastHVRT
from hvrt_dask.hvrt.expand import resolve_strategy
from hvrt_dask.hvrt.generation import GENERATION_STRATEGIES
from hvrt_dask.hvrt.generation.bootstrap import BootstrapNoiseStrategy
from hvrt_dask.hvrt.generation.epanechnikov import EpanechnikovStrategy

from _budget_reference import spec_budgets


def _rngs(k, seed=0):
    return [np.random.default_rng([seed, i]) for i in range(k)]


@pytest.fixture
def chunk():
    rng = np.random.default_rng(5)
    Z = np.concatenate([
        rng.normal([0, 1, -1], [1.0, 0.5, 2.0], size=(500, 3)),
        rng.normal([3, 0, 0], [0.3, 0.2, 0.1], size=(300, 3)),
    ])
    return Z, ChunkPartitions.from_sizes(np.array([4, 9]), np.array([500, 300]))


def test_epanechnikov_moments_match_theory(chunk):
    Z, parts = chunk
    s = EpanechnikovStrategy()
    ctx = s.prepare(Z, parts, {})
    b = np.array([300_000, 300_000])
    out, base = s.generate(ctx, b, _rngs(2))
    d = Z.shape[1]
    for i, sl in enumerate(parts.slices()):
        o = out[i * b[0] : (i + 1) * b[0]]
        Zp = Z[sl]
        h = Zp.shape[0] ** (-1.0 / (d + 4))
        assert np.all((base[i * b[0] : (i + 1) * b[0]] >= sl.start) & (base[i * b[0] : (i + 1) * b[0]] < sl.stop))
        # variance inflation 1 + h²/5 relative to the partition's population variance
        ratio = o.var(axis=0) / Zp.var(axis=0)
        np.testing.assert_allclose(ratio, 1 + h * h / 5, rtol=0.012)
        np.testing.assert_allclose(o.mean(axis=0), Zp.mean(axis=0), atol=0.01 * Zp.std(axis=0).max() + 0.003)
        # the kernel itself: bounded support, variance 1/5 of (h·σ)²
        u = (o - Z[base[i * b[0] : (i + 1) * b[0]]]) / (h * Zp.std(axis=0))
        assert np.abs(u).max() <= 1.0 + 1e-12
        np.testing.assert_allclose(u.var(axis=0), 0.2, rtol=0.01)
        np.testing.assert_allclose(np.mean(u**4, axis=0) / 0.2**2, 15 / 7, rtol=0.03)  # Epanechnikov kurtosis


def test_bootstrap_noise_moments(chunk):
    Z, parts = chunk
    s = BootstrapNoiseStrategy()
    ctx = s.prepare(Z, parts, {})
    b = np.array([200_000, 200_000])
    out, base = s.generate(ctx, b, _rngs(2))
    for i, sl in enumerate(parts.slices()):
        o, bb = out[i * b[0] : (i + 1) * b[0]], base[i * b[0] : (i + 1) * b[0]]
        eps = (o - Z[bb]) / (0.1 * Z[sl].std(axis=0))
        np.testing.assert_allclose(eps.var(axis=0), 1.0, rtol=0.01)
        np.testing.assert_allclose(o.var(axis=0) / Z[sl].var(axis=0), 1.01, rtol=0.012)


def test_tiny_partition_does_not_copy_rows():
    Z = np.array([[0.5, 0.1, -0.2], [0.6, 0.1, -0.1]])  # n_p = 2 ≤ d = 3
    parts = ChunkPartitions.from_sizes(np.array([1]), np.array([2]))
    s = EpanechnikovStrategy()
    out, base = s.generate(s.prepare(Z, parts, {}), np.array([5000]), _rngs(1))
    assert len(np.unique(out, axis=0)) == 5000  # no copies
    # σ_j is shrunk towards the partition's mean variance with weight d / (n_p + d); a column
    # constant over the partition stays (floor-)constant instead of borrowing noise.
    var = Z.var(axis=0)
    a = 3 / (2 + 3)
    sd = np.sqrt((1 - a) * var + a * var.mean())
    sd[var == 0] = 0.0
    sd = np.maximum(sd, 0.01)
    u = (out - Z[base]) / (2 ** (-1 / 7) * sd)
    assert np.abs(u).max() <= 1 + 1e-12 and u.std() > 0.4
    assert np.abs(out[:, 1] - 0.1).max() <= 2 ** (-1 / 7) * 0.01 + 1e-12




class _Recorder(EpanechnikovStrategy):
    """Records the budgets each chunk receives (in-memory models run in-process)."""

    name = "recorder"
    seen: dict = {}

    def generate(self, context, budgets, rngs):
        for pid, b in zip(context.parts.ids, budgets):
            self.seen[int(pid)] = int(b)
        return super().generate(context, budgets, rngs)


@pytest.mark.parametrize("vw", [False, True, "size_aware"])
def test_budgets_follow_reference_integerisation(vw):
    X = np.random.default_rng(0).standard_normal((3000, 4))
    with dask.config.set({"hvrt.chunks.target-rows": 400}):
        m = HVRT().fit(X)
    rec = _Recorder()
    rec.seen = {}
    out = m.expand(4321, generation_strategy=rec, variance_weighted=vw)
    assert out.shape == (4321, 4)
    got = np.array([rec.seen[int(p)] for p in m.unique_partitions_])
    np.testing.assert_array_equal(got, spec_budgets(m.partition_sizes_, 4321, m.partition_mean_abs_z_, vw, floor=0, clip=False))


def test_mean_abs_z_definition():
    X = np.random.default_rng(1).standard_normal((800, 3))
    m = FastHVRT().fit(X)
    Z = m.transform_(X)
    leaves = m.apply_raw(X)
    for pid, mz in zip(m.unique_partitions_, m.partition_mean_abs_z_):
        assert mz == pytest.approx(np.abs(Z[leaves == pid]).mean())


class _CountingStrategy(EpanechnikovStrategy):
    """Appends one line to a file per prepare() call (works across worker processes)."""

    name = "counting"

    def __init__(self, path):
        self.path = path

    def prepare(self, Xz, parts, params):
        with open(self.path, "a") as f:
            f.write("x\n")
        return super().prepare(Xz, parts, params)


def _count(path):
    return sum(1 for _ in open(path)) if os.path.exists(path) else 0


def test_contexts_cached_in_memory(tmp_path):
    X = np.random.default_rng(2).standard_normal((2000, 3))
    with dask.config.set({"hvrt.chunks.target-rows": 300}):
        m = HVRT().fit(X)
    s = _CountingStrategy(str(tmp_path / "count.txt"))
    m.expand(100, generation_strategy=s)
    assert _count(s.path) == m.grouped_.n_chunks > 1
    m.expand(100, generation_strategy=s)
    assert _count(s.path) == m.grouped_.n_chunks  # second call skipped prepare
    m.expand(100, generation_strategy=s, strategy_params={"bandwidth_scale": 1.0})  # new params: new contexts
    assert _count(s.path) == 2 * m.grouped_.n_chunks
    before = _count(s.path)
    m.fit(X)  # fit resets the cache
    m.expand(100, generation_strategy=s)
    assert _count(s.path) == before + m.grouped_.n_chunks


def test_contexts_cached_on_cluster(client, tmp_path):
    X = np.random.default_rng(2).standard_normal((3000, 3))
    with dask.config.set({"hvrt.chunks.target-rows": 500}):
        m = HVRT().fit(da.from_array(X, chunks=1000))
    s = _CountingStrategy(str(tmp_path / "count.txt"))
    ctx = m._chunk_contexts("generate", s, {}, "continuous")
    assert ctx.shape == (m.grouped_.n_chunks, 1) and ctx.dtype == object
    out1 = m.expand(500, generation_strategy=s).compute()
    assert _count(s.path) == m.grouped_.n_chunks
    assert m._chunk_contexts("generate", s, {}, "continuous") is ctx
    out2 = m.expand(500, generation_strategy=s).compute()
    assert _count(s.path) == m.grouped_.n_chunks
    assert not np.array_equal(out1, out2)


def test_custom_strategy_registration():
    class Centroid:
        """Every synthetic row is its partition's mean (no base row)."""

        name = "test_centroid"

        def prepare(self, Xz, parts, params):
            return (parts, np.array([Xz[s].mean(0) for s in parts.slices()]))

        def generate(self, ctx, budgets, rngs):
            parts, means = ctx
            return np.repeat(means, budgets, axis=0), np.full(int(budgets.sum()), -1)

    GENERATION_STRATEGIES.register(Centroid(), overwrite=True)
    X = np.random.default_rng(3).standard_normal((1000, 3))
    X[:, 2] = np.random.default_rng(4).integers(0, 3, 1000)
    m = HVRT().fit(X, feature_types=["continuous", "continuous", "categorical"])
    out = m.expand(600, generation_strategy="test_centroid")
    leaves = m.apply_raw(X)
    means = {p: X[leaves == p, :2].mean(0) for p in m.unique_partitions_}
    for row in out[:50]:
        assert any(np.allclose(row[:2], mu) for mu in means.values())
    assert set(np.unique(out[:, 2])) <= {0.0, 1.0, 2.0}


def test_categoricals_sampled_jointly_and_dtypes_restored():
    rng = np.random.default_rng(7)
    n = 2000
    c1 = rng.integers(0, 4, n)
    df = pd.DataFrame({
        "x": rng.standard_normal(n) + c1,
        "y": rng.standard_normal(n),
        "c1": c1.astype(np.int64),
        "c2": c1 * 10 + 5,  # fully determined by c1
        "k": rng.integers(0, 100, n).astype(np.int32),
    })
    m = HVRT().fit(df, feature_types=["continuous", "continuous", "categorical", "categorical", "continuous"])
    out = m.expand(5000, generation_strategy="epanechnikov")
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(df.columns)
    assert out["c1"].dtype == np.int64 and out["k"].dtype == np.int32
    assert (out["c2"] == out["c1"] * 10 + 5).all()  # joint tuple, never column by column


def test_clip_to_observed_range():
    X = np.random.default_rng(8).standard_normal((1500, 3))
    m = HVRT().fit(X)
    raw = m.expand(20000, generation_strategy="epanechnikov", clip=False)
    lo, hi = X.min(0), X.max(0)
    assert ((raw < lo) | (raw > hi)).any()  # the kernel does leave the range...
    clipped = m.expand(20000, generation_strategy="epanechnikov")
    assert ((clipped >= lo) & (clipped <= hi)).all()  # ...unless clipped (the default)


def test_output_rows_are_shuffled():
    X = np.random.default_rng(9).standard_normal((3000, 3))
    m = HVRT().fit(X)
    out = m.expand(3000, generation_strategy="bootstrap_noise")
    leaves = m.apply_raw(out)
    # grouped output would have ~n_partitions runs; shuffled output has ~n runs
    runs = 1 + np.count_nonzero(np.diff(leaves))
    assert runs > 0.8 * len(out)


def test_integer_numpy_in_integer_out():
    X = np.random.default_rng(10).integers(0, 1000, size=(1200, 3))
    out = HVRT().fit(X).expand(500)
    assert out.dtype == X.dtype


def test_auto_strategy_rule():
    X = np.random.default_rng(11).standard_normal((3000, 4))
    m = HVRT().fit(X)
    s, params = resolve_strategy(m)  # the configured default, whatever the partition sizes
    assert s.name == "epanechnikov"
    assert params == {"bandwidth_scale": 1.5, "variance_preserving": True, "shape": "covariance"}  # no atoms here
    assert resolve_strategy(m, generation_strategy="auto") == (s, params)
    s, params = resolve_strategy(m, bandwidth="silverman")
    assert s.name == "gaussian_kde" and params == {"bandwidth": "silverman", "adaptive": False}
    s, params = resolve_strategy(m, adaptive_bandwidth=True)
    assert params == {"bandwidth": "scott", "adaptive": True}
    assert resolve_strategy(m, generation_strategy="bootstrap_noise")[0].name == "bootstrap_noise"


def _zero_inflated(zero_shares, n=3000, seed=12):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({f"c{j}": np.where(rng.random(n) < p, 0.0, rng.lognormal(size=n))
                         for j, p in enumerate(zero_shares)})


@pytest.mark.parametrize("zero_shares", [[0.4, 0.0, 0.0], [0.7, 0.7, 0.7], [0.0, 0.0, 0.0]])
def test_default_bandwidth_widened_for_atoms(zero_shares):
    X = _zero_inflated(zero_shares)
    m = HVRT(random_state=0).fit(X)
    a = float(np.mean([(X[c] == 0).mean() for c in X]))  # share of cells holding the atom 0
    expected = 1.5 * min(1 / np.sqrt(1 - a), 1.5)
    assert resolve_strategy(m)[1]["bandwidth_scale"] == pytest.approx(expected, rel=1e-12)
    with dask.config.set({"hvrt.expand.atom-widening-max": None}):
        assert resolve_strategy(m)[1]["bandwidth_scale"] == 1.5
    # an explicit bandwidth_scale is the user's, not widened
    assert resolve_strategy(m, strategy_params={"bandwidth_scale": 1.0})[1]["bandwidth_scale"] == 1.0
    with dask.config.set({"hvrt.expand.atom-widening-max": 0.5}):
        with pytest.raises(ValueError, match="atom-widening-max"):
            resolve_strategy(m)


def test_augment():
    X = np.random.default_rng(12).standard_normal((500, 3))
    out = HVRT().fit(X).augment(800)
    assert out.shape == (800, 3)
    np.testing.assert_array_equal(out[:500], X)
    with pytest.raises(ValueError, match="n > the 500 training rows"):
        HVRT().fit(X).augment(400)


def test_zarr_input_on_cluster(client, tmp_path):
    import zarr

    rng = np.random.default_rng(13)
    X = (rng.standard_normal((6000, 4)) @ rng.standard_normal((4, 4))).astype(np.float32)
    path = str(tmp_path / "in.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(1000, 4), dtype=np.float32)
    z[:] = X
    with dask.config.set({"hvrt.chunks.target-rows": 1500}):
        m = HVRT(random_state=5).fit(path)
        assert m.grouped_.n_chunks > 1
        lazy = m.expand(9000, generation_strategy="epanechnikov")
        assert isinstance(lazy, da.Array)
        assert not any(np.isnan(c) for c in lazy.chunks[0]) and sum(lazy.chunks[0]) == 9000
        res = lazy.compute()
        assert res.dtype == np.float32 and np.isfinite(res).all()
        m2 = HVRT(random_state=5).fit(path)
        written = m2.expand(9000, generation_strategy="epanechnikov", output=str(tmp_path / "out.zarr"))
    assert written == os.path.realpath(tmp_path / "out.zarr")  # a self-describing group
    np.testing.assert_array_equal(read_output(written).to_numpy(), res)
    # fidelity sanity: means and stds preserved
    np.testing.assert_allclose(res.mean(0), X.mean(0), atol=0.1 * X.std(0).max())
    np.testing.assert_allclose(res.std(0), X.std(0), rtol=0.1)


def test_output_mirrors_lazy_kinds(sync_scheduler):
    import xarray as xr

    X = np.random.default_rng(14).standard_normal((1200, 3))
    out = HVRT().fit(da.from_array(X, chunks=400)).expand(700)
    assert isinstance(out, da.Array) and out.shape == (700, 3) and not np.isnan(sum(out.chunks[0]))
    arr = xr.DataArray(X, dims=("row", "feat"), coords={"feat": ["a", "b", "c"]})
    xo = HVRT().fit(arr).expand(300)
    assert isinstance(xo, xr.DataArray) and list(xo["feature"].values) == ["a", "b", "c"]
    assert isinstance(xo.data, da.Array)
    # numpy and lazy inputs give the same rows for the same seed and call
    np.testing.assert_array_equal(out.compute(), HVRT().fit(X).expand(700))
