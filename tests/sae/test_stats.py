"""Statistics partials against numpy on the dense activation matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvrt_dask.sae import stats


def dense(seed=0, n=300, f=20):
    rng = np.random.default_rng(seed)
    z = np.maximum(rng.normal(size=(n, f)), 0).astype(np.float32) * 10 ** rng.uniform(-5, 5, size=(n, f)).astype(np.float32)
    z[:, 3] = 0  # a dead feature
    return z


def numpy_stats(z, edges):
    f = z.shape[1]
    hist = np.zeros((f, len(edges) + 1), np.int64)
    for j in range(f):
        v = z[:, j][z[:, j] > 0]
        hist[j] = np.bincount(np.searchsorted(edges, v, side="left"), minlength=len(edges) + 1)
    z64 = z.astype(np.float64)
    return {"n_active_tokens": (z > 0).sum(0), "sum": z64.sum(0), "sumsq": (z64**2).sum(0), "hist": hist}


def test_edges_fixed_from_config():
    e = stats.histogram_edges(64, (-4, 4))
    assert e.dtype == np.float32 and e.shape == (63,)
    np.testing.assert_allclose(e[[0, -1]], [1e-4, 1e4], rtol=1e-6)
    assert (np.diff(np.log10(e.astype(np.float64))) > 0).all()
    lo, hi = stats.bin_bounds(e)
    assert lo[0] == 0 and np.isinf(hi[-1]) and (lo[1:] == hi[:-1]).all()
    with pytest.raises(ValueError):
        stats.histogram_edges(1)
    with pytest.raises(ValueError):
        stats.histogram_edges(8, (2, 1))


@pytest.mark.parametrize("block,sparse_sums", [(7, False), (2048, False), (2048, True)])
def test_accumulator_vs_numpy(block, sparse_sums, monkeypatch):
    monkeypatch.setattr(stats.StatsAccumulator, "BLOCK", block)
    z = dense()
    edges = stats.histogram_edges(16, (-3, 3))
    acc = stats.StatsAccumulator(z.shape[1], edges, torch.device("cpu"))
    if not sparse_sums:  # exercise the dense float64 path used on GPUs
        monkeypatch.setattr(acc, "device", torch.device("meta"))
    for a in range(0, len(z), 64):
        acc.update(torch.from_numpy(z[a : a + 64]), len(z[a : a + 64]))
    smax = z.reshape(30, 10, -1).max(axis=1)  # 30 "samples" of 10 tokens
    part = acc.result(smax)
    ref = numpy_stats(z, edges)
    np.testing.assert_array_equal(part["n_active_tokens"], ref["n_active_tokens"])
    np.testing.assert_array_equal(part["hist"], ref["hist"])
    np.testing.assert_allclose(part["sum"], ref["sum"], rtol=1e-12)
    np.testing.assert_allclose(part["sumsq"], ref["sumsq"], rtol=1e-12)
    np.testing.assert_array_equal(part["max"], z.max(0))
    np.testing.assert_array_equal(part["n_active_samples"], (smax > 0).sum(0))
    assert part["n_valid_tokens"] == 300 and part["n_samples"] == 30
    # values exactly on an edge go to the bin whose upper bound they are
    acc2 = stats.StatsAccumulator(2, edges, torch.device("cpu"))
    acc2.update(torch.tensor([[edges[0], edges[5]], [np.float32(1e9), 0]]), 2)
    h = acc2.result(np.zeros((1, 2), np.float32))["hist"]
    assert h[0, 0] == 1 and h[1, 5] == 1 and h[0, -1] == 1 and h.sum() == 3


def test_merge_and_aggregate():
    z = dense(1)
    edges = stats.histogram_edges(8)
    parts = []
    for a in range(0, 300, 100):
        acc = stats.StatsAccumulator(z.shape[1], edges, torch.device("cpu"))
        acc.update(torch.from_numpy(z[a : a + 100]), 100)
        parts.append(acc.result(z[a : a + 100].reshape(10, 10, -1).max(1)))
    merged = stats.combine(parts)
    ref = numpy_stats(z, edges)
    np.testing.assert_array_equal(merged["hist"], ref["hist"])
    np.testing.assert_array_equal(merged["max"], z.max(0))
    agg = stats.aggregate(merged)
    act = ref["n_active_tokens"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = ref["sum"] / act
        std = np.sqrt(ref["sumsq"] / act - mean**2)
    np.testing.assert_allclose(agg["mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(agg["std"], std, rtol=1e-6)
    np.testing.assert_allclose(agg["density"], act / 300)
    np.testing.assert_array_equal(agg["dead"], act == 0)
    assert agg["dead"][3] and np.isnan(agg["mean"][3])
    np.testing.assert_allclose(agg["frequency"], (z.reshape(30, 10, -1).max(1) > 0).sum(0) / 30)


def test_delta_is_not_committed_until_add():
    acc = stats.StatsAccumulator(3, stats.histogram_edges(4), torch.device("cpu"))
    d = acc.delta(torch.arange(15) % 3, torch.ones(15))
    assert acc.hist.sum() == 0 and acc.n_valid_tokens == 0
    acc.add(d, 5)
    assert acc.hist.sum() == 15 and acc.sum.tolist() == [5.0, 5.0, 5.0]
