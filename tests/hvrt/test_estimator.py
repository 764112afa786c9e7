"""scikit-learn conventions, fitted attributes, y-shaped partitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

import hvrt_dask
from hvrt_dask.hvrt.estimator import HART, HVRT, FastHART, FastHVRT, PyramidHART

PEER_PARAMS = [
    "n_partitions", "min_samples_leaf", "max_depth", "min_samples_per_partition", "y_weight",
    "y_weight_mode", "auto_tune", "bandwidth", "random_state", "tree_splitter",
]


def test_params_clone_set_params():
    m = HVRT(n_partitions=12, random_state=3)
    params = m.get_params()
    assert set(PEER_PARAMS) <= set(params) and params["n_partitions"] == 12
    c = clone(m)
    assert c is not m and c.get_params() == params
    assert m.set_params(min_samples_leaf=9) is m and m.min_samples_leaf == 9
    X = np.random.default_rng(0).standard_normal((500, 3))
    assert m.fit(X) is m
    assert not hasattr(clone(m), "tree_")


def test_top_level_exports():
    assert hvrt_dask.HVRT is HVRT and hvrt_dask.PyramidHART is PyramidHART


@pytest.mark.parametrize("cls", [HVRT, FastHVRT, HART, FastHART, PyramidHART])
def test_fitted_attributes(cls):
    X = np.random.default_rng(1).standard_normal((1000, 4))
    m = cls().fit(X)
    assert m.unique_partitions_.dtype == np.int64 and np.all(np.diff(m.unique_partitions_) > 0)
    assert m.partition_sizes_.dtype == np.int64 and m.partition_sizes_.sum() == 1000
    assert len(m.partition_sizes_) == len(m.partition_mean_abs_z_) == m.n_partitions_ > 1
    assert m.n_features_in_ == 4 and not hasattr(m, "feature_names_in_")  # numpy: no names
    assert m.continuous_mask_.all() and not m.categorical_mask_.any()
    assert m.tree_sample_size_ == 1000 and m.random_state_ == 42
    g = m.grouped_
    assert len(g.tables) == g.n_chunks and len(g.part_chunk) == m.n_partitions_
    assert m._next_call("x") == 0 and m._next_call("x") == 1 and m._next_call("y") == 0


def test_robust_family_uses_median_mad():
    X = np.random.default_rng(2).standard_normal((600, 3)) ** 3
    m = HART().fit(X)
    np.testing.assert_allclose(m.center_, np.median(X, 0))
    np.testing.assert_allclose(m.scale_, 1.4826 * np.median(np.abs(X - np.median(X, 0)), 0))
    s = HVRT().fit(X)
    np.testing.assert_allclose(s.center_, X.mean(0))
    np.testing.assert_allclose(s.scale_, X.std(0))


def test_categorical_columns_reordered_in_z():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.integers(0, 3, 500), rng.standard_normal(500), rng.standard_normal(500)])
    m = HVRT().fit(X, feature_types=["categorical", "continuous", "continuous"])
    Z = m.transform_(X)
    np.testing.assert_allclose(Z[:, 0], (X[:, 1] - X[:, 1].mean()) / X[:, 1].std())
    codes = X[:, 0]
    np.testing.assert_allclose(Z[:, 2], (codes - codes.mean()) / codes.std())
    assert m.grouped_.cont_cols.tolist() == [0, 1]


def test_y_shapes_partitions_against_peer():
    hvrt = pytest.importorskip("hvrt")
    rng = np.random.default_rng(4)
    X = rng.standard_normal((1500, 5))
    y = X[:, 0] ** 2 + rng.standard_normal(1500)
    for mode in ("fixed", "adaptive", "linear"):
        ours = FastHVRT(y_weight=0.5, y_weight_mode=mode).fit(X, y)
        peer = hvrt.FastHVRT(y_weight=0.5, y_weight_mode=mode).fit(X, y)
        peer_sizes = np.unique(peer.partition_ids_, return_counts=True)[1]
        assert ours.n_partitions_ == peer.n_partitions_
        np.testing.assert_array_equal(np.sort(ours.partition_sizes_), np.sort(peer_sizes))
    assert not np.array_equal(FastHVRT().fit(X).partition_sizes_, ours.partition_sizes_)
