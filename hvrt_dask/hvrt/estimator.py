"""The HVRT estimators: fit a partition tree, group partitions into chunks, expand.

``HVRT``, ``FastHVRT``, ``HART``, ``FastHART`` and ``PyramidHART`` differ only in their
partition target (see :mod:`hvrt_dask.hvrt._targets`). They are scikit-learn estimators
(``get_params`` / ``set_params`` / ``clone``; ``fit`` returns ``self``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator

from hvrt_dask import _seeding
from hvrt_dask.hvrt import _columns, _input, _targets, _tree
from hvrt_dask.hvrt import output as _output
from hvrt_dask.hvrt.partitioned import PartitionedData, partition


def _resolve_seed(random_state: Any, draw: bool = True) -> int:
    """The integer seed of every random stream of a fit (scikit-learn ``random_state`` forms).

    ``int`` → itself (must be in [0, 2**63)); ``None`` → a fresh 63-bit seed from OS entropy;
    ``numpy.random.RandomState`` → ``random_state.randint(0, 2**63 - 1)``;
    ``numpy.random.Generator`` → ``random_state.integers(0, 2**63 - 1)`` — one draw per
    ``fit``, so refitting with the same instance gives a new (reproducible) seed.
    """
    rs = random_state
    if rs is None:
        return _seeding.fresh_seed() if draw else 0
    if isinstance(rs, (int, np.integer)) and not isinstance(rs, (bool, np.bool_)):
        if not 0 <= int(rs) < 2**63:
            raise ValueError(f"random_state must be in [0, 2**63), got {int(rs)}")
        return int(rs)
    if isinstance(rs, np.random.RandomState):
        return int(rs.randint(0, 2**63 - 1, dtype=np.int64)) if draw else 0
    if isinstance(rs, np.random.Generator):
        return int(rs.integers(0, 2**63 - 1)) if draw else 0
    raise ValueError(
        f"random_state must be an int, None, numpy.random.RandomState or numpy.random.Generator, got {rs!r}"
    )


_TRAINING_INDEX = object()  # _to_output's default: the rows are the training rows


def _col_names(spec: _input.InputSpec, idx) -> list[str]:
    return [repr(spec.columns[int(j)]) for j in np.atleast_1d(idx)]


class _Transform:
    """Raw values → z-space ``[continuous | categorical]`` (picklable, used per block)."""

    def __init__(self, cont, cat, center, scale, cat_lookup):
        self.cont = np.asarray(cont, dtype=np.int64)
        self.cat = np.asarray(cat, dtype=np.int64)
        self.center = center  # length d, in X_z column order
        self.scale = scale
        self.cat_lookup = cat_lookup  # per categorical column: (sorted values, code of each)

    def codes(self, X: np.ndarray) -> np.ndarray:
        out = np.empty((X.shape[0], len(self.cat)), dtype=np.float64)
        for k, j in enumerate(self.cat):
            vals, code = self.cat_lookup[k]
            pos = np.clip(np.searchsorted(vals, X[:, j]), 0, len(vals) - 1)
            out[:, k] = code[pos]
        return out

    def __call__(self, X: np.ndarray) -> np.ndarray:
        Z = np.empty((X.shape[0], len(self.cont) + len(self.cat)), dtype=np.float64)
        Z[:, : len(self.cont)] = X[:, self.cont]
        if len(self.cat):
            Z[:, len(self.cont) :] = self.codes(X)
        Z -= self.center
        Z /= self.scale
        return Z


class _HVRTBase(BaseEstimator):
    """Shared implementation; subclasses set ``_target``.

    Parameters
    ----------
    n_partitions : int, optional
        Maximum number of leaves (auto-tuned when None).
    min_samples_leaf : int, optional
        Minimum rows per leaf (auto-tuned when None).
    max_depth : int, optional
        Maximum tree depth.
    min_samples_per_partition : int, default 5
        Floor of the per-partition budget in ``reduce``.
    y_weight : float, default 0.0
        Weight of the ``y``-extremeness signal in the partition target.
    y_weight_mode : {"fixed", "adaptive", "linear", "adaptive_linear"}
    auto_tune : bool, default True
        Use the expansion-mode auto-tune formulas.
    bandwidth : float or {"auto", "scott", "silverman"}, default "auto"
        Default bandwidth of ``expand`` (see :func:`hvrt_dask.hvrt.expand.resolve_strategy`).
    random_state : int, None, numpy.random.RandomState or numpy.random.Generator, default 42
        Seed of every random stream (the integer ``random_state_``): an int is used as is;
        None draws a fresh 63-bit seed from OS entropy at each ``fit``; a ``RandomState`` /
        ``Generator`` gives one ``randint``/``integers(0, 2**63 - 1)`` draw per ``fit``.
        Every draw then comes from ``SeedSequence(random_state_, spawn_key=(stage, call,
        partition))``.
    tree_splitter : {"best", "random"}, default "best"
    """

    _target = "hvrt"

    def __init__(
        self,
        n_partitions: int | None = None,
        min_samples_leaf: int | None = None,
        max_depth: int | None = None,
        min_samples_per_partition: int = 5,
        y_weight: float = 0.0,
        y_weight_mode: str = "fixed",
        auto_tune: bool = True,
        bandwidth: float | str = "auto",
        random_state: int | None = 42,
        tree_splitter: str = "best",
    ) -> None:
        self.n_partitions = n_partitions
        self.min_samples_leaf = min_samples_leaf
        self.max_depth = max_depth
        self.min_samples_per_partition = min_samples_per_partition
        self.y_weight = y_weight
        self.y_weight_mode = y_weight_mode
        self.auto_tune = auto_tune
        self.bandwidth = bandwidth
        self.random_state = random_state
        self.tree_splitter = tree_splitter

    # ------------------------------------------------------------------ fit
    def _check_params(self) -> None:
        """Validate every constructor parameter (called first thing in ``fit``)."""
        if not isinstance(self.auto_tune, (bool, np.bool_)):
            raise ValueError(f"auto_tune must be True or False, got {self.auto_tune!r}")
        if not (isinstance(self.bandwidth, str) and self.bandwidth == "auto"):
            from hvrt_dask.hvrt.expand import check_bandwidth

            check_bandwidth(self.bandwidth)
        ms = self.min_samples_per_partition
        if isinstance(ms, bool) or not isinstance(ms, (int, np.integer)) or ms < 0:
            raise ValueError(f"min_samples_per_partition must be an integer >= 0, got {ms!r}")
        if isinstance(self.y_weight, bool) or not isinstance(self.y_weight, (int, float, np.integer, np.floating)):
            raise ValueError(f"y_weight must be a number in [0, 1], got {self.y_weight!r}")
        _resolve_seed(self.random_state, draw=False)
        if self.tree_splitter not in ("best", "random"):
            raise ValueError(f"tree_splitter must be 'best' or 'random', got {self.tree_splitter!r}")
        if self.y_weight_mode not in _targets.Y_WEIGHT_MODES:
            raise ValueError(f"y_weight_mode must be one of {_targets.Y_WEIGHT_MODES}, got {self.y_weight_mode!r}")
        for name in ("n_partitions", "min_samples_leaf", "max_depth"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if not 0.0 <= float(self.y_weight) <= 1.0:
            raise ValueError(f"y_weight must be in [0, 1], got {self.y_weight!r}")

    def fit(self, X: Any, y: Any = None, feature_types: Sequence[str] | str | None = "auto"):
        """Fit the partition tree and group the rows into partition-aligned chunks.

        Parameters
        ----------
        X : array-like
            numpy array, pandas DataFrame, dask array or DataFrame, Zarr array or path, or
            xarray DataArray, shape (n, d).
        y : array-like, optional
            Shapes the partitions only (``y_weight > 0``); never generated.
        feature_types : "auto" or list of str, default "auto"
            One entry per column: ``"auto"``, ``"continuous"``, ``"integer"``,
            ``"discrete"``, ``"categorical"`` or ``"constant"`` (see
            :mod:`hvrt_dask.hvrt._columns`). ``"auto"``: pandas category/bool/string/object →
            categorical; numeric with at most ``hvrt.types.max-discrete`` distinct values →
            discrete; integer dtypes and all-integral floats → integer; one value → constant;
            other floats → continuous; with ``hvrt.types.max-decimals`` set (default off),
            rounded to their recorded decimals when every value lies on a ``10**-p`` grid
            with ``p <= max-decimals`` (``column_types_.decimals``).

        Returns
        -------
        self
        """
        self._check_params()
        spec_t = _targets.get_target(self._target)
        values, spec = _input.coerce_input(X, feature_types)
        n, d = (int(s) for s in values.shape)
        if d < 2:
            raise ValueError(f"X has {d} feature(s) (shape={(n, d)}) while a minimum of 2 is required by HVRT")
        s_size = _tree.default_sample_size()
        # Checks that depend only on (n, d) come before any pass over the data.
        params = _tree.resolve_tree_params(
            n, d, self.n_partitions, self.min_samples_leaf, self.max_depth, self.auto_tune, s_size
        )
        if n < 2 * params.min_samples_leaf:
            raise ValueError(
                f"X has {n} rows (n_samples = {n}); growing a partition tree needs at least "
                f"2 * min_samples_leaf = {2 * params.min_samples_leaf}"
            )
        seed = _resolve_seed(self.random_state)
        y_arr = self._check_y(y, n)
        lazy = isinstance(values, da.Array)
        # One pass: finiteness, range, moments, decimals (integrality is p = 0), and the tree
        # sample (all rows when n <= s).
        sample_idx = _tree.sample_rows(n, s_size, seed) if n > s_size else None
        max_p = _columns.max_decimals() or 0
        if lazy:
            finite = da.isfinite(values).all(axis=0)
            Xs_lazy = values if sample_idx is None else values[sample_idx]
            decimals = values.map_blocks(
                _columns.decimals_of, max_p, spec.dtypes, dtype=np.int8,
                chunks=((1,) * values.numblocks[0], values.chunks[1]),
            ).max(axis=0)
            finite, lo, hi, mean, std, decimals, Xs = dask.compute(
                finite, values.min(axis=0), values.max(axis=0), values.mean(axis=0),
                values.std(axis=0), decimals, Xs_lazy,
            )
            if not finite.all():
                raise ValueError(f"X contains NaN or infinite values in column(s) {', '.join(_col_names(spec, np.flatnonzero(~finite)))}")
        else:
            finite = np.isfinite(values).all(axis=0)
            if not finite.all():
                raise ValueError(f"X contains NaN or infinite values in column(s) {', '.join(_col_names(spec, np.flatnonzero(~finite)))}")
            lo, hi = values.min(axis=0), values.max(axis=0)
            with np.errstate(over="ignore", invalid="ignore"):
                mean, std = values.mean(axis=0), values.std(axis=0)
            Xs = values if sample_idx is None else values[sample_idx]
            decimals = _columns.decimals_of(values, max_p, spec.dtypes)[0]

        def unique_of(cols: list[int]) -> list[np.ndarray]:
            if lazy:
                return list(dask.compute(*[da.unique(values[:, j]) for j in cols]))
            return [np.unique(values[:, j]) for j in cols]

        types = _columns.resolve(spec.feature_types, Xs, lo, hi, decimals, spec.integer_mask, unique_of)
        spec.feature_types = list(types.kinds)
        if len(types.constant) == d:
            raise ValueError(f"every column of X is constant ({', '.join(_col_names(spec, range(d)))}); nothing to model")
        cat = types.categorical
        cont = types.generated
        # Label-encode categoricals: codes in lexicographic order of the string form.
        cat_lookup = []
        for j in cat:
            if j in spec.categories:  # already coded 0..K-1 in string order
                k = len(spec.categories[j])
                cat_lookup.append((np.arange(k, dtype=np.float64), np.arange(k, dtype=np.float64)))
                continue
            vals = da.unique(values[:, j]).compute() if lazy else np.unique(values[:, j])
            strs = np.array([str(v) for v in vals])
            rank = np.empty(len(vals), dtype=np.float64)
            rank[np.argsort(strs, kind="stable")] = np.arange(len(vals))
            cat_lookup.append((vals, rank))

        y_s = None if y_arr is None else (y_arr if sample_idx is None else y_arr[sample_idx])
        # Scalers: exact over all rows for the standard family; robust ones on the sample
        # (exact whenever the sample is the whole data).
        dz = len(cont) + len(cat)
        pre = _Transform(cont, cat, np.zeros(dz), np.ones(dz), cat_lookup)
        raw_z = pre(Xs)  # [cont | cat codes], unscaled
        if spec_t.robust:
            center, scale = _targets.location_scale(raw_z, robust=True)
        else:
            center, scale = _targets.location_scale(raw_z, robust=False)
            if sample_idx is not None and len(cont):  # exact moments for continuous columns
                center[: len(cont)], scale[: len(cont)] = mean[cont], np.where(std[cont] > 0, std[cont], 1.0)
        transform = _Transform(cont, cat, center, scale, cat_lookup)
        _columns.check_z_finite(spec.columns, np.concatenate([cont, cat]), center, scale,
                                pre(np.stack([lo, hi])))
        Zs = (raw_z - center) / scale
        t = _targets.compute_target(Zs, self._target, y_s, self.y_weight, self.y_weight_mode)

        tree = _tree.fit_tree(Zs, t, params, spec_t.criterion, self.tree_splitter, seed)

        # Leaf of every row, counts, mean |z| and the grouping: on the workers for dask input
        # (the client sees per-chunk counts only), in memory for numpy input.
        dts = set(spec.dtypes)
        store = next(iter(dts)) if len(dts) == 1 and next(iter(dts)) in (np.float32, np.float16) else None
        grouped = partition(values, tree, transform, np.arange(len(cont)), columns=spec.columns,
                            check_finite=False, store_dtype=store)

        # ---- fitted state
        self.random_state_ = seed
        self.input_spec_ = spec
        if spec.has_names and spec.kind in ("pandas", "dask_dataframe"):
            self.feature_names_in_ = np.asarray(spec.columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.n_features_in_ = d
        self.column_types_ = types
        self.continuous_mask_ = types.mask(*_columns.GENERATED)
        self.categorical_mask_ = types.mask("categorical")
        self.constant_mask_ = types.mask("constant")
        self.tree_ = tree
        self.tree_params_ = params
        self.tree_sample_size_ = int(params.sample_size)
        self.unique_partitions_ = grouped.unique
        self.n_partitions_ = int(len(grouped.unique))
        self.partition_sizes_ = grouped.sizes
        self.partition_mean_abs_z_ = grouped.mean_abs_z
        self.n_samples_ = n
        self.center_ = center
        self.scale_ = scale
        self.data_min_ = np.asarray(lo, dtype=np.float64)
        self.data_max_ = np.asarray(hi, dtype=np.float64)
        self.transform_ = transform
        self.grouped_: PartitionedData = grouped
        self._call_counters_: dict[str, int] = {}
        return self

    @staticmethod
    def _check_y(y, n: int) -> np.ndarray | None:
        if y is None:
            return None
        if isinstance(y, da.Array):
            y = y.compute()
        y = np.asarray(y, dtype=np.float64).reshape(-1) if np.ndim(y) <= 2 else None
        if y is None or len(y) != n:
            raise ValueError(f"y must have one value per row of X ({n}), got shape {np.shape(y)}")
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values")
        return y

    # ------------------------------------------------------------ internals others use
    def _check_fitted(self) -> None:
        if not hasattr(self, "grouped_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")

    def _next_call(self, stage: str) -> int:
        """Per-stage call counter: 0 on the first call after ``fit``, then 1, 2, ..."""
        self._check_fitted()
        call = self._call_counters_.get(stage, 0)
        self._call_counters_[stage] = call + 1
        return call

    def _chunk_contexts(self, kind: str, strategy: Any, params: Mapping[str, Any], columns: str) -> da.Array:
        """Per-chunk prepared contexts (dask object array, shape (n_chunks, 1)); cached."""
        self._check_fitted()
        return self.grouped_.contexts(kind, strategy, params, columns).array

    def _to_output(self, arr: Any, columns: Any = None, output: str | os.PathLike | None = None,
                   kind: str = "hvrt.expand", provenance: Mapping[str, Any] | None = None,
                   rows: Any = None, index: Any = _TRAINING_INDEX) -> Any:
        """A result in original units as the input's kind, or written to ``output``.

        With ``output``, the result is written as a complete, self-describing Zarr group or
        Parquet dataset (:mod:`hvrt_dask.hvrt.output`) and its resolved path is returned
        (read it with :func:`hvrt_dask.hvrt.read_output`); nothing is read back. ``index``:
        the row labels ``rows`` refer to (default: the training input's; None for none).
        """
        self._check_fitted()
        if output is None:
            return _input.to_output(arr, self.input_spec_)
        spec = self.input_spec_ if index is _TRAINING_INDEX else dataclasses.replace(self.input_spec_, index=index)
        prov = {"estimator": type(self).__name__, "seed": int(self.random_state_),
                "model_params": {k: v for k, v in self.get_params().items() if k != "random_state"},
                **(provenance or {})}
        return _output.write(arr, spec, output, kind, prov, rows=rows)

    def apply_raw(self, X: Any) -> np.ndarray:
        """Partition (leaf) id of every row of external data ``X`` (numpy int64)."""
        self._check_fitted()
        values = _input.coerce_like(X, self.input_spec_)
        return np.asarray(_tree.apply_tree(self.transform_(np.asarray(values)) if not isinstance(values, da.Array)
                                           else values.map_blocks(self.transform_, dtype=np.float64), self.tree_))

    def get_partitions(self) -> list[dict[str, Any]]:
        """One dict per partition: ``id``, ``size``, ``mean_abs_z``."""
        self._check_fitted()
        return [
            {"id": int(i), "size": int(s), "mean_abs_z": float(m)}
            for i, s, m in zip(self.unique_partitions_, self.partition_sizes_, self.partition_mean_abs_z_)
        ]

    # ------------------------------------------------------------------ expand
    def expand(
        self,
        n: int,
        generation_strategy: Any = None,
        bandwidth: float | str | None = None,
        variance_weighted: bool | str = False,
        adaptive_bandwidth: bool = False,
        clip: bool = True,
        X: Any = None,
        output: str | os.PathLike | None = None,
        strategy_params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Generate ``n`` synthetic rows; see :func:`hvrt_dask.hvrt.expand.expand`."""
        from hvrt_dask.hvrt.expand import expand

        return expand(
            self, n, generation_strategy=generation_strategy, bandwidth=bandwidth,
            variance_weighted=variance_weighted, adaptive_bandwidth=adaptive_bandwidth,
            clip=clip, X=X, output=output, strategy_params=strategy_params,
        )

    # ------------------------------------------------------------------ reduce
    def reduce(
        self,
        n: int | None = None,
        ratio: float | None = None,
        method: Any = None,
        variance_weighted: bool | str | None = None,
        return_indices: bool = False,
        X: Any = None,
        output: str | os.PathLike | None = None,
        min_samples_per_partition: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """Select a representative subset of the rows; see :func:`hvrt_dask.hvrt.reduce.reduce`."""
        from hvrt_dask.hvrt.reduce import reduce

        return reduce(
            self, n=n, ratio=ratio, method=method, variance_weighted=variance_weighted,
            return_indices=return_indices, X=X, output=output,
            min_samples_per_partition=min_samples_per_partition, params=params,
        )

    def augment(self, n: int, variance_weighted: bool | str = False, **kwargs: Any) -> Any:
        """Training rows followed by ``n − n_train`` synthetic rows (``n`` is the total)."""
        from hvrt_dask.hvrt.expand import augment

        return augment(self, n, variance_weighted=variance_weighted, **kwargs)


class HVRT(_HVRTBase):
    """Partition target: sum of per-pair standardised products (reference §2.3)."""

    _target = "hvrt"


class FastHVRT(_HVRTBase):
    """Partition target: row sum of z (O(n·d))."""

    _target = "fast_hvrt"


class HART(_HVRTBase):
    """Pairwise target on median/MAD-scaled z, ``absolute_error`` tree."""

    _target = "hart"


class FastHART(_HVRTBase):
    """Row sum on median/MAD-scaled z, ``absolute_error`` tree."""

    _target = "fast_hart"


class PyramidHART(_HVRTBase):
    """A = |Σ z| − Σ |z| on median/MAD-scaled z, ``absolute_error`` tree."""

    _target = "pyramid_hart"


__all__ = ["HVRT", "FastHVRT", "HART", "FastHART", "PyramidHART"]
