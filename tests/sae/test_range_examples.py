"""Examples across the activation range against a sequential reference on dyadic data.

The reference is independent of the package: a pure-Python SplitMix64 on ints, a per-sample
loop over features with ``bisect`` for the bin, and ``sorted`` per (feature, bin).
"""

from __future__ import annotations

import bisect
import itertools

import numpy as np
import pytest

from hvrt_dask import config
from hvrt_dask._seeding import seed_sequence
from hvrt_dask.sae import range_examples as rx
from hvrt_dask.sae.stats import histogram_edges

MASK = 2**64 - 1


def tree_reduce(items, fn, split_every):
    """A fixed tree of consecutive groups (local, so this test does not depend on the extraction's tree)."""
    level = list(items)
    while len(level) > 1:
        level = [fn(level[i:i + split_every]) if len(level[i:i + split_every]) > 1 else level[i]
                 for i in range(0, len(level), split_every)]
    return level[0]


def py_mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def py_hash(seed: int, f: int, s: int) -> int:
    key = int(seed_sequence(seed, "range-examples").generate_state(1, np.uint64)[0])
    return py_mix(py_mix(key ^ f) ^ s)


def reference(smax, sarg, edges, m, seed, feature_offset=0):
    """{(feature, bin): [(hash, sample, value, position), ...]} sorted, m per bin."""
    cands: dict[tuple[int, int], list] = {}
    e = [float(x) for x in edges]
    for s in range(smax.shape[0]):
        for f in range(smax.shape[1]):
            v = float(smax[s, f])
            if v <= 0:
                continue
            b = bisect.bisect_left(e, v)
            gf = f + feature_offset
            cands.setdefault((gf, b), []).append((py_hash(seed, gf, s), s, v, int(sarg[s, f])))
    return {key: sorted(c)[:m] for key, c in cands.items()}


def as_dict(part, feature_offset=0):
    out = {}
    d, nb, m = part["range_sample"].shape
    for f in range(d):
        for b in range(nb):
            rows = [(int(h), int(s), float(v), int(p)) for h, s, v, p in zip(
                part["range_hash"][f, b], part["range_sample"][f, b], part["range_value"][f, b], part["range_position"][f, b])
                if s >= 0]
            if rows:
                out[(f + feature_offset, b)] = rows
    return out


def data(n=80, f=7, seed=0):
    """Dyadic maxima spread over several decades (many in the same bins, some ties, zeros)."""
    rng = np.random.default_rng(seed)
    smax = (2.0 ** rng.integers(-12, 8, size=(n, f)) * rng.integers(-1, 4, size=(n, f))).astype(np.float32)
    sarg = rng.integers(0, 16, size=(n, f)).astype(np.int32)
    return smax, sarg


EDGES = histogram_edges(16, (-4, 4))


def test_hash_matches_python_reference_and_is_keyed():
    f = np.array([0, 1, 5, 2**20, 0])
    s = np.array([0, 0, 7, 3, 2**40])
    got = rx.keyed_hash(3, f, s)
    assert got.dtype == np.uint64
    assert [int(x) for x in got] == [py_hash(3, int(a), int(b)) for a, b in zip(f, s)]
    assert (rx.keyed_hash(4, f, s) != got).all()


def test_default_from_config():
    assert config.get("extract.range-examples") == 5


@pytest.mark.parametrize("m", [1, 2, 5])
def test_chunk_matches_reference(m):
    smax, sarg = data()
    part = rx.chunk_partial(smax, sarg, np.arange(80), EDGES, m, seed=11)
    assert part["range_hash"].shape == (7, 16, m)
    ref = reference(smax, sarg, EDGES, m, 11)
    assert as_dict(part) == ref
    # every positive sample max lies in its bin's bounds; empty slots are NaN / -1
    live = part["range_sample"] >= 0
    assert np.isnan(part["range_value"][~live]).all() and (part["range_position"][~live] == -1).all()
    assert sum(len(v) for v in ref.values()) == int(live.sum())


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("sizes", [[80], [10, 70], [7] * 11 + [3], [1] * 80])
@pytest.mark.parametrize("split_every", [2, 3, 8])
def test_merge_exact_for_any_chunking_and_order(m, sizes, split_every):
    smax, sarg = data()
    ref = reference(smax, sarg, EDGES, m, 5)
    bounds = np.cumsum([0, *sizes])
    parts = [rx.chunk_partial(smax[a:b], sarg[a:b], np.arange(a, b), EDGES, m, 5) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = tree_reduce(parts, rx.merge, split_every)
    assert as_dict(merged) == ref
    rng = np.random.default_rng(2)
    shuffled = tree_reduce([parts[i] for i in rng.permutation(len(parts))], rx.merge, split_every)
    for key in rx.KEYS:
        np.testing.assert_array_equal(shuffled[key], merged[key])


def test_feature_blocks_and_noncontiguous_samples():
    """Blocks (sizes not dividing d) with global feature offsets equal the whole; samples in any id order."""
    smax, sarg = data(n=40, f=10, seed=3)
    whole = as_dict(rx.chunk_partial(smax, sarg, np.arange(40), EDGES, 3, 9))
    perm = np.random.default_rng(0).permutation(40)
    got = {}
    for f0 in range(0, 10, 3):
        sl = slice(f0, f0 + 3)
        halves = [rx.chunk_partial(smax[perm[a:b], sl], sarg[perm[a:b], sl], perm[a:b], EDGES, 3, 9, feature_offset=f0)
                  for a, b in ((0, 17), (17, 40))]
        got.update(as_dict(rx.merge(halves[::-1]), feature_offset=f0))
    assert got == whole == reference(smax, sarg, EDGES, 3, 9)


def test_merge_is_associative_and_commutative():
    smax, sarg = data(n=30, seed=4)
    p = [rx.chunk_partial(smax[i:i + 10], sarg[i:i + 10], np.arange(i, i + 10), EDGES, 2, 1) for i in (0, 10, 20)]
    results = [rx.merge([rx.merge([p[a], p[b]]), p[c]]) for a, b, c in itertools.permutations(range(3))]
    for r in results[1:]:
        for key in rx.KEYS:
            np.testing.assert_array_equal(r[key], results[0][key])


def test_uniform_within_bin():
    """Each of 8 equal-valued samples in one bin is chosen about equally often across seeds."""
    smax = np.full((8, 1), 0.5, np.float32)
    counts = np.zeros(8)
    for seed in range(400):
        part = rx.chunk_partial(smax, np.zeros((8, 1), np.int32), np.arange(8), EDGES, 2, seed)
        counts[part["range_sample"][0][part["range_sample"][0] >= 0]] += 1
    assert counts.sum() == 800
    # binomial(400, 1/4) per sample: mean 100, sd ~8.7; 6 sd bounds
    assert (np.abs(counts - 100) < 52).all(), counts


def test_bad_input():
    smax, sarg = data(n=4)
    with pytest.raises(ValueError, match="range-examples"):
        rx.chunk_partial(smax, sarg, np.arange(4), EDGES, 0, 1)
    a = rx.empty(3, 16, 2)
    with pytest.raises(ValueError, match="partial 1 has shape"):
        rx.merge([a, rx.empty(4, 16, 2)])
    with pytest.raises(ValueError, match="at least one"):
        rx.merge([])
    assert as_dict(rx.chunk_partial(np.zeros((5, 3), np.float32), np.zeros((5, 3), np.int32), np.arange(5), EDGES, 2, 1)) == {}


@pytest.mark.parametrize("sizes", [[80], [10, 70], [7] * 11 + [3]])
def test_sparse_form_matches_reference_and_dense(sizes):
    """Extraction's sparse form (chunk_partial_sparse, merge_sparse) holds exactly the reference's
    examples, in any merge order and mixed with dense partials."""
    smax, sarg = data()
    m = 2
    ref = reference(smax, sarg, EDGES, m, 5, feature_offset=3)
    bounds = np.cumsum([0, *sizes])
    sparse = [rx.chunk_partial_sparse(smax[a:b], sarg[a:b], np.arange(a, b), EDGES, m, 5, feature_offset=3)
              for a, b in zip(bounds[:-1], bounds[1:])]
    for p in sparse:
        idx = p[rx.SPARSE_INDEX]
        assert (np.diff(idx) > 0).all() and (p["range_sample"] >= 0).all()
    merged = tree_reduce(sparse[::-1], rx.merge_sparse, 3)
    assert as_dict(rx.densify(merged), feature_offset=3) == ref
    dense = [rx.densify(p) for p in sparse]
    mixed = rx.merge([dense[0], *sparse[1:]]) if len(sparse) > 1 else rx.merge(dense)
    for key in rx.KEYS:
        np.testing.assert_array_equal(rx.densify(merged)[key], rx.merge(dense)[key])
        np.testing.assert_array_equal(rx.densify(rx.sparsify(mixed))[key], rx.merge(dense)[key])
