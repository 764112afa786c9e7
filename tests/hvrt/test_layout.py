"""Partitions become chunks: packing, planning from counts, exact sums, grouping invariants."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.tree import DecisionTreeRegressor

from hvrt_dask.hvrt import _layout
from hvrt_dask.hvrt._layout import pack_partitions, plan
from hvrt_dask.hvrt.estimator import HVRT
from hvrt_dask.hvrt.partitioned import partition


def test_pack_partitions():
    groups = pack_partitions(np.array([3, 4, 2, 10, 1, 1]), target=7)
    assert [g.tolist() for g in groups] == [[0, 1], [2], [3], [4, 5]]
    # every partition exactly once, in order
    assert np.concatenate(groups).tolist() == list(range(6))


def _reference(leaves: np.ndarray, target: int):
    """Independent sequential grouping: stable argsort by leaf, then greedy packing."""
    order = np.argsort(leaves, kind="stable")
    unique, sizes = np.unique(leaves, return_counts=True)
    chunks, cur, acc = [], [], 0
    for pid, s in zip(unique, sizes):
        if acc and acc + s > target:
            chunks.append(cur)
            cur, acc = [], 0
        cur.append(int(pid))
        acc += int(s)
    chunks.append(cur)
    return order, unique, sizes, chunks


def test_plan_from_counts_matches_sequential_grouping():
    rng = np.random.default_rng(3)
    leaf_ids = np.array([3, 7, 8, 12, 20, 31])
    leaves = rng.choice(leaf_ids[:5], size=900, p=[0.1, 0.5, 0.2, 0.1, 0.1])  # leaf 31 empty
    order, unique, sizes, chunks = _reference(leaves, 200)
    for cuts in ([0, 900], [0, 100, 450, 451, 900], list(range(0, 901, 90))):
        counts = np.stack([np.bincount(np.searchsorted(leaf_ids, leaves[a:b]), minlength=6)
                           for a, b in zip(cuts[:-1], cuts[1:])])
        p = plan(counts, leaf_ids, 200)
        assert p.unique.tolist() == unique.tolist() and p.sizes.tolist() == sizes.tolist()
        assert [t.ids.tolist() for t in p.tables] == chunks
        # canonical position of each row from the starts, as route_block assigns it
        canon = np.empty(900, dtype=np.int64)
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            pos = np.searchsorted(leaf_ids, leaves[a:b])
            for k in np.unique(pos):
                r = np.flatnonzero(pos == k)
                canon[a + r] = p.starts[i, k] + np.arange(len(r))
        inv = np.empty(900, dtype=np.int64)
        inv[canon] = np.arange(900)
        np.testing.assert_array_equal(inv, order)


def test_exact_abs_sums_do_not_depend_on_chunking():
    rng = np.random.default_rng(0)
    v = np.abs(rng.standard_normal(5000)) * 10.0 ** rng.integers(-8, 4, 5000)
    pos = rng.integers(0, 4, 5000)
    whole = _layout.exact_abs_sums([_layout.summarize(pos, v, 4)], 4)
    parts = [_layout.summarize(pos[a:a + 700], v[a:a + 700], 4) for a in range(0, 5000, 700)]
    np.testing.assert_array_equal(_layout.exact_abs_sums(parts, 4), whole)
    from fractions import Fraction

    exact = [float(sum((Fraction(x) for x in v[pos == k]), Fraction(0))) for k in range(4)]
    assert whole.tolist() == exact  # correctly rounded


def _tree_and_data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    tree = DecisionTreeRegressor(max_leaf_nodes=12, min_samples_leaf=40, random_state=0)
    tree.fit(X.astype(np.float32), X[:, 0] * X[:, 1] + X[:, 2])
    return X, tree


def _check_against_reference(g, X, tree, target):
    leaves = tree.apply(X.astype(np.float32)).astype(np.int64)
    order, unique, sizes, chunks = _reference(leaves, target)
    rows = g.rows.compute()
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(g.X.compute(), X[order])
    assert g.unique.tolist() == unique.tolist() and g.sizes.tolist() == sizes.tolist()
    assert [t.ids.tolist() for t in g.tables] == chunks
    assert g.X.chunks[0] == g.rows.chunks[0] == g.row_chunks
    absz = np.abs(X).mean(axis=1)
    np.testing.assert_allclose(g.mean_abs_z, [absz[leaves == u].mean() for u in unique], rtol=1e-14)


@pytest.mark.parametrize("chunks", [3000, 700, 451])
def test_partition_dask_matches_reference(sync_scheduler, chunks):
    X, tree = _tree_and_data()
    ident = lambda b: b  # noqa: E731
    g = partition(da.from_array(X, chunks=(chunks, -1)), tree, ident, np.arange(3), target=500)
    _check_against_reference(g, X, tree, 500)


def test_partition_numpy_matches_reference():
    X, tree = _tree_and_data()
    g = partition(X, tree, lambda b: b, np.arange(3), target=500)
    _check_against_reference(g, X, tree, 500)


def test_partition_p2p_on_cluster(client):
    X, tree = _tree_and_data(5000, 1)
    g = partition(da.from_array(X, chunks=(800, -1)), tree, lambda b: b, np.arange(3), target=600)
    _check_against_reference(g, X, tree, 600)
    assert len(g.X.dask) == g.n_chunks  # persisted: one task per chunk


def test_summary_too_large_names_the_setting(sync_scheduler):
    X, tree = _tree_and_data()
    with dask.config.set({"hvrt.chunks.max-summary-bytes": 1000}):
        with pytest.raises(ValueError, match="hvrt.chunks.max-summary-bytes.*"):
            partition(da.from_array(X, chunks=(100, -1)), tree, lambda b: b, np.arange(3))


def test_fitted_model_grouping(client):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 4))
    with dask.config.set({"hvrt.chunks.target-rows": 500}):
        m = HVRT().fit(da.from_array(X, chunks=900))
    g = m.grouped_
    assert g.n_chunks > 3
    rows = g.rows.compute()
    np.testing.assert_array_equal(g.X.compute(), X[rows])
    leaves = m.apply_raw(X)
    np.testing.assert_array_equal(rows, np.argsort(leaves, kind="stable"))
    np.testing.assert_allclose(g.Xz.compute(), m.transform_(g.X.compute()))
    # persisted on the cluster: the graph is one task per chunk
    assert len(g.X.dask) == g.n_chunks
