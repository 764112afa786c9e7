"""Selected indices equal a sequential single-process implementation of each strategy.

The references below are written from the behaviour spec (reference §5), one partition at a
time, over the whole data set in original row order, with no chunking at all. They share
only the budget rule (`_budgets.reduce_budgets`, tested separately) and the seeding helper
with the code under test.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from hvrt_dask._seeding import generator
from hvrt_dask.hvrt._budgets import reduce_budgets
from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.estimator import HVRT
from hvrt_dask.hvrt.selection import SELECTION_STRATEGIES, get_selection_strategy

METHODS = ["centroid_fps", "medoid_fps", "variance_ordered", "stratified"]


# ----------------------------------------------------------------- sequential references
def ref_fps(Z: np.ndarray, b: int, seed: int) -> np.ndarray:
    sel = [seed]
    mind = ((Z - Z[seed]) ** 2).sum(axis=1)
    mind[seed] = -np.inf
    for _ in range(b - 1):
        j = int(np.argmax(mind))
        sel.append(j)
        mind = np.minimum(mind, ((Z - Z[j]) ** 2).sum(axis=1))
        mind[j] = -np.inf
    return np.array(sel, dtype=np.int64)


def ref_centroid(Z: np.ndarray) -> int:
    return int(np.argmin(((Z - Z.mean(axis=0)) ** 2).sum(axis=1)))


def ref_medoid(Z: np.ndarray) -> int:
    n = len(Z)
    if n <= 200:
        cand = np.arange(n)
    else:
        k = min(max(int(np.sqrt(n)), 30), n)
        cand = np.sort(np.argsort(((Z - Z.mean(axis=0)) ** 2).sum(axis=1), kind="stable")[:k])
    sums = cdist(Z[cand], Z[cand]).sum(axis=1)
    return int(cand[int(np.argmin(sums))])


def ref_variance_ordered(Z: np.ndarray, b: int) -> np.ndarray:
    k = min(10, len(Z) - 1)
    if k <= 1:
        return np.arange(b)
    dist, _ = NearestNeighbors(n_neighbors=k).fit(Z).kneighbors(Z)
    return np.argsort(-dist.var(axis=1), kind="stable")[:b]


def ref_stratified(n_p: int, b: int, seed: int, call: int, pid: int) -> np.ndarray:
    keys = generator(seed, "reduce", call, pid).random(n_p)
    return np.argsort(keys, kind="stable")[:b]


def reference_reduce(model, X: np.ndarray, total: int, method: str, call: int = 0) -> np.ndarray:
    """Global row indices, grouped by partition in sorted-id order."""
    Z = (X - X.mean(axis=0)) / X.std(axis=0)
    leaves = model.apply_raw(X)
    unique = np.unique(leaves)
    sizes = np.array([(leaves == p).sum() for p in unique])
    absz = np.abs(Z).mean(axis=1)
    mabsz = np.array([absz[leaves == p].mean() for p in unique])
    budgets = reduce_budgets(sizes, total, mabsz, True, 5)
    out = []
    for p, n_p, b in zip(unique, sizes, budgets):
        rows = np.flatnonzero(leaves == p)
        Zp = Z[rows]
        if b == 0:
            continue
        if b >= n_p and method != "stratified":
            local = np.arange(n_p)
        elif method == "centroid_fps":
            local = ref_fps(Zp, b, ref_centroid(Zp))
        elif method == "medoid_fps":
            local = ref_fps(Zp, b, ref_medoid(Zp))
        elif method == "variance_ordered":
            local = ref_variance_ordered(Zp, b)
        else:
            local = ref_stratified(n_p, b, model.random_state_, call, int(p))
        out.append(rows[local])
    return np.concatenate(out)


# ------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    n = 2400
    A = rng.standard_normal((n, 4))
    A[:, 1] += 0.8 * A[:, 0]
    A[: n // 3, 2] = rng.exponential(2.0, n // 3)
    return A


@pytest.fixture(scope="module", params=[None, 4], ids=["auto-leaves", "4-leaves"])
def fitted(request, data):
    # 4 leaves of ~600 rows exercise the approximate medoid (> 200 rows)
    return HVRT(random_state=3, n_partitions=request.param).fit(data)


@pytest.mark.parametrize("target_rows", [10**6, 500, 150])
@pytest.mark.parametrize("method", METHODS)
def test_matches_sequential_reference_for_several_chunkings(data, fitted, method, target_rows):
    with dask.config.set({"hvrt.chunks.target-rows": target_rows}):
        model = HVRT(random_state=3, n_partitions=fitted.n_partitions).fit(data)
    if target_rows == 150:  # many small chunks
        assert model.grouped_.n_chunks >= 3
    total = 480
    out, idx = model.reduce(n=total, method=method, return_indices=True)
    expected = reference_reduce(model, data, total, method)
    assert idx.dtype == np.int64
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(out, data[idx])


@pytest.mark.parametrize("method", METHODS)
def test_lazy_input_on_local_cluster_matches_reference(client, data, method):
    X = da.from_array(data, chunks=(700, -1))
    with dask.config.set({"hvrt.chunks.target-rows": 400}):
        model = HVRT(random_state=3).fit(X)
    assert model.grouped_.n_chunks > 2
    out, idx = model.reduce(ratio=0.25, method=method, return_indices=True)
    assert isinstance(out, da.Array) and isinstance(idx, da.Array)
    assert not any(np.isnan(c) for c in out.chunks[0])
    out_c, idx_c = dask.compute(out, idx)
    assert out_c.shape == (600, 4)
    expected = reference_reduce(model, data, 600, method)
    np.testing.assert_array_equal(idx_c, expected)
    np.testing.assert_array_equal(out_c, data[idx_c])


def test_stratified_draws_fresh_keys_per_call_and_reproduces(data):
    m1 = HVRT(random_state=5).fit(data)
    m2 = HVRT(random_state=5).fit(data)
    a0 = m1.reduce(n=300, method="stratified", return_indices=True)[1]
    a1 = m1.reduce(n=300, method="stratified", return_indices=True)[1]
    b0 = m2.reduce(n=300, method="stratified", return_indices=True)[1]
    b1 = m2.reduce(n=300, method="stratified", return_indices=True)[1]
    assert not np.array_equal(np.sort(a0), np.sort(a1))  # fresh keys per call
    np.testing.assert_array_equal(a0, b0)  # same seed + call sequence reproduces
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a1, reference_reduce(m1, data, 300, "stratified", call=1))


def test_fps_never_reselects_on_duplicates():
    # 3 distinct points repeated: FPS must still return distinct rows
    Z = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), 10, axis=0)
    parts = ChunkPartitions.from_sizes(np.array([1]), np.array([30]))
    s = get_selection_strategy("fps")
    idx = s.select(s.prepare(Z, parts, {}), np.array([12]), [])
    assert len(np.unique(idx)) == 12
    # the first three picks cover the three distinct points
    assert len({tuple(r) for r in Z[idx[:3]]}) == 3


def test_fps_batched_kernel_matches_reference_on_uneven_partitions():
    rng = np.random.default_rng(0)
    sizes = np.array([3, 250, 40, 900, 7, 1, 120])
    Z = rng.standard_normal((sizes.sum(), 6))
    parts = ChunkPartitions.from_sizes(np.arange(len(sizes)) * 2, sizes)
    budgets = np.array([3, 60, 39, 200, 0, 1, 5])
    for name, seed_fn in (("centroid_fps", ref_centroid), ("medoid_fps", ref_medoid)):
        s = get_selection_strategy(name)
        got = s.select(s.prepare(Z, parts, {}), budgets, [])
        exp = []
        for sl, b in zip(parts.slices(), budgets):
            Zp = Z[sl]
            if b == 0:
                continue
            loc = np.arange(len(Zp)) if b >= len(Zp) else ref_fps(Zp, b, seed_fn(Zp))
            exp.append(sl.start + loc)
        np.testing.assert_array_equal(got, np.concatenate(exp))


def test_registry_aliases_and_custom_strategy(data):
    assert get_selection_strategy("fps") is get_selection_strategy("centroid_fps")
    assert {"stratified", "centroid_fps", "medoid_fps", "variance_ordered"} <= set(
        SELECTION_STRATEGIES.names()
    )

    class FirstRows:
        name = "test_first_rows"

        def prepare(self, Xz, parts, params):
            return parts

        def select(self, context, budgets, rngs):
            return np.concatenate(
                [np.arange(s, s + b) for s, b in zip(context.starts, budgets)]
            ).astype(np.int64)

    SELECTION_STRATEGIES.register(FirstRows(), overwrite=True)
    model = HVRT(random_state=1).fit(data)
    out, idx = model.reduce(n=200, method="test_first_rows", return_indices=True)
    leaves = model.apply_raw(data)
    # first rows (original order) of every partition, budgets as the budget rule says
    budgets = reduce_budgets(
        model.partition_sizes_, 200, model.partition_mean_abs_z_, True, 5
    )
    exp = np.concatenate(
        [np.flatnonzero(leaves == p)[:b] for p, b in zip(model.unique_partitions_, budgets)]
    )
    np.testing.assert_array_equal(idx, exp)
