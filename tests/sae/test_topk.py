"""Per-feature top-k partials: chunk selection and merge against a sorted-list reference."""

from __future__ import annotations

import numpy as np
import pytest

from hvrt_dask.sae import topk
from hvrt_dask.sae.extract.tree import tree_reduce


def reference(smax, sarg, k):
    """Sort every positive (value, sample, position) per feature by the total order."""
    out = []
    for f in range(smax.shape[1]):
        rows = [(-float(smax[s, f]), s, int(sarg[s, f])) for s in range(smax.shape[0]) if smax[s, f] > 0]
        out.append([(-v, s, p) for v, s, p in sorted(rows)[:k]])
    return out


def as_lists(part):
    return [
        [(float(v), int(s), int(p)) for v, s, p in zip(part["values"][f], part["samples"][f], part["positions"][f]) if s >= 0]
        for f in range(part["values"].shape[0])
    ]


def data(n=60, f=9, seed=0):
    rng = np.random.default_rng(seed)
    smax = rng.integers(-2, 5, size=(n, f)).astype(np.float32) / 4  # many ties and zeros
    sarg = rng.integers(0, 16, size=(n, f)).astype(np.int32)
    return smax, sarg


@pytest.mark.parametrize("k", [1, 3, 10, 100])
@pytest.mark.parametrize("prefilter", [True, False])
def test_chunk_matches_reference(k, prefilter):
    smax, sarg = data()
    part = topk.chunk(smax, sarg, np.arange(60), k, prefilter=prefilter)
    assert part["values"].shape == (9, k)
    assert as_lists(part) == reference(smax, sarg, k)


@pytest.mark.parametrize("k", [1, 4, 25])
@pytest.mark.parametrize("sizes", [[60], [10, 50], [7] * 8 + [4], [1] * 60])
@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_merge_is_exact_for_any_split(k, sizes, split_every):
    smax, sarg = data()
    ref = reference(smax, sarg, k)
    bounds = np.cumsum([0, *sizes])
    parts = [topk.chunk(smax[a:b], sarg[a:b], np.arange(a, b), k) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = tree_reduce(parts, lambda ps: topk.combine(ps, k), split_every)
    assert as_lists(merged) == ref
    # any arrival order gives bit-identical arrays
    rng = np.random.default_rng(1)
    shuffled = tree_reduce([parts[i] for i in rng.permutation(len(parts))], lambda ps: topk.combine(ps, k), split_every)
    for key in topk.KEYS:
        np.testing.assert_array_equal(shuffled[key], merged[key])


def test_empty_and_aggregate():
    e = topk.empty(3, 4)
    assert (e["samples"] == -1).all() and np.isneginf(e["values"]).all()
    smax = np.zeros((5, 3), np.float32)
    smax[2, 1] = 0.5
    part = topk.chunk(smax, np.zeros((5, 3), np.int32), np.arange(10, 15), 4)
    agg = topk.aggregate(part)
    assert agg["samples"][1, 0] == 12 and agg["values"][1, 0] == 0.5
    assert np.isnan(agg["values"][0]).all() and np.isnan(agg["values"][1, 1:]).all()


def test_tree_reduce_shape_and_errors():
    calls = []

    def comb(items):
        calls.append(len(items))
        return sum(items)

    assert tree_reduce(list(range(10)), comb, 3) == 45
    # level 1: [0..2] [3..5] [6..8] combined, [9] passes through; level 2: 4 nodes -> 3 + 1; level 3: 2
    assert calls == [3, 3, 3, 3, 2]
    with pytest.raises(ValueError):
        tree_reduce([1, 2], comb, 1)
    with pytest.raises(ValueError):
        tree_reduce([], comb, 2)
    with pytest.raises(ValueError):
        topk.combine([])


@pytest.mark.parametrize("k", [1, 3, 10, 100])
def test_chunk_sorted_matches_reference(k):
    torch = pytest.importorskip("torch")
    smax, sarg = data()
    part = topk.chunk_sorted(torch.from_numpy(smax), torch.from_numpy(sarg), 0, k)
    assert as_lists(part) == reference(smax, sarg, k)
    part2 = topk.chunk_sorted(torch.from_numpy(smax[20:]), torch.from_numpy(sarg[20:]), 20, k)
    assert as_lists(part2) == reference(np.r_[np.zeros_like(smax[:20]), smax[20:]], sarg, k)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_chunk_sparse_maxima_match_reference(k):
    """Few active (sample, feature) pairs (as in trained SAEs) take the candidates' sort: same
    arrays as the reference and as the packed selection."""
    rng = np.random.default_rng(4)
    smax = np.zeros((40, 300), np.float32)
    s, f = rng.integers(0, 40, 300), rng.integers(0, 300, 300)
    smax[s, f] = rng.integers(1, 4, 300).astype(np.float32) / 4  # ties
    assert (smax > 0).sum() * topk.SPARSE_CANDIDATES < smax.size
    sarg = rng.integers(0, 16, size=smax.shape).astype(np.int32)
    part = topk.chunk(smax, sarg, np.arange(40), k)
    assert as_lists(part) == reference(smax, sarg, k)
    dense = np.where(smax > 0, smax, rng.integers(1, 3, size=smax.shape).astype(np.float32) / 8)
    dense[smax > 0] = smax[smax > 0] + 1  # dense maxima: the packed path, still the reference
    assert (dense > 0).sum() * topk.SPARSE_CANDIDATES >= dense.size
    assert as_lists(topk.chunk(dense, sarg, np.arange(40), k)) == reference(dense, sarg, k)
