"""The block-wise expand permutation: a bijection, uniformly distributed, chunking-free.

References: a permutation is checked by sorting; uniformity by a chi-square test of the
observed frequencies of all 4! orders against the uniform law; the lazy path against the
in-memory scatter ``out[dest] = X`` for several chunkings.
"""

from __future__ import annotations

import itertools
import math

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import stats

from hvrt_dask.hvrt import permutation
from hvrt_dask.hvrt._layout import permute_rows


@pytest.mark.parametrize("n, block", [(1, 5), (5, 2), (10, 10), (11, 10), (1000, 7), (20_000, 20_000), (30_001, 1000)])
def test_is_a_permutation(n, block):
    dest = permutation.expand_permutation(3, 1, n, block)
    np.testing.assert_array_equal(np.sort(dest), np.arange(n))


def test_table_margins():
    table = permutation.permutation_table(0, 0, 10_007, 1000)
    sizes = np.diff(permutation.block_bounds(10_007, 1000))
    np.testing.assert_array_equal(table[0].sum(axis=1), sizes)  # every source row goes somewhere
    np.testing.assert_array_equal(table[0].sum(axis=0), sizes)  # every destination is filled
    np.testing.assert_array_equal(table[1], np.cumsum(table[0], axis=0) - table[0])


def _chi_square_p(n: int, block: int, draws: int) -> float:
    index = {p: k for k, p in enumerate(itertools.permutations(range(n)))}
    counts = np.zeros(len(index))
    for seed in range(draws):
        counts[index[tuple(permutation.expand_permutation(seed, 0, n, block))]] += 1
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.parametrize("block", [2, 3])
def test_uniform_over_all_orders(block):
    # 4! = 24 orders, 100 expected draws each: a bias of ~10 % in one order fails.
    assert _chi_square_p(4, block, 2400) > 1e-4


def test_uniform_beyond_numpys_hypergeometric_limit(monkeypatch):
    # Populations >= 1e9 take the slot-drawing branch: force it on small data.
    monkeypatch.setattr(permutation, "_MARGINALS_LIMIT", 0)
    assert _chi_square_p(4, 2, 2400) > 1e-4
    dest = permutation.expand_permutation(1, 2, 5000, 300)
    np.testing.assert_array_equal(np.sort(dest), np.arange(5000))


def test_large_population_row_has_the_right_mean():
    rng = np.random.default_rng(0)
    room = np.array([2 * 10**9, 10**9, 3])
    rows = np.array([permutation._hypergeometric_row(rng, room, 3000) for _ in range(200)])
    assert (rows.sum(axis=1) == 3000).all() and (rows <= room).all()
    np.testing.assert_allclose(rows.mean(axis=0)[:2], [2000, 1000], atol=15)  # sd of the mean ~1.8


def test_keyed_by_seed_and_call():
    a = permutation.expand_permutation(0, 0, 500, 64)
    assert not np.array_equal(a, permutation.expand_permutation(1, 0, 500, 64))
    assert not np.array_equal(a, permutation.expand_permutation(0, 1, 500, 64))
    np.testing.assert_array_equal(a, permutation.expand_permutation(0, 0, 500, 64))


@pytest.mark.parametrize("chunks", [(3000,), (1000, 1000, 1000), (333,) * 9 + (3,), (1, 2998, 1), (700,) * 4 + (200,)])
def test_lazy_matches_in_memory_for_any_chunking(chunks):
    X = np.arange(3000 * 3, dtype=np.float64).reshape(3000, 3)
    want = np.empty_like(X)
    want[permutation.expand_permutation(7, 2, 3000, 700)] = X
    lazy = permute_rows(da.from_array(X, chunks=(chunks, 3)), 7, 2, 700, "tasks")
    assert lazy.chunks[0] == tuple(np.diff(permutation.block_bounds(3000, 700)))
    np.testing.assert_array_equal(lazy.compute(), want)


def test_no_task_holds_all_rows():
    """The graph holds the table and per-block keys, never an n-long index (old design)."""
    n, block = 40_000, 1000
    lazy = permute_rows(da.zeros((n, 2), chunks=(5000, 2)), 0, 0, block, "tasks")
    graph = dict(lazy.dask)
    table = [k for k in graph if isinstance(k, str) and "permutation-table" in k]
    assert len(table) == 1
    out = dask.get(graph, table[0])
    assert out.shape == (2, math.ceil(n / block), math.ceil(n / block))


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "1000"])
def test_bad_block_rows_refused_before_work(bad):
    from hvrt_dask.hvrt.estimator import HVRT

    m = HVRT(random_state=0).fit(np.random.default_rng(0).standard_normal((300, 3)))
    calls = dict(m._call_counters_)
    with dask.config.set({"hvrt.expand.shuffle-block-rows": bad}), pytest.raises(ValueError, match="shuffle-block-rows"):
        m.expand(100)
    assert m._call_counters_ == calls  # refused before a call number was taken
