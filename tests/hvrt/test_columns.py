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
from hvrt_dask.hvrt._columns import OFF_GRID, snap


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


# ---------------------------------------------------------------- decimals (recorded resolution)
def _repr_decimals(x, dtype=np.float64) -> int:
    """Reference: the digits after the point of the shortest text that reads back as ``x``
    (Python's / numpy's round-trip ``repr``), i.e. the resolution the value was recorded at."""
    from decimal import Decimal

    exp = Decimal(repr(float(x)) if dtype == np.float64 else str(np.dtype(dtype).type(x))).normalize().as_tuple().exponent
    return max(0, -exp)


def _col_decimals_ref(col, max_p, dtype=np.float64):
    p = max(_repr_decimals(v, dtype) for v in col)
    return p if p <= max_p else OFF_GRID


def test_decimals_of_matches_recorded_text():
    from hvrt_dask.hvrt._columns import decimals_of

    rng = np.random.default_rng(7)
    cols = {
        "grid 0.1": np.round(rng.uniform(4, 8, 500), 1),
        "grid 0.01, negative": np.round(rng.normal(-30, 20, 500), 2),
        "grid 0.001, one off-grid value": np.round(rng.uniform(0, 1, 500), 3),
        "integral": np.round(rng.normal(0, 1e3, 500)),
        "5 decimals (beyond 4)": np.round(rng.uniform(0, 1, 500), 5),
        "continuous": rng.standard_normal(500),
        "text 0.0001": np.array([float(f"{v:.4f}") for v in rng.uniform(-5, 5, 500)]),
    }
    off = cols["grid 0.001, one off-grid value"]
    off[321] = round(off[321] + 0.0004, 4)  # one value recorded finer, past the head screen
    X = np.column_stack(list(cols.values()))
    got = decimals_of(X, 4, [np.dtype(np.float64)] * X.shape[1])[0]
    ref = [_col_decimals_ref(c, 4) for c in cols.values()]
    assert got.tolist() == ref, dict(zip(cols, got))
    assert ref[:5] == [1, 2, 4, 0, OFF_GRID]  # the one finer value moves the column to a finer grid
    off[321] += 1e-9  # and one value on no grid at all takes it off grid
    assert decimals_of(off[:, None], 4, [np.dtype(np.float64)])[0].tolist() == [OFF_GRID]


def test_decimals_of_huge_values_and_float32():
    from hvrt_dask.hvrt._columns import decimals_of

    rng = np.random.default_rng(8)
    g = np.round(rng.uniform(0, 100, 400), 1)
    X = np.column_stack([
        g + 2.0**40,  # on the 0.1 grid as text, but 2**40 * 10 is still exact: kept
        np.round(rng.uniform(0, 9, 400) * 1e15),  # integral beyond 2**52: p = 0 as before
        2.0**50 + rng.integers(0, 40, 400) * 0.25,  # float spacing 0.25: too coarse to hold a 0.1 grid
        np.round(rng.uniform(-9, 9, 400), 2).astype(np.float32).astype(np.float64),  # float32 column
    ])
    dts = [np.dtype(np.float64)] * 3 + [np.dtype(np.float32)]
    got = decimals_of(X, 4, dts)[0].tolist()
    # the 2**50 column reads back from 1-decimal text, yet 10 * 2**50 > 2**52: off grid, not "every grid"
    assert got[1] == 0 and got[2] == OFF_GRID and _col_decimals_ref(X[:, 2], 4) == 1 and got[3] == 2
    assert got[0] == _col_decimals_ref(X[:, 0], 4)
    # the float32 column is not on a decimal grid in float64: tested in its own dtype
    assert decimals_of(X[:, 3:], 4, [np.dtype(np.float64)])[0].tolist() == [OFF_GRID]
    assert _col_decimals_ref(X[:, 3], 4, np.float32) == 2


def _grid_table(n=2000, seed=9):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 3))
    return pd.DataFrame({
        "length_cm": np.round(5.8 + 0.8 * z[:, 0], 1),
        "delta": np.round(-3 + 2 * z[:, 1] + z[:, 0], 3),  # negative, 3 decimals
        "ratio": np.round(np.exp(0.3 * z[:, 2]), 5),  # 5 decimals: beyond max-decimals 4
        "mass": np.round(50 + 10 * z[:, 2], 2).astype(np.float32),
        "x": z[:, 2] + 0.1 * z[:, 0],
    })


DECIMALS_ON = {"hvrt.types.max-decimals": 4}


def test_grid_columns_keep_their_resolution():
    df = _grid_table()
    with dask.config.set(DECIMALS_ON):
        m = HVRT(random_state=0).fit(df)
    assert m.column_types_.kinds == ("continuous",) * 5
    assert m.column_types_.decimals == {0: 1, 1: 3, 3: 2}
    out = m.expand(6000)
    assert out["mass"].dtype == np.float32
    for c, p in [("length_cm", 1), ("delta", 3), ("mass", 2)]:
        dt = np.float32 if c == "mass" else np.float64
        assert max(_repr_decimals(v, dt) for v in out[c].to_numpy()) <= p, c
        assert out[c].nunique() > 20 and out[c].between(df[c].min(), df[c].max()).all(), c
    for c in ["ratio", "x"]:  # not rounded: finer than the limit / no grid
        assert max(_repr_decimals(v) for v in out[c].to_numpy()[:200]) > 5, c


def test_grid_detection_config_and_override(sync_scheduler):
    df = _grid_table()
    assert HVRT(random_state=0).fit(df).column_types_.decimals == {}  # off by default: no rounding
    with dask.config.set({"hvrt.types.max-decimals": 5}):
        assert HVRT(random_state=0).fit(df).column_types_.decimals == {0: 1, 1: 3, 2: 5, 3: 2}
    with dask.config.set({"hvrt.types.max-decimals": 1}):
        assert HVRT(random_state=0).fit(df).column_types_.decimals == {0: 1}
    with dask.config.set({"hvrt.types.max-decimals": None}):
        m = HVRT(random_state=0).fit(df)
        assert m.column_types_.decimals == {}
        assert m.expand(200)["length_cm"].nunique() > 150  # continuous draws, unrounded
    with dask.config.set({"hvrt.types.max-decimals": -1}), pytest.raises(ValueError, match="max-decimals"):
        HVRT(random_state=0).fit(df)
    # explicit kinds win: "continuous" is never rounded; "integer" rounds to 0 decimals
    with dask.config.set(DECIMALS_ON):
        m = HVRT(random_state=0).fit(df, feature_types=["continuous", "integer", "auto", "auto", "auto"])
    assert m.column_types_.decimals == {1: 0, 3: 2}
    out = m.expand(1000)
    assert out["length_cm"].nunique() > 500 and (out["delta"] == np.round(out["delta"])).all()
    # lazy input: the same decimals from the per-block reduction (several row blocks)
    X = df.to_numpy(dtype=np.float64)
    with dask.config.set(DECIMALS_ON):
        lazy = HVRT(random_state=0).fit(da.from_array(X, chunks=(300, 5)))
        assert lazy.column_types_.decimals == HVRT(random_state=0).fit(X).column_types_.decimals == {0: 1, 1: 3}


@pytest.mark.parametrize("kind", ["integer", "grid 0.1", "discrete"])
def test_interior_atom_keeps_its_share_after_rounding(kind):
    """An atom inside the range: non-atom rows that round/snap onto it would inflate its share."""
    rng = np.random.default_rng(10)
    n = 6000
    z = rng.standard_normal((n, 4)) * 3  # the tree splits on these, so partitions mix the values of v
    top = 24 if kind != "discrete" else 15  # 25 integer values / 16 levels, each well under 5 %
    v = np.floor(rng.random(n) * (top + 1))
    atom = 10.0
    v[rng.random(n) < 0.3] = atom
    if kind == "grid 0.1":
        v, atom = np.round(v / 10, 1), atom / 10
    X = np.column_stack([z, v])
    with dask.config.set(DECIMALS_ON):
        m = HVRT(random_state=0).fit(X)
    assert m.column_types_.kinds[4] == {"integer": "integer", "grid 0.1": "continuous", "discrete": "discrete"}[kind]
    assert m.column_types_.atoms[4].tolist() == [atom]
    out = m.expand(60000)
    # without the rule: 1.7 pp too many on the integer column (0.15 pp with it)
    assert abs(float((out[:, 4] == atom).mean()) - float((v == atom).mean())) < 0.01
    assert set(np.unique(out[:, 4])) <= set(np.unique(v))


def test_off_atoms_moves_to_nearest_free_grid_value():
    from hvrt_dask.hvrt._columns import off_atoms

    atoms = np.array([3.0, 3.1, 5.0])
    x = np.array([3.0, 3.0, 3.1, 3.1, 5.0, 2.9, 4.4])
    raw = np.array([3.04, 2.96, 3.13, 3.06, 4.97, 2.9, 4.4])
    # reference: brute force over the grid, nearest free value, ties towards raw
    grid = np.round(np.arange(0, 100) / 10, 1)
    free = grid[~np.isin(grid, atoms)]
    ref = []
    for xi, ri in zip(x, raw):
        if xi not in atoms:
            ref.append(xi)
            continue
        d = np.abs(free - xi)
        best = free[np.isclose(d, d.min())]
        ref.append(best[np.argmin(np.abs(best - ri))])
    np.testing.assert_array_equal(off_atoms(x, raw, atoms, 1), np.array(ref))
