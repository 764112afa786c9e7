"""The five partition targets and the y blend against direct formulas."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hvrt_dask.hvrt import _targets


@pytest.fixture
def Z():
    rng = np.random.default_rng(3)
    return rng.standard_normal((300, 5)) @ rng.standard_normal((5, 5))


def _pairwise_reference(Z):
    t = np.zeros(len(Z))
    for i, j in itertools.combinations(range(Z.shape[1]), 2):
        p = Z[:, i] * Z[:, j]
        if p.std() > 1e-10:
            t += (p - p.mean()) / p.std()
    return (t - t.mean()) / t.std()


def test_pairwise_target(Z):
    np.testing.assert_allclose(_targets.compute_target(Z, "hvrt"), _pairwise_reference(Z), atol=1e-12)
    np.testing.assert_allclose(_targets.compute_target(Z, "hart"), _pairwise_reference(Z), atol=1e-12)


def test_pairwise_drops_degenerate_pairs(Z):
    Z2 = Z.copy()
    Z2[:, 0] = 0.0  # every pair with column 0 has zero variance
    np.testing.assert_allclose(_targets.compute_target(Z2, "hvrt"), _pairwise_reference(Z2[:, 1:]), atol=1e-12)


def test_sum_and_pyramid(Z):
    np.testing.assert_allclose(_targets.compute_target(Z, "fast_hvrt"), Z.sum(1))
    np.testing.assert_allclose(_targets.compute_target(Z, "fast_hart"), Z.sum(1))
    A = _targets.compute_target(Z, "pyramid_hart")
    assert (A <= 1e-12).all()
    np.testing.assert_allclose(A, np.abs(Z.sum(1)) - np.abs(Z).sum(1))


def test_families():
    assert {k: (v.robust, v.criterion) for k, v in _targets.TARGETS.items()} == {
        "hvrt": (False, "squared_error"),
        "fast_hvrt": (False, "squared_error"),
        "hart": (True, "absolute_error"),
        "fast_hart": (True, "absolute_error"),
        "pyramid_hart": (True, "absolute_error"),
    }
    with pytest.raises(ValueError, match="unknown target"):
        _targets.get_target("nope")


def test_y_blend_modes(Z):
    rng = np.random.default_rng(0)
    y = rng.standard_normal(len(Z))
    x = Z.sum(1)
    yp = (y - y.mean()) / y.std()
    e = np.abs(yp - np.median(yp))
    yc = (e - e.mean()) / e.std()
    np.testing.assert_allclose(_targets.blend(x, y, 0.3, "fixed", False), 0.7 * x + 0.3 * yc)
    w = 0.3 * (1 - abs(np.corrcoef(x, yc)[0, 1]))
    np.testing.assert_allclose(_targets.blend(x, y, 0.3, "adaptive", False), (1 - w) * x + w * yc)
    wi = 0.3 * e / e.max()
    np.testing.assert_allclose(_targets.blend(x, y, 0.3, "linear", False), (1 - wi) * x + wi * yc)
    np.testing.assert_array_equal(_targets.blend(x, y, 0.0, "fixed", False), x)
    # robust variant: median / 1.4826 MAD in both steps
    mad = lambda v: 1.4826 * np.median(np.abs(v - np.median(v)))  # noqa: E731
    ypr = (y - np.median(y)) / mad(y)
    er = np.abs(ypr - np.median(ypr))
    ycr = (er - np.median(er)) / mad(er)
    np.testing.assert_allclose(_targets.blend(x, y, 0.5, "fixed", True), 0.5 * x + 0.5 * ycr)
    with pytest.raises(ValueError, match="y_weight_mode"):
        _targets.blend(x, y, 0.5, "weird", False)


def test_location_scale_zero_scale_is_one():
    X = np.column_stack([np.ones(10), np.arange(10.0)])
    c, s = _targets.location_scale(X, robust=False)
    assert s[0] == 1.0 and s[1] == pytest.approx(np.arange(10.0).std())
    c, s = _targets.location_scale(X, robust=True)
    assert s[0] == 1.0 and c[1] == 4.5
