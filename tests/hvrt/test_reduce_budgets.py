"""Reduce budgets: total equals the request, never more than a partition has, and the same
integerisation as the reference (an independent unit-step reimplementation here, and the
per-partition counts of ``hvrt==2.11.0``'s own ``reduce``)."""

from __future__ import annotations

import numpy as np
import pytest

from hvrt_dask.hvrt._budgets import reduce_budgets
from hvrt_dask.hvrt.estimator import HVRT

from _budget_reference import spec_budgets




@pytest.mark.parametrize("vw", [True, False, "size_aware"])
@pytest.mark.parametrize("seed", range(6))
def test_budget_invariants_and_spec_equality(vw, seed):
    rng = np.random.default_rng(seed)
    P = int(rng.integers(2, 60))
    sizes = rng.integers(1, 400, P)
    # skewed mean |z| so that variance weighting hits the clip-and-redistribute path
    mabsz = rng.gamma(0.7, 1.0, P)
    for total in (1, P, int(sizes.sum() * 0.1) + 1, int(sizes.sum() * 0.7), int(sizes.sum())):
        floor = int(rng.integers(0, 8))
        b = reduce_budgets(sizes, total, mabsz, vw, floor)
        assert b.sum() == min(total, sizes.sum())
        assert np.all(b <= sizes) and np.all(b >= 0)
        np.testing.assert_array_equal(b, spec_budgets(sizes, total, mabsz, vw, floor))


def test_reduce_output_counts_follow_budgets():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 5)) * np.array([1, 2, 0.5, 1, 3])
    X[:300] *= 4  # a heavy tail so that tail leaves are small and get clipped
    model = HVRT(random_state=0).fit(X)
    leaves = model.apply_raw(X)
    for total in (57, 600, 2999, 3000):
        for vw in (True, False, "size_aware"):
            _, idx = model.reduce(n=total, method="stratified", variance_weighted=vw, return_indices=True)
            assert len(idx) == total and len(np.unique(idx)) == total
            counts = np.array([(leaves[idx] == p).sum() for p in model.unique_partitions_])
            Z = (X - X.mean(0)) / X.std(0)
            absz = np.abs(Z).mean(1)
            mabsz = [absz[leaves == p].mean() for p in model.unique_partitions_]
            np.testing.assert_array_equal(
                counts, spec_budgets(model.partition_sizes_, total, mabsz, vw, 5)
            )
    # ratio → max(1, floor(ratio * n))
    out = model.reduce(ratio=0.0001, method="fps")
    assert out.shape == (1, 5)
    assert model.reduce(ratio=0.333, method="fps").shape == (999, 5)


@pytest.mark.parametrize("vw", [True, False])
def test_partition_counts_equal_the_peer(vw):
    hvrt = pytest.importorskip("hvrt")
    assert hvrt.__version__ == "2.11.0"
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4000, 6))
    X[:, 1] += X[:, 0] ** 2
    peer = hvrt.HVRT(random_state=0).fit(X)
    ids = np.asarray(peer.partition_ids_)
    unique = np.asarray(peer.unique_partitions_)
    sizes = np.array([(ids == p).sum() for p in unique])
    Zp = np.asarray(peer.X_z_)
    absz = np.abs(Zp).mean(axis=1)
    mabsz = np.array([absz[ids == p].mean() for p in unique])
    for ratio in (0.05, 0.2, 0.5):
        _, idx = peer.reduce(ratio=ratio, method="fps", variance_weighted=vw, return_indices=True)
        counts = np.array([(ids[np.asarray(idx)] == p).sum() for p in unique])
        total = max(1, int(np.floor(ratio * len(X))))
        ours = reduce_budgets(sizes, total, mabsz, vw, 5)
        np.testing.assert_array_equal(ours, counts)
