"""The ``expand`` / ``augment`` driver.

1. Resolve the strategy (explicit name → bandwidth → ``'auto'``, reference §4.7).
2. Budgets per partition with the reference integerisation (:mod:`._budgets`).
3. Per-chunk contexts from the model's cache (built once per strategy and params).
4. One ``map_blocks`` over the grouped training chunks and their contexts. Each chunk's
   output size is the sum of its partitions' budgets, known beforehand, so the output has
   exact chunks. Partition ``p`` draws only from ``generator(seed, "expand", call, p)``.
5. Back to original units; each synthetic row takes the whole categorical tuple of its base
   row (a uniformly drawn row of its partition when the strategy has none); optional clip.
6. Shuffle: the grouped output is in canonical (sorted partition id) order whatever the
   chunking; a seeded permutation keyed by ``(seed, "expand-shuffle", call)`` then fixes
   the row order. ``hvrt.expand.shuffle: global`` (default) applies one global permutation
   (:mod:`.permutation`: drawn block by block on a fixed grid of ``hvrt.expand.shuffle-block-rows``
   rows; in memory a scatter, for lazy output the rows move with Dask's P2P shuffle and no
   task holds all n positions, nothing per row on the client), which makes the output
   bit-identical across chunkings. ``blocks`` permutes rows inside each chunk and then the
   chunk order — no data movement, but the order then depends on the chunk layout.

In-memory models (numpy / pandas input) run the same per-chunk functions in a plain loop,
without building a graph.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from hvrt_dask import config
from hvrt_dask._seeding import generator
from hvrt_dask._threads import map_local
from hvrt_dask.hvrt import output as _output
from hvrt_dask.hvrt._budgets import expand_budgets
from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt._columns import Decoder, per_column
from hvrt_dask.hvrt.generation import GENERATION_STRATEGIES, get_generation_strategy
from hvrt_dask.hvrt._layout import permute_rows
from hvrt_dask.hvrt.permutation import all_arrival_slots, block_bounds, settle, shuffle_block_rows
from hvrt_dask.hvrt.partitioned import active_client, external

_NAMED_BW = ("scott", "silverman")
SHUFFLE_MODES = ("global", "blocks", "none")


def check_n(n: Any, name: str = "n") -> int:
    """Validate a positive integer row count (``TypeError``/``ValueError`` naming it)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {n!r} ({type(n).__name__})")
    if int(n) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {int(n)}")
    return int(n)


def check_bandwidth(bw: Any) -> Any:
    if isinstance(bw, str):
        if bw not in _NAMED_BW:
            raise ValueError(f"bandwidth must be a positive number, 'scott', 'silverman' or 'auto', got {bw!r}")
        return bw
    if isinstance(bw, bool) or not isinstance(bw, numbers.Real) or not np.isfinite(bw) or bw <= 0:
        raise ValueError(f"bandwidth must be a positive number, 'scott', 'silverman' or 'auto', got {bw!r}")
    return float(bw)


def default_strategy_name() -> str:
    """``hvrt.expand.default-strategy``: what ``generation_strategy=None``/``'auto'`` means."""
    return str(config.get("expand.default-strategy", "epanechnikov"))


def default_strategy() -> tuple[Any, dict[str, Any]]:
    """The default strategy and its params (``hvrt.expand.default-strategy`` / ``default-params``)."""
    return get_generation_strategy(default_strategy_name()), dict(config.get("expand.default-params", None) or {})


def atom_cell_share(model: Any) -> float:
    """Share of the generated (z-space) cells of the training data that hold an atom.

    The mean over generated columns of the column's total atom share (``column_types_.shares``,
    fit summaries). 0 when the model has no atoms.
    """
    types = getattr(model, "column_types_", None)
    if types is None or not len(types.generated):
        return 0.0
    return float(sum(float(np.sum(v)) for v in types.shares.values()) / len(types.generated))


def atom_widening(model: Any) -> float:
    """Factor by which the default widens its bandwidth for the model's atoms.

    A synthetic value whose base row holds an atom *is* that atom (the atom's share is kept,
    :mod:`hvrt_dask.hvrt._columns`), so on those cells the row repeats its base row and the
    kernel's displacement comes only from the other cells. With a share ``a`` of atom cells,
    ``1 / sqrt(1 − a)`` restores the expected squared displacement the bandwidth rule gives;
    capped at ``hvrt.expand.atom-widening-max`` (null: no widening), because atoms that are
    constant inside a partition get no kernel noise anyway, so the global share overstates
    what is lost when atoms dominate a table.
    """
    cap = config.get("expand.atom-widening-max", None)
    if cap is None:
        return 1.0
    if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or not cap >= 1:
        raise ValueError(f"hvrt.expand.atom-widening-max must be a number >= 1 or null, got {cap!r}")
    a = atom_cell_share(model)
    return float(cap) if a >= 1.0 else float(min(1.0 / np.sqrt(1.0 - a), cap))


def default_params(model: Any) -> dict[str, Any]:
    """``hvrt.expand.default-params`` for ``model``, ``bandwidth_scale`` widened for its atoms."""
    params = default_strategy()[1]
    if "bandwidth_scale" in params:
        params["bandwidth_scale"] = float(params["bandwidth_scale"]) * atom_widening(model)
    return params


def resolve_strategy(
    model: Any,
    generation_strategy: Any = None,
    bandwidth: Any = None,
    adaptive_bandwidth: bool = False,
    strategy_params: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Pick the strategy and its params for one ``expand`` call.

    Order: an explicit ``generation_strategy`` (``'auto'`` means "not given"); else a
    numeric / ``'scott'`` / ``'silverman'`` bandwidth (the argument, or the constructor's
    when not ``'auto'``) or ``adaptive_bandwidth=True`` (→ ``'scott'``) selects
    ``gaussian_kde``; else the default, ``hvrt.expand.default-strategy`` with
    ``hvrt.expand.default-params`` (:func:`default_params`; ``strategy_params`` override
    them): a variance-preserving, covariance-shaped Epanechnikov kernel at 1.5× Scott's
    factor on each partition's effective dimension, widened by :func:`atom_widening` for
    tables with atoms. Chosen because it does not copy rows (DCR ratio ≥ 0.5) and keeps the
    discriminator AUC near 0.5 on every table of ``benchmarks/results/fidelity.md``
    (docs/generation-strategies.md says why). The peer's ≤2.11 ``'auto'`` rule (Gaussian
    KDE at h = 0.1 on large partitions) emitted near-copies and is not used.
    """
    extra = dict(strategy_params or {})
    if generation_strategy is not None and not (isinstance(generation_strategy, str) and generation_strategy == "auto"):
        strat = get_generation_strategy(generation_strategy)
        if not callable(getattr(strat, "prepare", None)) or not callable(getattr(strat, "generate", None)):
            raise TypeError(f"generation_strategy {generation_strategy!r} lacks prepare()/generate()")
        params = extra
        if strat.name == "gaussian_kde":
            bw = bandwidth if bandwidth not in (None, "auto") else params.get("bandwidth", 0.1)
            params = {**params, "bandwidth": check_bandwidth(bw), "adaptive": bool(adaptive_bandwidth)}
        return strat, params
    bw = bandwidth if bandwidth is not None else model.bandwidth
    if bw == "auto":
        bw = None
    if bw is None and adaptive_bandwidth:
        bw = "scott"
    if bw is not None:
        params = {**extra, "bandwidth": check_bandwidth(bw), "adaptive": bool(adaptive_bandwidth)}
        return GENERATION_STRATEGIES.get("gaussian_kde"), params
    return default_strategy()[0], {**default_params(model), **extra}


@dataclass(frozen=True)
class _Post:
    """z-space continuous block + base rows → one block in original units.

    Column kinds (exact categorical/discrete values, constants, integers, atoms, ranges) are
    decoded by :class:`hvrt_dask.hvrt._columns.Decoder`.
    """

    d: int
    cont: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    decode: Decoder
    block_shuffle: bool

    def __call__(self, Z, base, Xraw, table: ChunkPartitions, b, seed: int, call: int) -> np.ndarray:
        total = int(np.sum(b))
        Z = np.asarray(Z, dtype=np.float64)
        if len(self.cont) == self.d and Z.flags.writeable and Z.shape == (total, self.d):
            out = Z  # all generated, already in column order: transform in place
            per_column(np.multiply, out, self.scale)
            per_column(np.add, out, self.center)
        else:
            out = np.empty((total, self.d), dtype=np.float64)
            if len(self.cont):
                out[:, self.cont] = Z * self.scale + self.center
        rows = None
        if self.decode.needs_base:
            base = np.array(base, dtype=np.int64, copy=True)
            missing = base < 0
            if missing.any():  # no base row: a uniformly drawn row of the partition
                labels = np.repeat(np.arange(table.n_parts), b)
                for i in np.unique(labels[missing]):
                    m = missing & (labels == i)
                    rng = generator(seed, "expand-base", call, int(table.ids[i]))
                    base[m] = table.starts[i] + rng.integers(0, table.sizes[i], int(m.sum()))
            rows = Xraw[base]  # the whole categorical tuple (and atoms) of the base row
        out = self.decode(out, rows)
        if self.block_shuffle and total and table.n_parts:
            out = out[generator(seed, "expand-shuffle", call, int(table.ids[0])).permutation(total)]
        return out


def _gen_chunk(Xraw, ctx, strategy, b, table, seed, call, post) -> np.ndarray:
    rngs = [generator(seed, "expand", call, int(pid)) for pid in table.ids]
    Z, base = strategy.generate(ctx, np.asarray(b, dtype=np.int64), rngs)
    if len(base) != int(np.sum(b)):
        raise RuntimeError(f"strategy {strategy.name!r} returned {len(base)} rows for a budget of {int(np.sum(b))}")
    return post(Z, base, Xraw, table, b, seed, call)


def _gen_block(Xraw, ctxs, strategy, budgets, tables, seed, call, post, block_id=None):
    c = block_id[0]
    return _gen_chunk(Xraw, ctxs[0, 0], strategy, budgets[c], tables[c], seed, call, post)


def expand_raw(
    model: Any,
    n: int,
    generation_strategy: Any = None,
    bandwidth: Any = None,
    variance_weighted: bool | str = False,
    adaptive_bandwidth: bool = False,
    clip: bool = True,
    X: Any = None,
    strategy_params: Mapping[str, Any] | None = None,
) -> Any:
    """Synthetic rows in original units and column order (numpy or lazy dask, float64)."""
    model._check_fitted()
    n = check_n(n)
    strategy, params = resolve_strategy(model, generation_strategy, bandwidth, adaptive_bandwidth, strategy_params)
    if variance_weighted not in (False, True, "size_aware"):
        raise ValueError(f"variance_weighted must be False, True or 'size_aware', got {variance_weighted!r}")
    shuffle = str(config.get("expand.shuffle", "global"))
    if shuffle not in SHUFFLE_MODES:
        raise ValueError(f"hvrt.expand.shuffle must be one of {SHUFFLE_MODES}, got {shuffle!r}")
    block = shuffle_block_rows() if shuffle == "global" else 0  # checked before any work
    g = model.grouped_ if X is None else external(model, X)
    budgets = expand_budgets(g.sizes, n, g.mean_abs_z, variance_weighted)
    call = model._next_call("expand")
    seed = int(model.random_state_)
    entry = g.contexts("generate", strategy, params, "continuous")

    spec = model.input_spec_
    cont = np.flatnonzero(model.continuous_mask_)
    k = len(cont)
    post = _Post(
        spec.n_features, cont, model.center_[:k], model.scale_[:k],
        model.column_types_.decoder(bool(clip)), shuffle == "blocks",
    )
    chunk_budgets = [budgets[idx] for idx in g.part_index]
    totals = tuple(int(b.sum()) for b in chunk_budgets)
    if g.local is not None:
        # Canonical row i goes to position dest[i]: one scatter per chunk, no concatenate.
        # Chunks run on threads for large outputs; each writes disjoint rows of ``out``.
        # Global order in two cache-friendly passes: each chunk writes its rows into their
        # destination blocks in arrival order, then each block settles into its final order.
        slots = all_arrival_slots(seed, call, n, block) if shuffle == "global" else None
        out = np.empty((n, spec.n_features), dtype=np.float64)
        offsets = np.concatenate([[0], np.cumsum(totals)]).astype(np.int64)

        def run(c: int):
            part = _gen_chunk(g.local["X"][c], entry.local[c], strategy, chunk_budgets[c], g.tables[c], seed, call, post)
            a, b = offsets[c], offsets[c + 1]
            if slots is not None:
                out[slots[a:b]] = part
            elif shuffle == "none":
                out[a:b] = part
            else:
                return part
            return None

        parts = g.chunk_map(run, n)
        if slots is not None:
            bounds = block_bounds(n, block)
            map_local(lambda t: settle(out[bounds[t] : bounds[t + 1]], seed, call, t), len(bounds) - 1, n)
        if shuffle == "blocks":
            order = generator(seed, "expand-chunk-order", call).permutation(g.n_chunks)
            out = np.concatenate([parts[c] for c in order], axis=0)
        return out
    out = da.map_blocks(
        _gen_block, g.X, entry.array, strategy, chunk_budgets, list(g.tables), seed, call, post,
        dtype=np.float64, chunks=(totals, (spec.n_features,)), meta=np.empty((0, 0)),
    )
    if shuffle == "global":  # the same order as the in-memory scatter, moved by a shuffle
        method = "p2p" if active_client() is not None else "tasks"
        out = permute_rows(out, seed, call, block, method)
    elif shuffle == "blocks":
        order = generator(seed, "expand-chunk-order", call).permutation(g.n_chunks)
        out = da.concatenate([out.blocks[int(c)] for c in order if totals[c]], axis=0)
    return out


def expand(model: Any, n: int, output: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """Generate ``n`` synthetic rows shaped like the training input.

    Parameters
    ----------
    model : fitted HVRT estimator
    n : int
        Number of synthetic rows (positive integer).
    generation_strategy : str or strategy object, optional
        A registered name (``'epanechnikov'``, ``'bootstrap_noise'``, ``'multivariate_kde'``,
        ``'univariate_kde_copula'``, ``'gaussian_kde'``, or your own) or ``'auto'``/None for
        the default (see :func:`resolve_strategy`).
    bandwidth : float or {"scott", "silverman"}, optional
        Selects the Gaussian-KDE path.
    variance_weighted : bool or "size_aware", default False
        Budget weights: size (False), mean |z| (True, the reference rule) or size × mean |z|.
    adaptive_bandwidth : bool, default False
        Per-partition bandwidth on the Gaussian-KDE path (``'scott'`` if no bandwidth).
    clip : bool, default True
        Keep every generated value inside its column's observed training range (atoms
        and exact categorical/discrete values are kept either way).
    X : array-like, optional
        Generate from external data with the fitted tree and scaler (contexts not cached).
    output : str or path, optional
        Write the result to this new path — a Zarr group, or Parquet for ``*.parquet`` —
        complete and self-describing (:mod:`hvrt_dask.hvrt.output`), and return its resolved
        path (read it back with :func:`hvrt_dask.hvrt.read_output`).
    strategy_params : mapping, optional
        Extra options passed to the strategy's ``prepare`` (part of the context cache key).

    Returns
    -------
    ndarray, DataFrame, dask array, dask DataFrame or xarray DataArray
        Mirrors the training input's kind (see :func:`hvrt_dask.hvrt._input.to_output`); the
        written path (str) when ``output`` is given.
    """
    _output.check_target(output, "hvrt.expand")
    model._check_fitted()
    n = check_n(n)
    _output.check_size(n, int(model.n_features_in_), output)
    out = expand_raw(model, n, **kwargs)
    if output is None:
        return model._to_output(out)
    return model._to_output(out, output=output, kind="hvrt.expand", provenance=_provenance(model, n, kwargs))


def _provenance(model: Any, n: int, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What an output records about the call that made it (strategy resolved as expand did)."""
    strategy, params = resolve_strategy(model, kwargs.get("generation_strategy"), kwargs.get("bandwidth"),
                                        kwargs.get("adaptive_bandwidth", False), kwargs.get("strategy_params"))
    return {"stage": "expand", "n": n, "call": model._call_counters_.get("expand", 1) - 1,
            "generation_strategy": strategy.name, "strategy_params": params,
            "variance_weighted": kwargs.get("variance_weighted", False), "clip": kwargs.get("clip", True),
            "external_X": kwargs.get("X") is not None}


def augment(model: Any, n: int, variance_weighted: bool | str = False, output=None, **kwargs: Any) -> Any:
    """The training rows followed by ``n − n_train`` synthetic rows (``n`` is the total)."""
    model._check_fitted()
    n = check_n(n)
    n_train = int(model.n_samples_)
    if n <= n_train:
        raise ValueError(f"augment(n) needs n > the {n_train} training rows, got {n}")
    _output.check_target(output, "hvrt.expand")
    _output.check_size(n, int(model.n_features_in_), output)
    synth = expand_raw(model, n - n_train, variance_weighted=variance_weighted, **kwargs)
    train = model.grouped_.original_order()
    if isinstance(synth, da.Array) or isinstance(train, da.Array):
        out = da.concatenate([da.asarray(train), da.asarray(synth)], axis=0)
    else:
        out = np.concatenate([train, synth], axis=0)
    if output is None:
        return model._to_output(out)
    prov = {**_provenance(model, n - n_train, {**kwargs, "variance_weighted": variance_weighted}), "stage": "augment"}
    return model._to_output(out, output=output, kind="hvrt.expand", provenance=prov)
