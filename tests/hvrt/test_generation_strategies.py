"""Unit tests of multivariate_kde, univariate_kde_copula and gaussian_kde, called directly
through the prepare/generate protocol on numpy chunks built here.

References are independent of the implementation: closed-form moments of the generated
distribution, scipy.stats.gaussian_kde, and re-running the same partitions under another
chunk grouping.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy import stats

from hvrt_dask._seeding import generator
from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.generation import copula, gaussian_kde, mvkde  # noqa: F401  (registers)
from hvrt_dask.hvrt.generation.base import GENERATION_STRATEGIES, GenerationStrategy

NAMES = ["multivariate_kde", "univariate_kde_copula", "gaussian_kde"]


def _cov_matrix(d: int, seed: int) -> np.ndarray:
    A = np.random.default_rng(seed).normal(size=(d, d))
    return A @ A.T / d + 0.3 * np.eye(d)


def _chunk(sizes, d, seed=0, ids=None):
    """Rows of partitions with different means and correlated covariances, grouped."""
    rng = np.random.default_rng(seed)
    blocks = [
        rng.multivariate_normal(rng.normal(size=d), _cov_matrix(d, seed + k), size=int(n))
        for k, n in enumerate(sizes)
    ]
    ids = np.arange(10, 10 + len(sizes)) if ids is None else np.asarray(ids)
    return np.concatenate(blocks), ChunkPartitions.from_sizes(ids, np.asarray(sizes))


def _rngs(parts: ChunkPartitions, seed: int = 0):
    return [generator(seed, "expand", 0, int(i)) for i in parts.ids]


def _run(name, X, parts, budgets, params=None, seed=0):
    s = GENERATION_STRATEGIES.get(name)
    ctx = s.prepare(X, parts, params or {})
    return s.generate(ctx, np.asarray(budgets), _rngs(parts, seed))


# ------------------------------------------------------------------------------ protocol
@pytest.mark.parametrize("name", NAMES)
def test_registered_protocol_and_picklable(name):
    s = GENERATION_STRATEGIES.get(name)
    assert isinstance(s, GenerationStrategy) and s.name == name
    X, parts = _chunk([30, 8], d=3)
    ctx = s.prepare(X, parts, {})
    s2, ctx2 = pickle.loads(pickle.dumps((s, ctx)))
    Z1, b1 = s.generate(ctx, np.array([5, 7]), _rngs(parts))
    Z2, b2 = s2.generate(ctx2, np.array([5, 7]), _rngs(parts))
    assert Z1.shape == (12, 3) and b1.shape == (12,)
    np.testing.assert_array_equal(Z1, Z2)
    np.testing.assert_array_equal(b1, b2)


@pytest.mark.parametrize("name", NAMES)
def test_base_rows_belong_to_their_partition(name):
    X, parts = _chunk([40, 25, 60], d=3)
    budgets = np.array([11, 0, 17])
    Z, base = _run(name, X, parts, budgets)
    assert Z.shape == (28, 3) and np.isfinite(Z).all()
    if name == "univariate_kde_copula":
        assert (base == -1).all()
        return
    labels = parts.labels()
    np.testing.assert_array_equal(labels[base], np.repeat([0, 1, 2], budgets))


@pytest.mark.parametrize("name", NAMES)
def test_input_validation(name):
    s = GENERATION_STRATEGIES.get(name)
    X, parts = _chunk([20, 20], d=2)
    with pytest.raises(ValueError, match="rows"):
        s.prepare(X[:-1], parts, {})
    ctx = s.prepare(X, parts, {})
    with pytest.raises(ValueError, match="budgets"):
        s.generate(ctx, np.array([1, 2, 3]), _rngs(parts))
    with pytest.raises(ValueError, match="non-negative"):
        s.generate(ctx, np.array([1, -2]), _rngs(parts))


@pytest.mark.parametrize("bad", [0.0, -1.0, "auto", float("nan")])
def test_gaussian_kde_rejects_bad_bandwidth(bad):
    X, parts = _chunk([20], d=2)
    with pytest.raises((ValueError, TypeError), match="bandwidth"):
        GENERATION_STRATEGIES.get("gaussian_kde").prepare(X, parts, {"bandwidth": bad})
    with pytest.raises(ValueError, match="bandwith"):
        GENERATION_STRATEGIES.get("gaussian_kde").prepare(X, parts, {"bandwith": 0.1})


# ------------------------------------------------------------------- moments vs theory
def _rel_err(A, B):
    return np.linalg.norm(A - B) / np.linalg.norm(B)


def test_mvkde_covariance_is_one_plus_h2_sigma():
    d, n_p, b = 4, 400, 300_000
    X, parts = _chunk([n_p, 50], d=d)
    Z, _ = _run("multivariate_kde", X, parts, [b, 10])
    Xp = X[:n_p]
    sigma = np.cov(Xp, rowvar=False, bias=True)  # biased Σ_p
    h = n_p ** (-1.0 / (d + 4))
    np.testing.assert_allclose(Z[:b].mean(0), Xp.mean(0), atol=0.02)
    assert _rel_err(np.cov(Z[:b], rowvar=False, bias=True), (1 + h**2) * sigma) < 0.02
    # and not (1 + h²)·unbiased or plain Σ: the inflation is measurable
    assert _rel_err(np.cov(Z[:b], rowvar=False, bias=True), sigma) > 0.08


@pytest.mark.parametrize("bandwidth", [0.5, "scott", "silverman"])
def test_gaussian_kde_covariance_and_matches_scipy_kernel(bandwidth):
    d, n_p, b = 3, 300, 300_000
    X, parts = _chunk([n_p], d=d, seed=3)
    s = GENERATION_STRATEGIES.get("gaussian_kde")
    ctx = s.prepare(X, parts, {"bandwidth": bandwidth})
    kde = stats.gaussian_kde(X.T, bw_method=bandwidth)
    # the kernel covariance is scipy's: bw² · unbiased Σ_p
    K = ctx.factor[0] ** 2 * ctx.chol[0] @ ctx.chol[0].T
    np.testing.assert_allclose(K, kde.covariance, rtol=1e-10)
    Z, _ = s.generate(ctx, np.array([b]), _rngs(parts))
    expected = np.cov(X, rowvar=False, bias=True) + kde.covariance
    assert _rel_err(np.cov(Z, rowvar=False, bias=True), expected) < 0.02


def test_gaussian_kde_adaptive_bandwidth_uses_budgets():
    d, n_p, b = 3, 200, 200_000
    X, parts = _chunk([n_p], d=d, seed=5)
    Z, _ = _run("gaussian_kde", X, parts, [b], {"bandwidth": 0.1, "adaptive": True})
    bw = n_p ** (-1 / (d + 4)) * max(1.0, b / n_p) ** (1 / d)  # reference §4.6
    expected = np.cov(X, rowvar=False, bias=True) + bw**2 * np.cov(X, rowvar=False)
    assert _rel_err(np.cov(Z, rowvar=False, bias=True), expected) < 0.03


def test_copula_marginals_follow_scott_kde_and_rank_correlation():
    d, n_p, b = 3, 300, 100_000
    X, parts = _chunk([n_p, 40], d=d, seed=7)
    Xp = X[:n_p]
    s = GENERATION_STRATEGIES.get("univariate_kde_copula")
    ctx = s.prepare(X, parts, {})
    Z, _ = s.generate(ctx, np.array([b, 5]), _rngs(parts))
    Zp = Z[:b]
    for j in range(d):
        kde = stats.gaussian_kde(Xp[:, j])  # Scott, the reference marginal
        # the CDF grid is the normalised cumulative density on the grid
        grid = ctx.grid_lo[0, j] + ctx.grid_step[0, j] * np.arange(copula.GRID_SIZE)
        pdf = kde(grid)
        np.testing.assert_allclose(ctx.cdf[0, j], np.cumsum(pdf) / pdf.sum(), atol=2e-4)
        # generated marginal quantiles match the KDE's (and hence the partition's)
        qs = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
        kde_cdf = np.array([kde.integrate_box_1d(-np.inf, g) for g in grid])
        q_ref = np.interp(qs, kde_cdf, grid)
        sd = Xp[:, j].std()
        np.testing.assert_allclose(np.quantile(Zp[:, j], qs), q_ref, atol=0.03 * sd)
        np.testing.assert_allclose(np.quantile(Zp[:, j], qs), np.quantile(Xp[:, j], qs), atol=0.25 * sd)
    rho_gen = stats.spearmanr(Zp).statistic
    rho_ref = stats.spearmanr(Xp).statistic
    np.testing.assert_allclose(rho_gen, rho_ref, atol=0.06)


# ------------------------------------------------------------------------ determinism
@pytest.mark.parametrize(
    "name,params",
    [("multivariate_kde", {}), ("univariate_kde_copula", {}), ("gaussian_kde", {"bandwidth": "scott"}),
     ("gaussian_kde", {"bandwidth": 0.1, "adaptive": True})],
)
def test_output_does_not_depend_on_chunk_grouping(name, params):
    d = 4
    rng = np.random.default_rng(11)
    sizes = rng.integers(2, 40, size=70)  # 70 × 4 marginals: crosses the copula FFT batch
    sizes[[3, 17]] = [1, 3]  # tiny partitions take the fallback
    X, parts = _chunk(sizes, d=d, seed=11, ids=np.arange(100, 170) * 7)
    budgets = rng.integers(0, 30, size=70)
    s = GENERATION_STRATEGIES.get(name)

    def per_partition(groups):
        out = {}
        for g in groups:
            rows = np.concatenate([np.arange(parts.starts[i], parts.starts[i] + parts.sizes[i]) for i in g])
            sub = ChunkPartitions.from_sizes(parts.ids[g], parts.sizes[g])
            Z, base = s.generate(s.prepare(X[rows], sub, params), budgets[g], _rngs(sub, seed=5))
            off = np.concatenate([[0], np.cumsum(budgets[g])])
            for k, i in enumerate(g):
                lb = base[off[k] : off[k + 1]]
                local = np.where(lb >= 0, lb - sub.starts[k], -1)
                out[int(parts.ids[i])] = (Z[off[k] : off[k + 1]], local)
        return out

    one = per_partition([np.arange(70)])
    perm = np.random.default_rng(1).permutation(70)
    other = per_partition([perm[:9], perm[9:10], perm[10:45], perm[45:]])
    assert one.keys() == other.keys()
    for pid in one:
        np.testing.assert_array_equal(one[pid][0], other[pid][0])
        np.testing.assert_array_equal(one[pid][1], other[pid][1])
    # and a different seed gives different data
    Z5, _ = s.generate(s.prepare(X, parts, params), budgets, _rngs(parts, seed=6))
    assert not np.array_equal(Z5, np.concatenate([one[int(p)][0] for p in parts.ids]))


# ------------------------------------------------------------------- tiny partitions
@pytest.mark.parametrize(
    "name,params,factor",
    [("multivariate_kde", {}, "scott"), ("gaussian_kde", {"bandwidth": 0.1}, 0.1),
     ("gaussian_kde", {"bandwidth": "scott"}, "scott")],
)
@pytest.mark.parametrize("n_p", [1, 3, 5])
def test_tiny_partition_fallback_is_not_row_copies(name, params, factor, n_p):
    d, b = 5, 400
    X, parts = _chunk([n_p, 50], d=d, seed=2)
    Z, base = _run(name, X, parts, [b, 0], params)
    Xp = X[:n_p]
    # no duplicated rows and no exact copies of training rows
    assert np.unique(Z, axis=0).shape[0] == b
    assert np.abs(Z[:, None, :] - Xp[None]).max(axis=2).min() > 0
    # all the partition's rows serve as base rows, not just the first
    assert set(base.tolist()) == set(range(n_p))
    # bounded support: |z − base| <= √5 · bw · s_pj (s_pj: shrunk per-feature std)
    bw = n_p ** (-1 / (d + 4)) if factor == "scott" else factor
    var = Xp.var(axis=0)
    alpha = d / (n_p + d)
    s = np.maximum(np.sqrt((1 - alpha) * var + alpha * var.mean()), 0.01)
    dev = np.abs(Z - X[base])
    assert (dev <= np.sqrt(5) * bw * s * (1 + 1e-12)).all()
    # and the noise really uses that scale: per-feature std ≈ bw·s (Epanechnikov √5 scaling)
    np.testing.assert_allclose(dev.std(axis=0) ** 2 + dev.mean(axis=0) ** 2, (bw * s) ** 2, rtol=0.25)


def test_singular_covariance_keeps_exact_relations_in_gaussian_kde():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(40, 1))
    X = np.hstack([t, 2 * t, rng.normal(size=(40, 1)), np.full((40, 1), 0.7)])  # singular Σ_p
    parts = ChunkPartitions.from_sizes(np.array([0]), np.array([40]))
    s = GENERATION_STRATEGIES.get("gaussian_kde")
    ctx = s.prepare(X, parts, {"bandwidth": 0.5})
    assert not ctx.fallback[0]
    Z, base = s.generate(ctx, np.array([5000]), _rngs(parts))
    assert np.isfinite(Z).all() and np.unique(Z, axis=0).shape[0] == 5000
    # the collinear pair and the constant column survive (PSD repair adds ~1e-4·bw noise)
    np.testing.assert_allclose(Z[:, 1], 2 * Z[:, 0], atol=1e-3)
    np.testing.assert_allclose(Z[:, 3], 0.7, atol=1e-3)
    # the regular direction gets the full kernel: var = biased var + bw² · unbiased var
    x = X[:, 2]
    assert Z[:, 2].var() == pytest.approx(x.var() + 0.25 * x.var(ddof=1), rel=0.08)


@pytest.mark.parametrize("name", ["multivariate_kde", "gaussian_kde"])
def test_fallback_keeps_constant_feature_constant(name):
    d = 5
    X, parts = _chunk([4, 30], d=d, seed=8)
    X[:4, 2] = -1.25  # constant over the tiny partition's 4 rows
    Z, _ = _run(name, X, parts, [300, 0], {"bandwidth": 0.3} if name == "gaussian_kde" else {})
    assert (Z[:, 2] == -1.25).all()
    assert np.unique(Z, axis=0).shape[0] == 300


def test_copula_single_row_partition_is_uniform_window():
    X, parts = _chunk([1, 30], d=2, seed=9)
    Z, _ = _run("univariate_kde_copula", X, parts, [2000, 0])
    dev = Z - X[0]
    assert (np.abs(dev) <= 0.1 + 1e-12).all()
    assert stats.kstest(dev[:, 0], stats.uniform(-0.1, 0.2).cdf).pvalue > 1e-3
