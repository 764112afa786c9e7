"""Partitions become chunks: packing, grouping invariants, large partitions."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from hvrt_dask.hvrt._layout import group_rows, pack_partitions
from hvrt_dask.hvrt.estimator import HVRT


def test_pack_partitions():
    groups = pack_partitions(np.array([3, 4, 2, 10, 1, 1]), target=7)
    assert [g.tolist() for g in groups] == [[0, 1], [2], [3], [4, 5]]
    # every partition exactly once, in order
    assert np.concatenate(groups).tolist() == list(range(6))


def _check_grouped(g, X, unique, sizes, leaves):
    Xg = g.X.compute()
    rows = g.rows.compute()
    np.testing.assert_array_equal(Xg, X[rows])  # rows map grouped → original
    assert sorted(rows.tolist()) == list(range(len(X)))
    assert len(g.X.chunks[1]) == 1 and g.X.chunks[0] == g.Xz.chunks[0] == g.rows.chunks[0]
    offset = 0
    seen = []
    for c, table in enumerate(g.tables):
        assert table.n_rows == g.X.chunks[0][c]
        for pid, start, size in zip(table.ids, table.starts, table.sizes):
            r = rows[offset + start : offset + start + size]
            assert (leaves[r] == pid).all()  # the whole partition is inside this chunk
            assert size == sizes[np.searchsorted(unique, pid)]
            assert g.part_chunk[np.searchsorted(unique, pid)] == c
            seen.append(pid)
        offset += table.n_rows
    assert seen == sorted(seen) == unique.tolist()  # canonical order


def _fake(n=500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    leaves = rng.choice([3, 7, 8, 12, 20], size=n, p=[0.1, 0.5, 0.2, 0.1, 0.1])
    unique = np.unique(leaves)
    sizes = np.bincount(np.searchsorted(unique, leaves))
    return X, leaves, unique, sizes


def test_group_rows_numpy_and_dask(sync_scheduler):
    X, leaves, unique, sizes = _fake()
    ident = lambda b: b  # noqa: E731
    for src in (X, da.from_array(X, chunks=70)):
        g = group_rows(src, leaves, unique, sizes, ident, np.arange(3), target=120)
        _check_grouped(g, X, unique, sizes, leaves)
        # partition 7 (≈250 rows) is larger than a chunk and gets a chunk of its own
        big = g.tables[g.part_chunk[1]]
        assert big.ids.tolist() == [7] and big.n_rows > 120


def test_fitted_model_grouping(client):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 4))
    with dask.config.set({"hvrt.chunks.target-rows": 500}):
        m = HVRT().fit(da.from_array(X, chunks=900))
    g = m.grouped_
    assert g.n_chunks > 3
    leaves = m.apply_raw(X)
    _check_grouped(g, X, m.unique_partitions_, m.partition_sizes_, leaves)
    np.testing.assert_allclose(g.Xz.compute(), m.transform_(g.X.compute()))
    # persisted on the cluster: the graph is one task per chunk
    assert len(g.X.dask) == g.n_chunks
