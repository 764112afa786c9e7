"""Independent references at ties and boundaries for the HVRT strategies.

- FPS with exact distance ties (integer coordinates: every squared distance is an exact
  integer in float64, so the documented "first index on ties" rule decides every pick);
- the tiny-partition rule of ``epanechnikov`` at exactly ``n_p = d`` and ``n_p = d + 1``
  rows, written out from the documented formulas.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.generation.epanechnikov import EpanechnikovStrategy
from hvrt_dask.hvrt.selection.fps import CentroidFPSStrategy, MedoidFPSStrategy


# ------------------------------------------------------------------------------ FPS ties
def _ref_fps(X: np.ndarray, seed: int, b: int) -> list[int]:
    """Sequential FPS in exact integer arithmetic; ties go to the smallest index."""
    Xi = X.astype(np.int64)
    n = len(Xi)
    picks = [seed]
    mind = [None] * n
    for _ in range(b - 1):
        last = Xi[picks[-1]]
        for i in range(n):
            dist = int(((Xi[i] - last) ** 2).sum())
            mind[i] = dist if mind[i] is None else min(mind[i], dist)
        best, best_i = -1, -1
        for i in range(n):
            if i in picks:
                continue
            if mind[i] > best:  # strict: the first index keeps a tie
                best, best_i = mind[i], i
        picks.append(best_i)
    return picks


def _ref_centroid_seed(X: np.ndarray) -> int:
    # squared distance to the mean, scaled by n^2 to stay in exact integers
    Xi = X.astype(np.int64)
    n = len(Xi)
    d = [int(((n * Xi[i] - Xi.sum(axis=0)) ** 2).sum()) for i in range(n)]
    return d.index(min(d))


def _ref_medoid_seed(X: np.ndarray) -> int:
    sums = [float(np.sqrt(((X - X[i]) ** 2).sum(axis=1)).sum()) for i in range(len(X))]
    return sums.index(min(sums))


def _tied_partitions():
    # A square, a plus sign and a 3x3 grid: many exact ties in FPS distances and seeds.
    square = np.array([[0, 0], [0, 2], [2, 0], [2, 2]], float)
    plus = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1], [2, 0], [0, 2], [-2, 0], [0, -2]], float)
    grid = np.array([[i, j] for i in range(3) for j in range(3)], float)[::-1].copy()
    return [square, plus, grid]


@pytest.mark.parametrize("strategy,ref_seed", [(CentroidFPSStrategy(), _ref_centroid_seed),
                                               (MedoidFPSStrategy(), _ref_medoid_seed)])
def test_fps_exact_ties_take_the_first_index(strategy, ref_seed):
    parts_X = _tied_partitions()
    X = np.concatenate(parts_X)
    parts = ChunkPartitions.from_sizes(np.arange(len(parts_X)), [len(p) for p in parts_X])
    ctx = strategy.prepare(X, parts, {})
    for budgets in ([3, 5, 6], [2, 8, 1], [1, 1, 8]):
        got = strategy.select(ctx, np.array(budgets), [None] * len(parts_X))
        exp = []
        for Xp, s, b in zip(parts_X, parts.starts, budgets):
            seed = ref_seed(Xp)
            exp += [int(s) + i for i in _ref_fps(Xp, seed, b)]
        assert got.tolist() == exp, budgets


def test_fps_ties_reference_is_not_trivial():
    # the data really has ties that the first-index rule decides: the last-index rule differs
    plus = _tied_partitions()[1]
    first = _ref_fps(plus, 0, 5)
    assert first == [0, 5, 6, 7, 8]
    # with the last index on ties the second pick would be 8 (all of 5..8 are at distance 4)
    assert max(range(1, 9), key=lambda i: (((plus[i] - plus[0]) ** 2).sum(), i)) == 8


# ---------------------------------------------------- epanechnikov tiny-partition boundary
def _ref_epanechnikov_scale(Xp: np.ndarray) -> np.ndarray:
    """Documented rule: population std; if n <= d shrink toward the mean variance with
    alpha = d / (n + d) (a constant feature over >= 2 rows stays 0); floor 0.01; times
    Scott's factor n^(-1/(d+4))."""
    n, d = Xp.shape
    sd = Xp.std(axis=0)  # population std
    if n <= d:
        a = d / (n + d)
        s2 = (1 - a) * sd**2 + a * np.mean(sd**2)
        s = np.maximum(np.sqrt(s2), 0.01)
        s[(sd == 0) & (n >= 2)] = 0.0
        sd = s
    return n ** (-1.0 / (d + 4)) * np.maximum(sd, 0.01)


def test_epanechnikov_tiny_partition_boundary():
    d = 3
    rng = np.random.default_rng(11)
    blocks = [
        rng.normal(size=(d, d)) * [0.1, 1.0, 3.0],        # n == d: shrunk
        rng.normal(size=(d + 1, d)) * [0.1, 1.0, 3.0],    # n == d + 1: not shrunk
        rng.normal(size=(d - 1, d)) * [0.1, 1.0, 3.0],    # n < d: shrunk
        np.c_[rng.normal(size=(d, 2)), np.full(d, 5.0)],  # constant feature in a tiny partition
    ]
    X = np.concatenate(blocks)
    parts = ChunkPartitions.from_sizes(np.arange(len(blocks)), [len(b) for b in blocks])
    scale = EpanechnikovStrategy().prepare(X, parts, {}).scale
    exp = np.stack([_ref_epanechnikov_scale(b) for b in blocks])
    np.testing.assert_allclose(scale, exp, rtol=1e-12, atol=0)
    # the boundary matters: shrinking pulls the smallest std up at n == d but not at d + 1
    raw = [b.std(axis=0) for b in blocks]
    assert scale[0, 0] / (d ** (-1 / (d + 4))) > raw[0][0] * 1.5
    np.testing.assert_allclose(scale[1], (d + 1) ** (-1 / (d + 4)) * np.maximum(raw[1], 0.01), rtol=1e-12)


def _three_partitions():
    rng = np.random.default_rng(5)
    blocks = [rng.normal(size=(40, 3)) * [0.5, 1.0, 2.0], rng.normal(size=(9, 3)) * 3 + 1,
              np.c_[rng.normal(size=(25, 2)), np.full(25, 4.0)]]  # the last: one constant feature
    return blocks, np.concatenate(blocks), ChunkPartitions.from_sizes(np.arange(3), [len(b) for b in blocks])


@pytest.mark.parametrize("s", [0.5, 2, np.float32(3.0)])
def test_epanechnikov_bandwidth_scale_multiplies_the_scott_bandwidth(s):
    blocks, X, parts = _three_partitions()
    got = EpanechnikovStrategy().prepare(X, parts, {"bandwidth_scale": s}).scale
    exp = np.stack([_ref_epanechnikov_scale(b) for b in blocks]) * float(s)
    np.testing.assert_allclose(got, exp, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [True, 0, -1.0, float("nan"), float("inf"), "2", None])
def test_epanechnikov_bandwidth_scale_refused(bad):
    _, X, parts = _three_partitions()
    with pytest.raises(ValueError, match=rf"^bandwidth_scale must be a positive number, got {re.escape(repr(bad))}$"):
        EpanechnikovStrategy().prepare(X, parts, {"bandwidth_scale": bad})


def test_epanechnikov_unknown_parameter_named():
    _, X, parts = _three_partitions()
    with pytest.raises(ValueError, match=r"generation strategy 'epanechnikov' got unknown parameter\(s\) \['bandwith'\]; "
                                         r"known: \['bandwidth_scale', 'shape', 'variance_preserving'\]"):
        EpanechnikovStrategy().prepare(X, parts, {"bandwith": 1.0})


@pytest.mark.parametrize("s", [1.0, 2.5])
def test_epanechnikov_variance_preserving_closed_form(s):
    """variance_preserving=True: rows become mean + shrink ⊙ (row − mean) with
    shrink = sqrt(σ² / (σ² + scale²/5)) (1 for a constant feature), so each partition's expected
    per-feature variance is σ² again; checked in closed form and on 40 000 generated rows."""
    from hvrt_dask._seeding import generators

    blocks, X, parts = _three_partitions()
    strat = EpanechnikovStrategy()
    ctx = strat.prepare(X, parts, {"variance_preserving": True, "bandwidth_scale": s})
    plain = strat.prepare(X, parts, {"bandwidth_scale": s})
    np.testing.assert_array_equal(ctx.scale, plain.scale)
    sd = np.stack([b.std(axis=0) for b in blocks])
    exp_shrink = np.where(sd > 0, np.sqrt(sd**2 / (sd**2 + plain.scale**2 / 5.0)), 1.0)
    np.testing.assert_allclose(ctx.shrink, exp_shrink, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ctx.mean, np.stack([b.mean(axis=0) for b in blocks]), rtol=1e-12, atol=1e-15)
    assert plain.shrink is None and plain.mean is None
    budgets = np.array([20_000, 10_000, 10_000])
    Z, _ = strat.generate(ctx, budgets, generators(0, ("t",), parts.ids))
    Zp, _ = strat.generate(plain, budgets, generators(0, ("t",), parts.ids))
    lab = np.repeat(np.arange(3), budgets)
    for p in range(3):
        var, var_plain = Z[lab == p].var(axis=0), Zp[lab == p].var(axis=0)
        np.testing.assert_allclose(var, sd[p] ** 2, rtol=0.06, atol=1e-4)  # preserved (a constant feature: floor noise only)
        # without it the kernel inflates each non-constant feature by scale²/5
        np.testing.assert_allclose(var_plain, sd[p] ** 2 + plain.scale[p] ** 2 / 5 * (sd[p] > 0), rtol=0.06, atol=1e-4)


@pytest.mark.parametrize("shape", [(300_001,), (70_001, 3)])
def test_epanechnikov_unit_matches_the_closed_form_law(shape):
    """Kolmogorov–Smirnov against F(u) = (2 + 3u − u³)/4, and its moments (1/5, 3/35), across slab edges."""
    from scipy import stats

    from hvrt_dask.hvrt.generation._common import epanechnikov_unit

    x = epanechnikov_unit(np.random.default_rng(4), shape)
    assert x.shape == shape and np.abs(x).max() < 1.0
    flat = x.reshape(-1)
    assert stats.kstest(flat, lambda u: (2 + 3 * u - u**3) / 4).pvalue > 1e-3
    np.testing.assert_allclose([flat.var(), np.mean(flat**4)], [1 / 5, 3 / 35], rtol=0.01)
    # every slab is a fresh draw (a repeated slab would be a copy)
    assert not np.array_equal(flat[:1000], flat[1 << 16 : (1 << 16) + 1000])
