"""Auto-tune formulas, peer partition counts, and the bounded-sample tree."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import pytest

from hvrt_dask.hvrt import _tree
from hvrt_dask.hvrt.estimator import HVRT, FastHVRT


def _mixture(n, d=10, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(4, d))
    lab = rng.integers(0, 4, n)
    return centers[lab] + rng.standard_normal((n, d)) @ rng.normal(size=(d, d)) * 0.5


@pytest.mark.parametrize(
    "n,d,msl,mln",
    [
        (1000, 10, 31, 48),  # max(d+2, isqrt n) = 31; 3n/(2·31) = 48
        (100, 10, 12, 30),  # d+2 binds; floor 30 leaves
        (1_000_000, 10, 1000, 1500),  # cap 1500
        (5000, 3, 70, 107),
    ],
)
def test_auto_tune_formulas(n, d, msl, mln):
    p = _tree.resolve_tree_params(n, d)
    assert (p.min_samples_leaf, p.max_leaf_nodes) == (msl, mln)
    assert p.min_samples_leaf == max(d + 2, math.isqrt(n))


def test_manual_params_and_no_auto_tune():
    p = _tree.resolve_tree_params(10_000, 5, n_partitions=7, min_samples_leaf=3)
    assert (p.min_samples_leaf, p.max_leaf_nodes) == (3, 7)
    p = _tree.resolve_tree_params(10_000, 5, auto_tune=False)
    assert (p.min_samples_leaf, p.max_leaf_nodes) == (10, 100)


def test_sample_scales_min_samples_leaf():
    p = _tree.resolve_tree_params(1_000_000, 10, sample_size=250_000)
    assert p.sample_size == 250_000 and p.fit_min_samples_leaf == 250 and p.max_leaf_nodes == 1500


@pytest.mark.parametrize("n", [1000, 5000])
@pytest.mark.parametrize("cls", ["HVRT", "FastHVRT"])
def test_partitions_match_peer(n, cls):
    hvrt = pytest.importorskip("hvrt")
    import hvrt_dask.hvrt.estimator as est

    X = _mixture(n)
    ours = getattr(est, cls)(random_state=42).fit(X)
    peer = getattr(hvrt, cls)(random_state=42).fit(X)
    peer_sizes = np.unique(peer.partition_ids_, return_counts=True)[1]
    assert ours.n_partitions_ == peer.n_partitions_
    np.testing.assert_array_equal(np.sort(ours.partition_sizes_), np.sort(peer_sizes))
    np.testing.assert_array_equal(ours.unique_partitions_, np.sort(peer.unique_partitions_))


@pytest.mark.parametrize("cls", ["HART", "FastHART", "PyramidHART"])
def test_hart_family_partition_count_matches_peer(cls):
    # absolute_error splits are sensitive to last-bit differences in the target (the
    # median of a node can flip), so sizes may differ by a row or two; the count and the
    # size distribution follow the same formulas.
    hvrt = pytest.importorskip("hvrt")
    import hvrt_dask.hvrt.estimator as est

    X = _mixture(1000)
    ours, peer = getattr(est, cls)().fit(X), getattr(hvrt, cls)().fit(X)
    assert abs(ours.n_partitions_ - peer.n_partitions_) <= 2
    peer_sizes = np.unique(peer.partition_ids_, return_counts=True)[1]
    assert abs(np.median(ours.partition_sizes_) - np.median(peer_sizes)) <= 3
    assert ours.partition_sizes_.min() == peer_sizes.min() == 31


@pytest.mark.parametrize("n", [1000, 5000, 20000])
def test_leaf_counts_follow_the_auto_tune_rule(n):
    """Every leaf holds at least min_samples_leaf = max(d + 2, isqrt(n)) rows, so there are at most
    n // msl leaves (and at most max_leaf_nodes); at n = 20000 the count equals the peer's."""
    X = _mixture(n)
    m = HVRT(random_state=42).fit(X)
    msl = max(X.shape[1] + 2, math.isqrt(n))
    mln = max(30, min(1500, (3 * n) // (2 * msl)))
    assert m.partition_sizes_.min() >= msl and m.partition_sizes_.sum() == n
    assert 2 <= m.n_partitions_ <= min(mln, n // msl)
    if n == 20000:
        hvrt = pytest.importorskip("hvrt")
        assert m.n_partitions_ == hvrt.HVRT(random_state=42).fit(X).n_partitions_


def test_never_one_leaf_on_ordinary_data():
    X = np.random.default_rng(1).standard_normal((400, 2))
    for cls in (HVRT, FastHVRT):
        assert cls().fit(X).n_partitions_ > 1


def test_bounded_sample_tree_over_dask(sync_scheduler):
    n = 20_000
    X = _mixture(n, d=6)
    exact = FastHVRT().fit(X)
    with dask.config.set({"hvrt.tree.sample-size": 5000, "hvrt.chunks.target-rows": 4000}):
        m = FastHVRT().fit(da.from_array(X, chunks=3000))
    assert m.tree_sample_size_ == 5000 and exact.tree_sample_size_ == n
    # the scaled min_samples_leaf keeps the leaf count close to the exact tree's
    assert abs(m.n_partitions_ - exact.n_partitions_) <= 0.15 * exact.n_partitions_
    assert m.partition_sizes_.sum() == n
    # leaf assignment ran over every row: sizes are the tree's assignment of the full data
    leaves = m.apply_raw(X)
    np.testing.assert_array_equal(np.unique(leaves, return_counts=True)[1], m.partition_sizes_)
