"""hvrt_dask.hvrt.metrics against closed forms and direct numpy/scipy computations."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

from hvrt_dask.hvrt import metrics as M


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6, -0.2], [0.6, 2.0, 0.3], [-0.2, 0.3, 0.5]])
    real = rng.multivariate_normal([0, 1, -2], cov, size=1500)
    synth = rng.multivariate_normal([0, 1, -2], cov, size=2500)
    return real, synth


# --------------------------------------------------------------------- closed forms
def test_marginal_fidelity_matches_scipy_wasserstein(data):
    real, synth = data
    expected = 1 - np.mean(
        [wasserstein_distance(real[:, j], synth[:, j]) / real[:, j].std() for j in range(3)]
    )
    assert M.marginal_fidelity(real, synth) == pytest.approx(expected, rel=1e-12)


def test_marginal_fidelity_of_a_shift_is_closed_form(data):
    real, _ = data
    shift = np.array([0.5, -1.0, 0.0])
    expected = 1 - np.mean(np.abs(shift) / real.std(axis=0))
    assert M.marginal_fidelity(real, real + shift) == pytest.approx(expected, rel=1e-12)


def test_identical_data_is_perfect(data):
    real, _ = data
    assert M.marginal_fidelity(real, real) == 1.0
    assert M.correlation_fidelity(real, real) == pytest.approx(1.0, abs=1e-15)
    assert M.tail_preservation(real, real) == pytest.approx(1.0, abs=1e-15)
    assert M.dcr(real, real) == 0.0
    # copies of the training rows: a cross-validated discriminator scores far below chance
    assert M.discriminator_auc(real, real.copy()) < 0.3


def test_correlation_fidelity_formula(data):
    real, synth = data
    Cr, Cs = np.corrcoef(real.T), np.corrcoef(synth.T)
    expected = 1 - np.linalg.norm(Cr - Cs, "fro") / np.linalg.norm(Cr, "fro")
    assert M.correlation_fidelity(real, synth) == pytest.approx(expected, rel=1e-12)
    # correlation is invariant to per-column affine maps
    assert M.correlation_fidelity(real, 3 * real - 7) == pytest.approx(1.0, abs=1e-12)


def test_tail_preservation_scales_linearly(data):
    real, synth = data
    assert M.tail_preservation(real, 2.0 * real + 1) == pytest.approx(2.0, rel=1e-12)
    r = np.percentile(real, 95, axis=0) - np.percentile(real, 5, axis=0)
    s = np.percentile(synth, 95, axis=0) - np.percentile(synth, 5, axis=0)
    assert M.tail_preservation(real, synth) == pytest.approx(np.exp(np.mean(np.log(s / r))), rel=1e-12)


def test_dcr_matches_brute_force_z_space(data):
    real, synth = data
    mu, sd = real.mean(0), real.std(0)
    D_sr = cdist((synth - mu) / sd, (real - mu) / sd)
    D_rr = cdist((real - mu) / sd, (real - mu) / sd)
    np.fill_diagonal(D_rr, np.inf)
    expected = np.median(D_sr.min(1)) / np.median(D_rr.min(1))
    assert M.dcr(real, synth) == pytest.approx(expected, rel=1e-12)
    assert 0.85 < expected < 1.15  # an independent sample of the same law
    # z-space: rescaling one column (raw units) changes nothing
    scale = np.array([1.0, 1000.0, 1.0])
    assert M.dcr(real * scale, synth * scale) == pytest.approx(expected, rel=1e-9)


def test_discriminator_auc_chance_and_separable(data):
    real, synth = data
    assert abs(M.discriminator_auc(real, synth) - 0.5) < 0.05
    shifted = synth + np.array([3.0, 0.0, 0.0])
    assert M.discriminator_auc(real, shifted) > 0.97
    # the seed keys the classifier's split: another seed is another (still chance-level) value
    a3, a4 = M.discriminator_auc(real, synth, random_state=3), M.discriminator_auc(real, synth, random_state=4)
    assert a3 != a4 and abs(a4 - 0.5) < 0.05
    assert M.discriminator_auc(real, synth, random_state=3) == a3


def test_tstr_regression_and_classification():
    rng = np.random.default_rng(1)

    def make(n):
        X = rng.normal(size=(n, 3))
        y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.5, size=n)
        return np.column_stack([X, y])

    real, synth = make(1500), make(3000)
    r2_bayes = 1 - 0.25 / (1 + 4 + 0.25 + 0.25)  # 1 − noise var / total var
    assert M.tstr(real, synth, target=3) == pytest.approx(r2_bayes, abs=0.06)
    # a synthetic set with a scrambled target has no utility
    bad = synth.copy()
    bad[:, 3] = rng.permutation(bad[:, 3])
    assert M.tstr(real, bad, target=3) < 0.1
    # classification: continuous synthetic labels are snapped to the real classes
    lab_r = np.column_stack([real[:, :3], (real[:, 0] > 0).astype(float)])
    lab_s = np.column_stack([synth[:, :3], (synth[:, 0] > 0) + rng.normal(scale=0.1, size=len(synth))])
    assert M.tstr(lab_r, lab_s, target=-1) > 0.97  # AUC (binary)
    f1 = M.tstr(lab_r, lab_s, target=3, metric="f1")
    assert 0.9 < f1 <= 1.0


# ---------------------------------------------------------------- inputs and sampling
def test_dask_input_equals_numpy_input(data, sync_scheduler):
    real, synth = data
    kw = dict(sample_size=1000, random_state=7)
    ref = M.fidelity_report(real, synth, **kw)
    for chunks in (100, 777):
        rd, sd_ = da.from_array(real, chunks=(chunks, 3)), da.from_array(synth, chunks=(chunks, 3))
        assert M.fidelity_report(rd, sd_, **kw) == ref
    # unknown chunk sizes (e.g. after a boolean filter) are resolved first
    rd = da.from_array(real, chunks=(300, 3))
    filtered = rd[rd[:, 0] > -np.inf]
    assert M.fidelity_report(filtered, synth, **kw) == ref
    # bounded sample: the result differs from the full-data value but stays close to it
    full = M.fidelity_report(real, synth, sample_size=10_000, random_state=7)
    assert full != ref
    assert abs(full["marginal_fidelity"] - ref["marginal_fidelity"]) < 0.03


def test_dask_input_on_distributed_client(data, client):
    real, synth = data
    ref = M.marginal_fidelity(real, synth, sample_size=800, random_state=2)
    out = M.marginal_fidelity(da.from_array(real, chunks=(200, 3)), synth, sample_size=800, random_state=2)
    assert out == ref


def test_sample_size_comes_from_config(data):
    real, synth = data
    with dask.config.set({"hvrt.metrics.sample-size": 500}):
        via_config = M.dcr(real, synth, random_state=1)
    assert via_config == M.dcr(real, synth, sample_size=500, random_state=1)
    assert via_config != M.dcr(real, synth, random_state=1)


def test_dataframes_are_matched_by_column_name(data):
    real, synth = data
    cols = ["a", "b", "c"]
    R = pd.DataFrame(real, columns=cols)
    S = pd.DataFrame(synth, columns=cols)
    ref = M.fidelity_report(R, S, metrics=["marginal_fidelity", "correlation_fidelity", "dcr"])
    assert M.fidelity_report(R, S[["c", "a", "b"]], metrics=list(ref)) == ref
    with pytest.raises(ValueError, match="'b'"):
        M.marginal_fidelity(R, S[["a", "c"]])
    bad = S.assign(b=S["b"].astype(str))
    with pytest.raises(TypeError, match="'b'"):
        M.marginal_fidelity(R, bad)
    nan = S.copy()
    nan.loc[3, "c"] = np.nan
    with pytest.raises(ValueError, match="'c'"):
        M.correlation_fidelity(R, nan)
    with pytest.raises(ValueError, match="columns"):
        M.marginal_fidelity(real, synth[:, :2])


def test_fidelity_report_and_table(data):
    real, synth = data
    names = ["marginal_fidelity", "tail_preservation", "tstr"]
    rep = M.fidelity_report(real, synth, metrics=names, target=1)
    assert list(rep) == names
    assert rep["tstr"] == M.tstr(real, synth, target=1)
    assert rep["marginal_fidelity"] == M.marginal_fidelity(real, synth)
    table = M.fidelity_table({"x": rep, "y": rep})
    assert table.shape == (2, 3) and list(table.index) == ["x", "y"]
    with pytest.raises(ValueError, match="unknown metric"):
        M.fidelity_report(real, synth, metrics=["nope"])
    with pytest.raises(ValueError, match="target"):
        M.fidelity_report(real, synth, metrics=["tstr"])


def test_public_module_path():
    """``hvrt_dask.metrics`` (the documented path) exposes the same functions."""
    import hvrt_dask
    from hvrt_dask import metrics as public
    from hvrt_dask.hvrt import metrics as impl

    assert hvrt_dask.metrics is public
    for name in impl.__all__:
        assert getattr(public, name) is getattr(impl, name)


def test_mixed_type_frames_are_encoded():
    """The estimator's own mixed-type output is scored as is; reference: hand-coded frames."""
    from hvrt_dask.hvrt import HVRT

    rng = np.random.default_rng(3)
    real = pd.DataFrame({
        "x": rng.standard_normal(800),
        "city": rng.choice(["Oslo", "Rome", "Lima"], 800),
        "grade": pd.Categorical(rng.choice(["b", "a"], 800)),
        "flag": rng.random(800) > 0.5,
    })
    synth = HVRT(random_state=0).fit(real).expand(900)
    assert synth["city"].dtype != np.float64 and isinstance(synth["grade"].dtype, pd.CategoricalDtype)
    got = M.fidelity_report(real, synth, metrics=["marginal_fidelity", "correlation_fidelity", "dcr"])

    def coded(df):
        out = df.copy()
        for c, labels in {"city": ["Lima", "Oslo", "Rome"], "grade": ["a", "b"]}.items():
            out[c] = pd.Categorical(df[c].astype(str), categories=labels).codes.astype(float)
        return out.astype({"flag": float})

    ref = M.fidelity_report(coded(real), coded(synth), metrics=list(got))
    assert got == ref
