"""The top-k merge at its edges: exact ties at the k-th value, on both merge paths.

The float32 path selects on packed keys; every other dtype (and float32 partials whose sample
ids do not fit the packed low word) takes the reference path with its ``>= kth`` prefilter.
Both must keep every example tied at the k-th value and settle it by the total order
(value desc, sample asc), as a sequential sort of all candidates does.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hvrt_dask.sae import topk


def _sequential(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the k best (value desc, sample asc) of a [samples, features] table."""
    n_s, d = values.shape
    vals = np.full((d, k), np.nan)
    samp = np.full((d, k), -1, np.int64)
    for f in range(d):
        cand = sorted(((-values[s, f], s) for s in range(n_s) if values[s, f] > 0))[:k]
        for r, (nv, s) in enumerate(cand):
            vals[f, r], samp[f, r] = -nv, s
    return vals, samp


def _partials(values: np.ndarray, bounds, k: int, dtype):
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        block = values[a:b].astype(dtype)
        out.append(topk.chunk(block, np.zeros(block.shape, np.int32), np.arange(a, b), k, prefilter=False))
    return out


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_ties_at_kth_survive_every_grouping(dtype, k):
    rng = np.random.default_rng(5)
    # dyadic values from a tiny set: many exact ties, including at the k-th place
    values = rng.choice([0.0, 0.5, 0.75, 1.0, 1.0], size=(24, 6))
    values[:, 0] = 1.0  # feature 0: every sample ties
    exp_v, exp_s = _sequential(values, k)
    assert np.isfinite(exp_v).sum() > 0
    for bounds in ([0, 24], [0, 5, 11, 24], [0, 1, 2, 3, 12, 24]):
        parts = _partials(values, bounds, k, dtype)
        for perm in itertools.islice(itertools.permutations(range(len(parts))), 6):
            got = topk.aggregate(topk.combine([parts[i] for i in perm], k))
            np.testing.assert_array_equal(got["samples"], exp_s)
            np.testing.assert_array_equal(got["values"], exp_v.astype(got["values"].dtype))


def test_float32_large_sample_ids_take_the_reference_path():
    # ids >= 2**32 - 1 do not fit the packed key's low word: the reference path must handle them
    values = np.array([[1.0, 0.5], [1.0, 0.5], [0.25, 0.5]], np.float32)
    ids = np.array([2**33, 2**32 + 5, 7], np.int64)
    k = 2
    parts = [topk.chunk(values[i : i + 1], np.zeros((1, 2), np.int32), ids[i : i + 1], k, prefilter=False)
             for i in range(3)]
    got = topk.aggregate(topk.combine(parts, k))
    assert got["samples"].tolist() == [[2**32 + 5, 2**33], [7, 2**32 + 5]]
