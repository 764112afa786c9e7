"""Column kinds: exact round trips, constants, integers, ranges and atom shares.

The references are the input itself: the set of observed values (``np.unique``), the
observed [min, max], the real share of an atom, the input dtypes.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest

from hvrt_dask.hvrt import HVRT
from hvrt_dask.hvrt._columns import snap


def _mixed(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    return pd.DataFrame({
        "x": z[:, 0],
        "income": np.where(z[:, 1] > -0.3, np.exp(8 + 0.5 * z[:, 2]), 0.0),  # zero-inflated
        "count": np.round(np.exp(2 + 0.8 * z[:, 0])).astype(np.int64),  # integer, many values
        "level": rng.choice([-0.25, 0.5, 1.75], n),  # discrete, non-integer, negative
        "city": np.where(z[:, 2] > 0, "Oslo", "Rome"),
        "grade": pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["c", "b", "a"], ordered=True),
        "flag": z[:, 1] > 0.5,
        "const": 7.5,
        "label_const": "same",
    })


@pytest.fixture(scope="module")
def mixed():
    return _mixed()


@pytest.fixture(scope="module")
def fitted(mixed):
    return HVRT(random_state=0).fit(mixed)


def test_auto_kinds(fitted):
    assert dict(zip(fitted.input_spec_.columns, fitted.column_types_.kinds)) == {
        "x": "continuous", "income": "continuous", "count": "integer", "level": "discrete",
        "city": "categorical", "grade": "categorical", "flag": "categorical", "const": "constant",
        "label_const": "constant",
    }
    assert fitted.constant_mask_.sum() == 2 and not fitted.continuous_mask_[fitted.constant_mask_].any()


def test_every_kind_round_trips(mixed, fitted):
    out = fitted.expand(20000)
    assert list(out.columns) == list(mixed.columns)
    assert (out.dtypes == mixed.dtypes).all(), (out.dtypes, mixed.dtypes)
    for c in ["level", "city", "grade", "flag"]:  # only observed values, every one of them
        assert set(out[c].unique()) == set(mixed[c].unique()), c
    assert out["grade"].cat.ordered and list(out["grade"].cat.categories) == ["c", "b", "a"]
    assert (out["const"] == 7.5).all() and (out["label_const"] == "same").all()
    assert (out["count"] == np.round(out["count"])).all()
    for c in ["x", "income", "count", "level"]:  # default: inside the observed range
        assert out[c].min() >= mixed[c].min() and out[c].max() <= mixed[c].max(), c


def test_atom_share_within_2pp(mixed, fitted):
    out = fitted.expand(30000)
    real = float((mixed["income"] == 0).mean())
    assert fitted.column_types_.atoms[1].tolist() == [0.0]
    assert abs(float((out["income"] == 0).mean()) - real) < 0.02
    # non-atom rows stay inside the range of the non-atom values (no spill onto 0)
    pos = mixed["income"][mixed["income"] > 0]
    nz = out["income"][out["income"] > 0]
    assert nz.min() >= pos.min() and nz.max() <= pos.max()


@pytest.mark.parametrize("values", [[0.25, 0.5], [0.1, 0.2, 0.3], [-1.0, 2.0], [1.0, 2.0, 7.0]])
def test_numeric_categorical_exact_numpy(values):
    """The reported bug: numeric categoricals with non-integer values came back as 0."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 4))
    X[:, 3] = rng.choice(values, 2000)
    for ft in (["continuous"] * 3 + ["categorical"], "auto"):
        out = HVRT(random_state=0).fit(X, feature_types=ft).expand(1000)
        assert set(np.unique(out[:, 3])) == set(values)


def test_pandas_float_categorical_exact():
    rng = np.random.default_rng(2)
    df = pd.DataFrame(rng.standard_normal((1500, 3)), columns=list("abc"))
    df["d"] = rng.choice([0.25, 0.5], 1500)
    out = HVRT(random_state=0).fit(df, feature_types=["continuous"] * 3 + ["categorical"]).expand(800)
    assert set(out["d"]) == {0.25, 0.5}


def test_explicit_types_override_auto():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((2000, 3))
    X[:, 2] = rng.choice([0.0, 1.0, 2.0], 2000)
    with dask.config.set({"hvrt.types.atom-share": None}):  # each level would be an atom
        m = HVRT(random_state=0).fit(X, feature_types=["continuous"] * 3)
    assert m.column_types_.kinds[2] == "continuous"
    out = m.expand(2000)
    assert len(np.unique(out[:, 2])) > 3  # generated as continuous: values between the levels
    out = HVRT(random_state=0).fit(X).expand(2000)
    assert set(np.unique(out[:, 2])) == {0.0, 1.0, 2.0}


def test_integer_dtypes_and_integral_floats():
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.standard_normal(2000), rng.integers(-50, 400, 2000).astype(float)])
    m = HVRT(random_state=0).fit(X)
    assert m.column_types_.kinds == ("continuous", "integer")
    out = m.expand(3000)
    assert out.dtype == np.float64 and (out[:, 1] == np.round(out[:, 1])).all()
    df = pd.DataFrame({"a": rng.standard_normal(2000), "n": rng.integers(0, 1000, 2000).astype(np.int32)})
    out = HVRT(random_state=0).fit(df).expand(500)
    assert out["n"].dtype == np.int32 and out["n"].between(df["n"].min(), df["n"].max()).all()


def test_clip_false_leaves_range_but_keeps_exact_values(mixed, fitted):
    out = fitted.expand(20000, clip=False)
    assert (out["x"] < mixed["x"].min()).any() or (out["x"] > mixed["x"].max()).any()
    assert set(out["level"].unique()) <= set(mixed["level"].unique())
    assert set(out["city"].unique()) <= {"Oslo", "Rome"}


def test_constant_numpy_column_passes_through():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((800, 4))
    X[:, 1] = -3.25
    m = HVRT(random_state=0).fit(X)
    assert m.column_types_.kinds[1] == "constant" and m.tree_.n_features_in_ == 3  # out of the tree
    out = m.expand(400)
    assert (out[:, 1] == -3.25).all()
    ref = HVRT(random_state=0).fit(np.delete(X, 1, axis=1))  # constants do not change the rest
    assert ref.n_partitions_ == m.n_partitions_


def test_lazy_input_detects_kinds(sync_scheduler):
    rng = np.random.default_rng(6)
    X = np.column_stack([rng.standard_normal(3000), rng.choice([-0.5, 0.5], 3000), np.full(3000, 2.0),
                         rng.integers(0, 500, 3000)])
    m = HVRT(random_state=0).fit(da.from_array(X, chunks=700))
    assert m.column_types_.kinds == ("continuous", "discrete", "constant", "integer")
    out = m.expand(2000).compute()
    assert set(np.unique(out[:, 1])) == {-0.5, 0.5} and (out[:, 2] == 2.0).all()
    assert m.column_types_.kinds == HVRT(random_state=0).fit(X).column_types_.kinds


def test_snap_is_nearest_level():
    levels = np.array([-0.25, 0.5, 1.75])
    x = np.array([-9.0, -0.25, 0.1, 0.2, 1.0, 1.2, 5.0])
    ref = levels[np.abs(x[:, None] - levels[None, :]).argmin(axis=1)]
    np.testing.assert_array_equal(snap(x, levels), ref)


@pytest.mark.parametrize("rows", [0, 1, 7, 1024, 3000])
def test_per_column_matches_broadcasting(rows):
    from hvrt_dask.hvrt._columns import per_column

    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 7))
    v = rng.standard_normal(7)
    for uf in (np.multiply, np.add, np.minimum, np.maximum):
        np.testing.assert_array_equal(per_column(uf, a.copy(), v), uf(a, v))
