"""Bad input: a clear ValueError/TypeError naming the problem, before any output exists."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from hvrt_dask.hvrt.estimator import HVRT


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).standard_normal((400, 3))


@pytest.fixture(scope="module")
def model(X):
    return HVRT().fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(X, bad):
    Xb = X.copy()
    Xb[17, 1] = bad
    with pytest.raises(ValueError, match="NaN or infinite.*'x1'"):
        HVRT().fit(Xb)


def test_non_finite_dask(X, sync_scheduler):
    import dask.array as da

    Xb = X.copy()
    Xb[5, 2] = np.nan
    with pytest.raises(ValueError, match="'x2'"):
        HVRT().fit(da.from_array(Xb, chunks=100))


def test_all_constant_columns(X):
    """Constant columns pass through (tests/hvrt/test_columns.py); all-constant data is refused."""
    with pytest.raises(ValueError, match="every column of X is constant"):
        HVRT().fit(np.full((400, 3), 2.5))


def test_non_numeric_explicitly_continuous(X):
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    df["city"] = np.where(X[:, 0] > 0, "Oslo", "Rome")
    with pytest.raises(TypeError, match="'city'.*non-numeric"):
        HVRT().fit(df, feature_types=["continuous"] * 4)
    # auto (the default) and explicit 'categorical' both work and come back as strings
    assert set(HVRT().fit(df).expand(50)["city"]) <= {"Oslo", "Rome"}
    m = HVRT().fit(df, feature_types=["continuous"] * 3 + ["categorical"])
    out = m.expand(50)
    assert set(out["city"]) <= {"Oslo", "Rome"}
    with pytest.raises(TypeError, match="non-numeric dtype"):
        HVRT().fit(np.array([["a", "b"], ["c", "d"]]))


def test_too_few_rows():
    X = np.random.default_rng(1).standard_normal((9, 3))
    with pytest.raises(ValueError, match="9 rows.*min_samples_leaf"):
        HVRT().fit(X)


def test_single_column():
    with pytest.raises(ValueError, match=r"1 feature\(s\).*minimum of 2"):
        HVRT().fit(np.random.default_rng(2).standard_normal((200, 1)))


@pytest.mark.parametrize("n,exc", [(0, ValueError), (-5, ValueError), (2.5, TypeError), (10.0, TypeError),
                                   ("10", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_n(model, n, exc, tmp_path):
    out = tmp_path / "never.zarr"
    with pytest.raises(exc, match="n must be a positive integer"):
        model.expand(n, output=str(out))
    assert not out.exists()


def test_numpy_integer_n_ok(model):
    assert model.expand(np.int64(7)).shape == (7, 3)


def test_unknown_strategy(model, tmp_path):
    out = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match="unknown generation strategy 'nope'"):
        model.expand(10, generation_strategy="nope", output=str(out))
    assert not out.exists()


def test_bad_bandwidth_and_weighting(model):
    with pytest.raises(ValueError, match="bandwidth"):
        model.expand(10, bandwidth=-1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        model.expand(10, bandwidth="wide")
    with pytest.raises(ValueError, match="variance_weighted"):
        model.expand(10, variance_weighted="yes")


def test_feature_types_wrong_length(X):
    with pytest.raises(ValueError, match="feature_types has 2 entries but X has 3 columns"):
        HVRT().fit(X, feature_types=["continuous", "categorical"])


def test_expand_external_X_wrong_columns(X, model, tmp_path):
    out = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match="X has 2 columns but the model was fitted on 3"):
        model.expand(10, X=X[:, :2], output=str(out))
    assert not out.exists()
    m = HVRT(random_state=0).fit(pd.DataFrame(X, columns=["a", "b", "c"]))
    with pytest.raises(ValueError, match="missing the fitted columns \\['c'\\]"):
        m.expand(10, X=pd.DataFrame(X[:, :2], columns=["a", "b"]))
    # correct external data works, in any column order: the rows equal those of the same numpy data
    got = m.expand(20, X=pd.DataFrame(X[:100], columns=["a", "b", "c"])[["c", "a", "b"]])
    assert list(got.columns) == ["a", "b", "c"]
    np.testing.assert_array_equal(got.to_numpy(), np.asarray(HVRT(random_state=0).fit(X).expand(20, X=X[:100])))


def test_output_path_exists(model, tmp_path):
    p = tmp_path / "exists.zarr"
    os.makedirs(p)
    with pytest.raises(ValueError, match="already exists"):
        model.expand(10, output=str(p))


def test_bad_y_and_params(X):
    with pytest.raises(ValueError, match="one value per row"):
        HVRT(y_weight=0.5).fit(X, y=np.ones(10))
    with pytest.raises(ValueError, match="tree_splitter"):
        HVRT(tree_splitter="fast").fit(X)
    with pytest.raises(ValueError, match="y_weight_mode"):
        HVRT(y_weight_mode="x").fit(X)
    with pytest.raises(ValueError, match="n_partitions"):
        HVRT(n_partitions=0).fit(X)


def test_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        HVRT().expand(5)


# ---- sizes, shapes and labels refused before any work ------------------------------------
def test_expand_overflowing_n_refused_before_work(model, tmp_path, monkeypatch):
    from hvrt_dask.hvrt import expand as E

    monkeypatch.setattr(E, "expand_budgets", lambda *a, **k: pytest.fail("budgets computed"))
    out = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match="too large"):
        model.expand(2**63, output=str(out))
    assert not out.exists()
    with pytest.raises(ValueError, match="GiB in memory.*output="):
        model.expand(2**45)  # ~0.8 PiB as float64: refused without output=
    with pytest.raises(ValueError, match="GiB in memory"):
        model.augment(2**45)


def test_wide_short_fit_checked_before_any_pass(monkeypatch):
    """50 rows × 5000 columns: the (n, d) rule is checked before the data are read."""
    from hvrt_dask.hvrt import _columns

    def boom(*a, **k):
        pytest.fail("the data were scanned before the (n, d) check")

    monkeypatch.setattr(_columns, "resolve", boom)
    monkeypatch.setattr(_columns, "decimals_of", boom)
    X = np.random.default_rng(0).standard_normal((50, 5000))
    with pytest.raises(ValueError, match="X has 50 rows.*min_samples_leaf = 10004"):
        HVRT().fit(X)


def test_duplicate_and_colliding_column_names():
    X = np.random.default_rng(0).standard_normal((300, 4))
    with pytest.raises(ValueError, match="duplicate column name: 'a'"):
        HVRT().fit(pd.DataFrame(X, columns=["a", "b", "a", "c"]))
    with pytest.raises(ValueError, match="collide as strings: 1 and '1'"):
        HVRT().fit(pd.DataFrame(X, columns=[1, "1", 2, 3]))


@pytest.mark.parametrize("X", [np.empty((0, 3)), pd.DataFrame({"a": [], "b": []}, dtype=float)])
def test_zero_rows(X):
    with pytest.raises(ValueError, match="0 rows"):
        HVRT().fit(X)


def test_complex_input_refused():
    X = np.random.default_rng(0).standard_normal((300, 3)) + 1j
    with pytest.raises(ValueError, match="Complex data not supported"):
        HVRT().fit(X)
    with pytest.raises(ValueError, match="Complex data not supported: column 'b'"):
        HVRT().fit(pd.DataFrame({"a": X[:, 0].real, "b": X[:, 1], "c": X[:, 2].real}))


def test_z_space_overflow_refused():
    X = np.random.default_rng(0).standard_normal((400, 3))
    X[:, 1] *= 1e307  # finite, but its variance overflows
    with pytest.raises(ValueError, match="'x1'.*overflow"):
        HVRT().fit(X)
