"""scikit-learn conventions: check_estimator, random_state forms, feature_names_in_, validation in fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import check_estimator

from hvrt_dask.hvrt import HART, HVRT, FastHART, FastHVRT, PyramidHART


@pytest.mark.parametrize("cls", [HVRT, FastHVRT, HART, FastHART, PyramidHART])
def test_check_estimator(cls):
    results = check_estimator(cls(), on_fail=None)
    bad = [(r["check_name"], str(r["exception"])[:200]) for r in results
           if r["status"] == "failed"]
    assert not bad, bad
    assert len(results) > 30


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).standard_normal((600, 3))


def test_random_state_forms(X):
    a = HVRT(random_state=np.random.RandomState(7)).fit(X)
    b = HVRT(random_state=np.random.RandomState(7)).fit(X)
    assert a.random_state_ == b.random_state_ == np.random.RandomState(7).randint(0, 2**63 - 1, dtype=np.int64)
    np.testing.assert_array_equal(a.expand(200), b.expand(200))
    g = HVRT(random_state=np.random.default_rng(7)).fit(X)
    assert g.random_state_ == np.random.default_rng(7).integers(0, 2**63 - 1)
    rs = np.random.RandomState(1)
    m = HVRT(random_state=rs)
    first = m.fit(X).random_state_
    assert m.fit(X).random_state_ != first  # one draw per fit, like scikit-learn
    assert HVRT(random_state=np.int64(5)).fit(X).random_state_ == 5
    n1, n2 = HVRT(random_state=None).fit(X).random_state_, HVRT(random_state=None).fit(X).random_state_
    assert 0 <= n1 < 2**63 and n1 != n2


@pytest.mark.parametrize("bad", [1.5, "7", -1, 2**63, True, object()])
def test_bad_random_state_refused_in_fit(X, bad):
    with pytest.raises(ValueError, match="random_state"):
        HVRT(random_state=bad).fit(X)


def test_feature_names_in_only_for_string_named_frames(X):
    assert not hasattr(HVRT().fit(X), "feature_names_in_")
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    m = HVRT().fit(df)
    assert list(m.feature_names_in_) == ["a", "b", "c"]
    assert not hasattr(m.fit(X), "feature_names_in_")  # refit on numpy forgets them
    assert not hasattr(HVRT().fit(pd.DataFrame(X, columns=[0, 1, 2])), "feature_names_in_")


@pytest.mark.parametrize("param,value", [
    ("bandwidth", -1.0), ("bandwidth", "wide"), ("auto_tune", "yes"), ("min_samples_per_partition", -2),
    ("y_weight", 2.0), ("y_weight", "0.5"), ("n_partitions", 0), ("tree_splitter", "fast"),
    ("y_weight_mode", "nope"),
])
def test_every_parameter_validated_in_fit(X, param, value):
    m = HVRT(**{param: value})  # the constructor stores, fit validates (scikit-learn convention)
    with pytest.raises(ValueError, match=param):
        m.fit(X)
