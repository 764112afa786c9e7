"""Fidelity, privacy and utility metrics for synthetic tabular data.

Every function takes the real and the synthetic data as numpy arrays, pandas DataFrames,
dask arrays or dask DataFrames (mixed freely). Label columns of DataFrames (pandas
``category``, ``string``, ``object``) are encoded as codes over the sorted union of both
sides' labels, so the estimator's own mixed-type output can be scored as it is. Inputs longer than ``sample_size`` rows
(default: the ``hvrt.metrics.sample-size`` config value) are replaced by a seeded,
uniform sample of that many rows *without replacement*, drawn from
:func:`hvrt_dask._seeding.generator` by global row position. The same rows are therefore
chosen whether the data arrive as numpy or as dask, whatever the chunking, and a dask
input is never materialised in full.

=========================  ===============================================  =========
metric                     definition                                       ideal
=========================  ===============================================  =========
``marginal_fidelity``      ``1 − mean_j W1(x_j, x̃_j) / sd_j``               1
``correlation_fidelity``   ``1 − ‖C − C̃‖_F / ‖C‖_F`` (Pearson)              1
``tail_preservation``      geometric mean of ``(p95 − p5)`` range ratios      1
``discriminator_auc``      CV AUC of a gradient-boosted real/synth classifier 0.5
``dcr``                    median synth→real NN distance / median real→real
                           leave-one-out NN distance, in real z-space         ≈ 1
``tstr``                   train on synthetic, test on real (R², AUC or F1)   TRTR
=========================  ===============================================  =========

A ``dcr`` well below 1 or a ``discriminator_auc`` well below 0.5 is the signature of
near-copies of training rows ("fidelity by copying").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from hvrt_dask import config
from hvrt_dask._seeding import generator

__all__ = [
    "marginal_fidelity",
    "correlation_fidelity",
    "tail_preservation",
    "discriminator_auc",
    "dcr",
    "tstr",
    "fidelity_report",
    "fidelity_table",
    "DEFAULT_METRICS",
]

#: Metrics computed by :func:`fidelity_report` unless told otherwise (``tstr`` needs a target).
DEFAULT_METRICS = (
    "marginal_fidelity",
    "correlation_fidelity",
    "tail_preservation",
    "discriminator_auc",
    "dcr",
)


# ------------------------------------------------------------------------ input handling
def _is_dask(obj: Any) -> bool:
    return hasattr(obj, "dask") and hasattr(obj, "__dask_graph__")


def _resolve_seed(random_state: int | None) -> int:
    if random_state is None:
        return int(config.get("seed-default", 42))
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(
        random_state, (int, np.integer)
    ):
        raise TypeError(f"random_state must be an int or None, got {random_state!r}")
    return int(random_state)


def _resolve_sample_size(sample_size: int | None) -> int:
    n = config.get("metrics.sample-size", 50_000) if sample_size is None else sample_size
    if isinstance(n, bool) or int(n) != n or int(n) < 2:
        raise ValueError(f"sample_size must be an integer >= 2, got {n!r}")
    return int(n)


def _columns_of(obj: Any) -> list[str] | None:
    cols = getattr(obj, "columns", None)
    return None if cols is None else [str(c) for c in cols]


def _check_numeric(obj: Any, role: str) -> None:
    dtypes = getattr(obj, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items"):
        return
    for col, dt in dtypes.items():
        if not (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt)):
            raise TypeError(f"{role} column {col!r} has non-numeric dtype {dt}; encode it first")


def _label_columns(obj: Any) -> list[Any]:
    """Columns of a (dask) DataFrame that hold labels: category, string, object (not bool)."""
    dtypes = getattr(obj, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items"):
        return []
    return [c for c, dt in dtypes.items()
            if not (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt))
            or isinstance(dt, pd.CategoricalDtype)]


def _labels_of(obj: Any, col: Any) -> np.ndarray:
    u = obj[col].astype(str).unique()
    return np.asarray(u.compute() if _is_dask(u) else u, dtype=str)


def _codes(s: Any, labels: np.ndarray) -> Any:
    return pd.Series(np.searchsorted(labels, s.astype(str).to_numpy()).astype(np.float64), index=s.index)


def _encode_labels(real: Any, synth: Any) -> tuple[Any, Any]:
    """Label columns of either frame → float codes over the sorted union of both sides' labels.

    Lets every metric take the estimator's own mixed-type output (pandas ``category``,
    ``string``, ``object``) next to the real frame. Codes follow the string form of the
    labels; only the frames' label columns are read for this (``unique`` per column).
    """
    lr, ls = _label_columns(real), _label_columns(synth)
    cols = list(dict.fromkeys(lr + ls))
    if not cols:
        return real, synth
    for c in cols:
        if (c in lr) != (c in ls) and c in getattr(real, "columns", ()) and c in getattr(synth, "columns", ()):
            side, other = ("real", "synth") if c in lr else ("synth", "real")
            raise TypeError(f"column {c!r} holds labels in {side} but numbers in {other}; give both the same dtype")
    out = []
    for obj in (real, synth):
        if getattr(obj, "columns", None) is None:
            raise TypeError("real and synth must both be DataFrames when either has label columns")
        out.append(obj)
    for c in cols:
        present = [o for o in out if c in o.columns]
        labels = np.unique(np.concatenate([_labels_of(o, c) for o in present]))
        for k, o in enumerate(out):
            if c not in o.columns:
                continue
            if _is_dask(o):
                out[k] = o.assign(**{str(c): o[c].map_partitions(_codes, labels, meta=(c, "f8"))})
            else:
                o = o.copy()
                o[c] = _codes(o[c], labels)
                out[k] = o
    return out[0], out[1]


def _sample_rows(seed: int, n: int, m: int, *key: str) -> np.ndarray:
    """Sorted positions of ``m`` of ``n`` rows, uniform without replacement, keyed by ``key``."""
    return np.sort(generator(seed, "metrics", *key).choice(n, m, replace=False))


def _to_sample(obj: Any, role: str, n_max: int, seed: int) -> tuple[np.ndarray, list[str] | None]:
    """Coerce one input to a float64 matrix of at most ``n_max`` rows (seeded sample)."""
    if obj is None:
        raise TypeError(f"{role} data is None")
    columns = _columns_of(obj)
    if hasattr(obj, "to_frame") and columns is None:  # (dask) Series → one-column frame
        obj = obj.to_frame()
        columns = _columns_of(obj)
    _check_numeric(obj, role)
    if _is_dask(obj):
        import dask.array as da

        arr = obj.to_dask_array(lengths=True) if columns is not None else obj
        if not isinstance(arr, da.Array):
            raise TypeError(f"{role} data: unsupported dask collection {type(obj).__name__}")
        if any(np.isnan(c) for c in arr.chunks[0]):
            arr = arr.compute_chunk_sizes()
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"{role} data must be 2-D, got {arr.ndim} dimensions")
        n = arr.shape[0]
        if n > n_max:
            idx = _sample_rows(seed, n, n_max, "sample", role)
            arr = arr[idx]
        X = np.asarray(arr.compute(), dtype=np.float64)
    else:
        raw = obj.to_numpy() if hasattr(obj, "to_numpy") else obj
        try:
            X = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{role} data cannot be converted to float: {exc}") from None
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise ValueError(f"{role} data must be 2-D, got {X.ndim} dimensions")
        n = X.shape[0]
        if n > n_max:
            idx = _sample_rows(seed, n, n_max, "sample", role)
            X = X[idx]
    if X.shape[0] < 2:
        raise ValueError(f"{role} data needs at least 2 rows, got {X.shape[0]}")
    bad = ~np.isfinite(X).all(axis=0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        name = columns[j] if columns else j
        raise ValueError(f"{role} column {name!r} contains NaN or infinite values")
    return X, columns


def _prepare(
    real: Any, synth: Any, sample_size: int | None, random_state: int | None
) -> tuple[np.ndarray, np.ndarray, list[str] | None, int]:
    seed = _resolve_seed(random_state)
    n_max = _resolve_sample_size(sample_size)
    real, synth = _encode_labels(real, synth)
    R, rcols = _to_sample(real, "real", n_max, seed)
    S, scols = _to_sample(synth, "synth", n_max, seed)
    if rcols is not None and scols is not None and rcols != scols:
        missing = [c for c in rcols if c not in scols]
        if missing:
            raise ValueError(f"synth data lacks the real column(s) {missing}")
        S = S[:, [scols.index(c) for c in rcols]]
    if R.shape[1] != S.shape[1]:
        raise ValueError(f"real has {R.shape[1]} columns but synth has {S.shape[1]}")
    return R, S, rcols or scols, seed


# ----------------------------------------------------------------------- array versions
def _w1_columns(R: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Exact 1-Wasserstein distance per column: ``∫ |F_R(t) − F_S(t)| dt``."""
    out = np.empty(R.shape[1])
    for j in range(R.shape[1]):
        r, s = np.sort(R[:, j]), np.sort(S[:, j])
        t = np.sort(np.concatenate([r, s]))
        dt = np.diff(t)
        Fr = np.searchsorted(r, t[:-1], side="right") / r.size
        Fs = np.searchsorted(s, t[:-1], side="right") / s.size
        out[j] = float(np.sum(np.abs(Fr - Fs) * dt))
    return out


def _real_scale(R: np.ndarray) -> np.ndarray:
    sd = R.std(axis=0)
    return np.where(sd > 0, sd, 1.0)


def _marginal(R: np.ndarray, S: np.ndarray) -> float:
    return float(1.0 - np.mean(_w1_columns(R, S) / _real_scale(R)))


def _corr(X: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        C = np.atleast_2d(np.corrcoef(X, rowvar=False))
    C = np.nan_to_num(C, nan=0.0)  # constant columns: no correlation
    np.fill_diagonal(C, 1.0)
    return C


def _correlation(R: np.ndarray, S: np.ndarray) -> float:
    Cr, Cs = _corr(R), _corr(S)
    return float(1.0 - np.linalg.norm(Cr - Cs) / np.linalg.norm(Cr))


def _tail(R: np.ndarray, S: np.ndarray, lower: float, upper: float) -> float:
    rr = np.percentile(R, upper, axis=0) - np.percentile(R, lower, axis=0)
    rs = np.percentile(S, upper, axis=0) - np.percentile(S, lower, axis=0)
    ok = rr > 0
    if not ok.any():
        return float("nan")
    ratio = np.maximum(rs[ok], np.finfo(float).tiny) / rr[ok]
    return float(np.exp(np.mean(np.log(ratio))))


def _threads():
    """Context limiting OpenMP threads to ``hvrt.metrics.n-threads`` (None: no limit)."""
    from hvrt_dask._threads import limit_threads

    return limit_threads(config.get("metrics.n-threads", 1), user_api="openmp")


def _int_seed(seed: int, *key: str) -> int:
    return int(generator(seed, "metrics", *key).integers(0, 2**31 - 1))


def _discriminator(
    R: np.ndarray, S: np.ndarray, seed: int, n_splits: int, max_iter: int
) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    m = min(R.shape[0], S.shape[0])
    if m < n_splits:
        raise ValueError(
            f"discriminator_auc needs at least n_splits={n_splits} rows per side, got {m}"
        )
    # Balanced: the same number of real and synthetic rows, chosen by seeded sampling.
    Rb = R[_sample_rows(seed, R.shape[0], m, "discriminator", "real")]
    Sb = S[_sample_rows(seed, S.shape[0], m, "discriminator", "synth")]
    X = np.vstack([Rb, Sb])
    y = np.repeat([0, 1], m)
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=_int_seed(seed, "cv"))
    aucs = []
    for tr, te in cv.split(X, y):
        clf = HistGradientBoostingClassifier(
            max_iter=max_iter, early_stopping=False, random_state=_int_seed(seed, "hgb")
        )
        with _threads():
            clf.fit(X[tr], y[tr])
            p = clf.predict_proba(X[te])[:, 1]
        aucs.append(roc_auc_score(y[te], p))
    return float(np.mean(aucs))


def _dcr(R: np.ndarray, S: np.ndarray) -> float:
    mu, sd = R.mean(axis=0), _real_scale(R)
    Rz, Sz = (R - mu) / sd, (S - mu) / sd
    tree = cKDTree(Rz)
    d_sr = tree.query(Sz, k=1)[0]
    d_rr = tree.query(Rz, k=2)[0][:, 1]  # k=2: the nearest *other* real row
    num, den = float(np.median(d_sr)), float(np.median(d_rr))
    if den == 0.0:
        return float("inf") if num > 0 else float("nan")
    return num / den


def _tstr(
    R: np.ndarray, S: np.ndarray, j: int, task: str, metric: str | None, seed: int, max_iter: int
) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import f1_score, r2_score, roc_auc_score

    yr, ys = R[:, j], S[:, j]
    Xr, Xs = np.delete(R, j, axis=1), np.delete(S, j, axis=1)
    if Xr.shape[1] == 0:
        raise ValueError("tstr needs at least one feature column besides the target")
    classes = np.unique(yr)
    if task == "auto":
        is_int = np.all(yr == np.round(yr))
        task = "classification" if is_int and classes.size <= 20 else "regression"
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'auto', 'classification' or 'regression', got {task!r}")
    rs = _int_seed(seed, "tstr")
    if task == "regression":
        if metric not in (None, "r2"):
            raise ValueError(f"regression tstr supports metric='r2' only, got {metric!r}")
        model = HistGradientBoostingRegressor(
            max_iter=max_iter, early_stopping=False, random_state=rs
        )
        with _threads():
            model.fit(Xs, ys)
            pred = model.predict(Xr)
        return float(r2_score(yr, pred))
    # Synthetic labels may be continuous (generated as a column): snap to the nearest real class.
    edges = (classes[1:] + classes[:-1]) / 2
    ys = classes[np.searchsorted(edges, ys)]
    if metric is None:
        metric = "auc" if classes.size == 2 else "f1"
    if metric not in ("auc", "f1"):
        raise ValueError(f"classification tstr supports metric='auc' or 'f1', got {metric!r}")
    if np.unique(ys).size < 2:
        return float("nan")  # the synthetic data hold one class: nothing to learn
    model = HistGradientBoostingClassifier(
        max_iter=max_iter, early_stopping=False, random_state=rs
    )
    with _threads():
        model.fit(Xs, ys)
        pred, proba = model.predict(Xr), model.predict_proba(Xr)
    if metric == "f1":
        return float(f1_score(yr, pred, average="weighted"))
    if classes.size != 2:
        raise ValueError("metric='auc' needs a binary target; use metric='f1'")
    col = list(model.classes_).index(classes[1]) if classes[1] in model.classes_ else None
    if col is None:
        return float("nan")
    return float(roc_auc_score(yr == classes[1], proba[:, col]))


def _target_index(target: int | str, columns: list[str] | None, d: int) -> int:
    if isinstance(target, str):
        if columns is None or target not in columns:
            raise ValueError(f"target column {target!r} not found; columns: {columns}")
        return columns.index(target)
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)):
        raise TypeError(f"target must be a column name or an int index, got {target!r}")
    if not -d <= int(target) < d:
        raise ValueError(f"target index {target} out of range for {d} columns")
    return int(target) % d


# --------------------------------------------------------------------------- public API
_DOC_COMMON = """
    real, synth : array-like, pandas DataFrame, dask array or dask DataFrame
        Real and synthetic rows with the same columns (DataFrames are matched by name).
    sample_size : int, optional
        Rows used per input at most (default ``hvrt.metrics.sample-size``); longer inputs
        are replaced by a seeded uniform sample.
    random_state : int, optional
        Seed of every random choice (default ``hvrt.seed-default``)."""


def marginal_fidelity(
    real: Any, synth: Any, *, sample_size: int | None = None, random_state: int | None = None
) -> float:
    """Marginal fidelity ``1 − mean_j W1(x_j, x̃_j) / sd_j``.

    ``W1`` is the exact 1-D Wasserstein distance between the empirical distributions of
    column ``j`` and ``sd_j`` the real column's population std (1 for constant columns).

    Parameters
    ----------{common}

    Returns
    -------
    float
        1 for identical marginals; lower is worse (can be negative).
    """
    R, S, _, _ = _prepare(real, synth, sample_size, random_state)
    return _marginal(R, S)


def correlation_fidelity(
    real: Any, synth: Any, *, sample_size: int | None = None, random_state: int | None = None
) -> float:
    """Correlation fidelity ``1 − ‖C − C̃‖_F / ‖C‖_F`` of the Pearson correlations.

    Constant columns count as uncorrelated with everything.

    Parameters
    ----------{common}

    Returns
    -------
    float
        1 for identical correlation matrices.
    """
    R, S, _, _ = _prepare(real, synth, sample_size, random_state)
    return _correlation(R, S)


def tail_preservation(
    real: Any,
    synth: Any,
    *,
    lower: float = 5.0,
    upper: float = 95.0,
    sample_size: int | None = None,
    random_state: int | None = None,
) -> float:
    """Geometric mean over columns of the ratio ``(p_upper − p_lower)_synth / (…)_real``.

    Columns whose real range is 0 are skipped.

    Parameters
    ----------{common}
    lower, upper : float
        Percentiles that define the range (default 5 and 95).

    Returns
    -------
    float
        1 when the synthetic spread matches; < 1 for shrunken, > 1 for inflated tails.
    """
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
    R, S, _, _ = _prepare(real, synth, sample_size, random_state)
    return _tail(R, S, lower, upper)


def discriminator_auc(
    real: Any,
    synth: Any,
    *,
    n_splits: int = 3,
    max_iter: int = 100,
    sample_size: int | None = None,
    random_state: int | None = None,
) -> float:
    """Cross-validated ROC AUC of a gradient-boosted real-vs-synthetic classifier.

    A balanced subsample (``min(n_real, n_synth)`` rows of each) is split by a shuffled
    ``StratifiedKFold``; a :class:`~sklearn.ensemble.HistGradientBoostingClassifier` is
    fitted on each training fold and scored by AUC on the held-out fold; the fold mean is
    returned.

    Parameters
    ----------{common}
    n_splits : int
        Cross-validation folds (default 3).
    max_iter : int
        Boosting iterations (default 100).

    Returns
    -------
    float
        0.5 is ideal (indistinguishable); 1 means perfectly separable; well below 0.5 means
        the synthetic rows are near-copies of real rows.
    """
    if int(n_splits) < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    R, S, _, seed = _prepare(real, synth, sample_size, random_state)
    return _discriminator(R, S, seed, int(n_splits), int(max_iter))


def dcr(
    real: Any, synth: Any, *, sample_size: int | None = None, random_state: int | None = None
) -> float:
    """Distance-to-closest-record ratio in the real data's z-space.

    Both inputs are standardised with the real data's mean and population std. The result
    is the median distance from a synthetic row to its nearest real row, divided by the
    median distance from a real row to its nearest *other* real row (leave-one-out).

    Parameters
    ----------{common}

    Returns
    -------
    float
        About 1 for an independent sample of the same distribution; near 0 for copies of
        real rows; ``inf`` if more than half the real rows are exact duplicates.
    """
    R, S, _, _ = _prepare(real, synth, sample_size, random_state)
    return _dcr(R, S)


def tstr(
    real: Any,
    synth: Any,
    target: int | str,
    *,
    task: str = "auto",
    metric: str | None = None,
    max_iter: int = 100,
    sample_size: int | None = None,
    random_state: int | None = None,
) -> float:
    """Train on synthetic, test on real: utility of the synthetic data for predicting ``target``.

    A :class:`~sklearn.ensemble.HistGradientBoostingRegressor` or ``…Classifier`` is fitted
    on the synthetic rows (all other columns as features) and scored on the real rows. Pass
    real rows that the generator did *not* see (a held-out split) for an honest score.

    Parameters
    ----------{common}
    target : str or int
        Target column (name for DataFrames, position otherwise).
    task : {{'auto', 'classification', 'regression'}}
        ``'auto'``: classification when the real target is integer-valued with at most 20
        distinct values. Synthetic labels are snapped to the nearest real class.
    metric : {{None, 'r2', 'auc', 'f1'}}
        Default: R² (regression), AUC (binary), weighted F1 (multi-class).
    max_iter : int
        Boosting iterations (default 100).

    Returns
    -------
    float
        The score on the real rows (``nan`` when the synthetic data hold a single class).
    """
    R, S, cols, seed = _prepare(real, synth, sample_size, random_state)
    j = _target_index(target, cols, R.shape[1])
    return _tstr(R, S, j, task, metric, seed, int(max_iter))


def fidelity_report(
    real: Any,
    synth: Any,
    *,
    metrics: Sequence[str] | None = None,
    target: int | str | None = None,
    task: str = "auto",
    n_splits: int = 3,
    max_iter: int = 100,
    sample_size: int | None = None,
    random_state: int | None = None,
) -> dict[str, float]:
    """Compute several metrics on one (sampled) copy of the inputs.

    Parameters
    ----------{common}
    metrics : sequence of str, optional
        Names from ``marginal_fidelity``, ``correlation_fidelity``, ``tail_preservation``,
        ``discriminator_auc``, ``dcr``, ``tstr``. Default :data:`DEFAULT_METRICS`, plus
        ``tstr`` when ``target`` is given.
    target : str or int, optional
        Target column for ``tstr``.
    task, n_splits, max_iter
        Passed to :func:`tstr` / :func:`discriminator_auc`.

    Returns
    -------
    dict
        ``{metric name: value}`` in the requested order. Feed several reports to
        :func:`fidelity_table` for a comparison table.
    """
    if metrics is not None:
        names = list(metrics)
    else:
        names = list(DEFAULT_METRICS) + (["tstr"] if target is not None else [])
    known = set(DEFAULT_METRICS) | {"tstr"}
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(known)}")
    if "tstr" in names and target is None:
        raise ValueError("metric 'tstr' needs a target column")
    R, S, cols, seed = _prepare(real, synth, sample_size, random_state)
    out: dict[str, float] = {}
    for name in names:
        if name == "marginal_fidelity":
            out[name] = _marginal(R, S)
        elif name == "correlation_fidelity":
            out[name] = _correlation(R, S)
        elif name == "tail_preservation":
            out[name] = _tail(R, S, 5.0, 95.0)
        elif name == "discriminator_auc":
            out[name] = _discriminator(R, S, seed, int(n_splits), int(max_iter))
        elif name == "dcr":
            out[name] = _dcr(R, S)
        else:
            j = _target_index(target, cols, R.shape[1])  # type: ignore[arg-type]
            out[name] = _tstr(R, S, j, task, None, seed, int(max_iter))
    return out


def fidelity_table(reports: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Stack several :func:`fidelity_report` results into a table (one row per method).

    Parameters
    ----------
    reports : mapping
        ``{method name: report dict}``.

    Returns
    -------
    pandas.DataFrame
        Index: method names; columns: metric names.
    """
    return pd.DataFrame.from_dict({k: dict(v) for k, v in reports.items()}, orient="index")


for _f in (
    marginal_fidelity,
    correlation_fidelity,
    tail_preservation,
    discriminator_auc,
    dcr,
    tstr,
    fidelity_report,
):
    _f.__doc__ = _f.__doc__.replace("{common}", _DOC_COMMON).replace("{{", "{").replace("}}", "}")
del _f
