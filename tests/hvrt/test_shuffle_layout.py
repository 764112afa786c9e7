"""The shuffled layout gives bit-identical results to a sequential in-memory grouping.

The reference is today's layout rebuilt in the test from first principles: leaf of every
row, one stable argsort, greedy packing of sorted partitions, sequential ``bincount`` sums
of mean |z|. A model fitted on dask input (several chunkings; a LocalCluster and a real
``dask scheduler`` + two ``dask worker`` processes) must give exactly the same expand and
reduce output as the same model carrying that reference layout.
"""

from __future__ import annotations

import copy
import math

import dask
import dask.array as da
import numpy as np
import pytest

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.estimator import HVRT, FastHART
from hvrt_dask.hvrt.partitioned import PartitionedData

CONFIG = {"hvrt.chunks.target-rows": 1500, "hvrt.tree.sample-size": 4000}
N = 9000


def _data() -> np.ndarray:
    rng = np.random.default_rng(11)
    X = rng.standard_normal((N, 4))
    X[:, 1] += X[:, 0] ** 2
    X[:, 3] = rng.choice([0.0, 2.0, 5.0], size=N)  # categorical codes
    return X


def _reference_layout(m, X: np.ndarray) -> PartitionedData:
    """Sequential grouping of ``X`` by ``m``'s fitted tree (independent of partition())."""
    Z = m.transform_(X)
    leaves = m.tree_.apply(Z.astype(np.float32)).astype(np.int64)
    unique, inv = np.unique(leaves, return_inverse=True)
    sizes = np.bincount(inv)
    mean_abs_z = np.bincount(inv, weights=np.abs(Z).mean(axis=1)) / sizes
    order = np.argsort(inv, kind="stable")
    groups, cur, acc = [], [], 0
    for k, s in enumerate(sizes):
        if acc and acc + s > CONFIG["hvrt.chunks.target-rows"]:
            groups.append(np.array(cur))
            cur, acc = [], 0
        cur.append(k)
        acc += int(s)
    groups.append(np.array(cur))
    bounds = np.concatenate([[0], np.cumsum([sizes[g].sum() for g in groups])])
    spans = list(zip(bounds[:-1], bounds[1:]))
    local = {"X": [X[order][a:b] for a, b in spans], "Xz": [Z[order][a:b] for a, b in spans],
             "rows": [order[a:b] for a, b in spans]}
    return PartitionedData(
        X=da.concatenate([da.from_array(b) for b in local["X"]]),
        rows=da.concatenate([da.from_array(b) for b in local["rows"]]),
        tables=[ChunkPartitions.from_sizes(unique[g], sizes[g]) for g in groups],
        unique=unique, sizes=sizes, mean_abs_z=mean_abs_z, part_index=groups,
        cont_cols=m.grouped_.cont_cols, transform=m.transform_, local=local,
    )


def _run(m, X_ext) -> dict[str, np.ndarray]:
    """Every result kind from a fresh call sequence."""
    def arr(a):
        return np.asarray(a.compute() if hasattr(a, "compute") else a)

    out = {}
    for strat in ("epanechnikov", "bootstrap_noise", "univariate_kde_copula"):
        out[f"expand-{strat}"] = arr(m.expand(2500, generation_strategy=strat))
    out["expand-vw"] = arr(m.expand(1200, variance_weighted=True))
    red, idx = m.reduce(ratio=0.05, return_indices=True)
    out["reduce"], out["reduce-idx"] = arr(red), arr(idx)
    red, idx = m.reduce(n=300, method="stratified", variance_weighted=False, return_indices=True)
    out["reduce-stratified"], out["reduce-stratified-idx"] = arr(red), arr(idx)
    out["expand-X"] = arr(m.expand(700, X=X_ext))
    out["reduce-X"] = arr(m.reduce(n=150, X=X_ext))
    return out


def _assert_matches_reference(m, X: np.ndarray, X_ext) -> None:
    ref = copy.copy(m)
    ref.grouped_ = _reference_layout(m, X)
    ref._call_counters_ = {}
    m._call_counters_ = {}
    np.testing.assert_array_equal(m.grouped_.rows.compute(), np.concatenate(ref.grouped_.local["rows"]))
    # mean |z| is now the correctly rounded sum / size (chunking-free), within an ulp or
    # two of today's sequential sum; the results below must not change at all.
    Z = m.transform_(X)
    absz, rows = np.abs(Z).mean(axis=1), np.concatenate(ref.grouped_.local["rows"])
    bounds = np.concatenate([[0], np.cumsum(ref.grouped_.sizes)])
    exact = [math.fsum(absz[rows[a:b]]) / (b - a) for a, b in zip(bounds[:-1], bounds[1:])]
    np.testing.assert_array_equal(m.grouped_.mean_abs_z, exact)
    np.testing.assert_allclose(m.grouped_.mean_abs_z, ref.grouped_.mean_abs_z, rtol=1e-13)
    got, want = _run(m, X_ext), _run(ref, X[:3000])
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


FEATURES = ["continuous"] * 3 + ["categorical"]


@pytest.mark.parametrize("est", [HVRT, FastHART])
def test_numpy_matches_reference(est):
    X = _data()
    with dask.config.set(CONFIG):
        m = est(random_state=5).fit(X, feature_types=FEATURES)
        _assert_matches_reference(m, X, X[:3000])


@pytest.mark.parametrize("chunks", [N, 1700, 4100])
def test_local_cluster_matches_reference(client, chunks):
    X = _data()
    with dask.config.set(CONFIG):
        m = HVRT(random_state=5).fit(da.from_array(X, chunks=(chunks, -1)), feature_types=FEATURES)
        assert len(m.grouped_.X.dask) == m.grouped_.n_chunks > 3  # persisted, one task per chunk
        _assert_matches_reference(m, X, da.from_array(X[:3000], chunks=(1100, -1)))


@pytest.mark.cli_cluster
def test_real_scheduler_matches_reference(real_cluster):
    from distributed import Client

    address, _ = real_cluster
    X = _data()
    with Client(address, set_as_default=True), dask.config.set(CONFIG):
        m = FastHART(random_state=5).fit(da.from_array(X, chunks=(1300, -1)), feature_types=FEATURES)
        _assert_matches_reference(m, X, da.from_array(X[:3000], chunks=(700, -1)))


def test_original_row_numbers_travel_with_rows(client):
    """return_indices reports the rows' original numbers; augment restores the original order."""
    X = _data()
    with dask.config.set(CONFIG):
        m = HVRT(random_state=1).fit(da.from_array(X, chunks=(999, -1)), feature_types=FEATURES)
        red, idx = m.reduce(ratio=0.1, return_indices=True)
        np.testing.assert_array_equal(red.compute(), X[idx.compute()])
        # and put back in original order by the same shuffle (augment's training part)
        np.testing.assert_array_equal(m.augment(N + 50).compute()[:N], X)


def test_bad_external_dask_input_refused_before_writing(client, tmp_path):
    X = _data()
    with dask.config.set(CONFIG):
        m = HVRT(random_state=1).fit(da.from_array(X, chunks=(3000, -1)), feature_types=FEATURES)
        bad = X[:2000].copy()
        bad[1500, 2] = np.nan
        for call in (lambda out: m.expand(100, X=da.from_array(bad, chunks=(700, -1)), output=out),
                     lambda out: m.reduce(n=10, X=da.from_array(bad, chunks=(700, -1)), output=out)):
            out = tmp_path / "out.zarr"
            with pytest.raises(ValueError, match="NaN or infinite values in column.*2"):
                call(str(out))
            assert not out.exists()


def test_changed_input_between_passes_is_detected():
    import pandas as pd

    from hvrt_dask.hvrt._layout import unpack_block

    df = pd.DataFrame({"pos": [10, 12, 12], "row": [0, 1, 2], "x0": [0.0, 1.0, 2.0]})
    with pytest.raises(RuntimeError, match="output chunk 1 received 3 rows for 3 canonical"):
        unpack_block(df, np.array([0, 10, 13]), partition_info={"number": 1})
    placed = unpack_block(df.assign(pos=[12, 10, 11]), np.array([0, 10, 13]), partition_info={"number": 1})
    assert placed["row"].tolist() == [1, 2, 0]
