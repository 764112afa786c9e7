"""The extraction output: a Zarr store readable with ``xarray.open_zarr``.

Dimensions ``feature`` (d_sae), ``rank`` (top_k), ``window`` (prefix + 1 + suffix), ``bin``.

Variables

=====================  ==========================  ==============================================
``topk_value``         (feature, rank) float32     sample's max activation; NaN for empty slots
``topk_sample``        (feature, rank) int64       sample index; -1 for empty slots
``topk_position``      (feature, rank) int32       position of the max in the sample; -1 if empty
``window_tokens``      (feature, rank, window)     token ids; -1 outside the sequence (pad marker)
``window_acts``        (feature, rank, window)     the feature's activation; NaN outside/padding
``max_activation``     (feature) float32
``n_active_tokens``    (feature) int64             ``density = n_active_tokens / n_valid_tokens``
``n_active_samples``   (feature) int64             ``frequency = n_active_samples / n_samples``
``act_sum``            (feature) float64           sum of activations over valid tokens
``act_sumsq``          (feature) float64           sum of squares over valid tokens
``mean``, ``std``      (feature) float64           over active tokens (NaN for dead features)
``hist``               (feature, bin) int64        nonzero activations per bin
``dead``               (feature) bool              never active
``range_*``            (feature, bin, range_slot)  examples across the activation range (when
                       [, window]                  ``range_examples`` > 0; see
                                                   :mod:`hvrt_dask.sae.range_examples`)
=====================  ==========================  ==============================================

Coordinates ``feature``, ``rank``, ``window_offset`` (window, -prefix..suffix), ``bin_lower`` /
``bin_upper`` (bin). Attributes (JSON): ``store``, ``sae`` (path, hash, architecture, ...),
``config``, ``batch_size``, ``versions``, ``timings``, ``n_valid_tokens``, ``n_samples``,
``complete`` (written last, True only when the whole output is there).
"""

from __future__ import annotations

import os
import platform
import time
import warnings
from typing import Any

import numpy as np

from hvrt_dask import ownership
from hvrt_dask.sae.codecs import fast_codec
from hvrt_dask.sae.range_examples import SLOT_DIM
from hvrt_dask.sae.stats import bin_bounds


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("hvrt-dask", "dask", "distributed", "numpy", "torch", "zarr", "xarray", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


KIND = "sae.features"  # ownership kind of extraction outputs
FORMAT = "hvrt_dask.sae_features/2"
#: Output chunk along ``feature`` (at most; a divisor of the feature block so block writes align).
FEATURE_CHUNK = 1024
#: Chunk of the window arrays along ``rank``: ranks beyond a chunk's last example stay unwritten fill,
#: so the window arrays' bytes on disk follow the examples found, not ``d_sae x top_k``.
RANK_CHUNK = 8
WINDOW_ARRAYS = ("window_tokens", "window_acts")
#: Chunk of the range examples' window arrays along ``bin``.
RANGE_BIN_CHUNK = 8
_COORDS = "feature rank window_offset bin_lower bin_upper"


class NonFiniteStatisticError(ValueError):
    """A feature's statistic overflowed to inf (message names the feature); nothing is written for it."""


def feature_chunk(feature_block: int) -> int:
    """The output's chunk along ``feature``: the largest divisor of ``feature_block`` up to
    :data:`FEATURE_CHUNK`, so that every block's region write covers whole chunks."""
    import math

    return math.gcd(int(feature_block), FEATURE_CHUNK) if feature_block % FEATURE_CHUNK else FEATURE_CHUNK


def create_output(out: str, *, d_sae: int, top_k: int, prefix: int, suffix: int, edges: np.ndarray,
                  feature_block: int, range_m: int = 0) -> None:
    """Create the output's arrays (metadata only; the small coordinates are written here).

    Every array is chunked along ``feature`` by :func:`feature_chunk`, so the workers' block
    writes (:func:`write_block`) never share a chunk. Fill values are the empty-slot values
    (NaN, -1), so chunks that hold no example are never written.
    """
    import zarr

    w = prefix + 1 + suffix
    n_bins = len(edges) + 1
    fc = min(feature_chunk(feature_block), d_sae)
    g = zarr.open_group(out, mode="a", zarr_format=3)
    lower, upper = bin_bounds(edges)
    F, FR, FRW = ("feature",), ("feature", "rank"), ("feature", "rank", "window")
    spec = {
        "topk_value": (FR, "float32", np.nan), "topk_sample": (FR, "int64", -1), "topk_position": (FR, "int32", -1),
        "window_tokens": (FRW, "int32", -1), "window_acts": (FRW, "float32", np.nan),
        "max_activation": (F, "float32", 0), "n_active_tokens": (F, "int64", 0), "n_active_samples": (F, "int64", 0),
        "density": (F, "float64", 0), "frequency": (F, "float64", 0), "act_sum": (F, "float64", 0),
        "act_sumsq": (F, "float64", 0), "mean": (F, "float64", np.nan), "std": (F, "float64", np.nan),
        "hist": (("feature", "bin"), "int64", 0), "dead": (F, "bool", True), "feature": (F, "int64", -1),
    }
    shape = {"feature": d_sae, "rank": top_k, "window": w, "bin": n_bins}
    for name, (dims, dtype, fill) in spec.items():
        chunks = (fc,) + tuple(shape[d] for d in dims[1:])
        kw = {}
        if name in WINDOW_ARRAYS:
            kw = {"compressors": (fast_codec(),)}
            chunks = (fc, min(RANK_CHUNK, top_k), w)
        a = g.create_array(name, shape=tuple(shape[d] for d in dims), chunks=chunks,
                           dtype=dtype, fill_value=fill, dimension_names=dims, overwrite=True, **kw)
        if name != "feature":
            a.attrs["coordinates"] = _COORDS
    if range_m:  # examples across the activation range (hvrt_dask.sae.range_examples)
        FBS = ("feature", "bin", SLOT_DIM)
        for name, dims, dtype, fill in (
                ("range_sample", FBS, "int64", -1), ("range_value", FBS, "float32", np.nan),
                ("range_position", FBS, "int32", -1), ("range_window_tokens", FBS + ("window",), "int32", -1),
                ("range_window_acts", FBS + ("window",), "float32", np.nan)):
            windowed = len(dims) == 4
            # window chunks span few bins: a feature fires in few bins, the other chunks stay unwritten fill
            chunks = (fc, min(RANGE_BIN_CHUNK, n_bins), range_m, w) if windowed else (fc, n_bins, range_m)
            a = g.create_array(name, shape=(d_sae, n_bins, range_m) + ((w,) if windowed else ()), chunks=chunks,
                               dtype=dtype, fill_value=fill, dimension_names=dims, overwrite=True,
                               **({"compressors": (fast_codec(),)} if windowed else {}))
            a.attrs["coordinates"] = _COORDS
    for name, dim, values in (("rank", "rank", np.arange(top_k)), ("window_offset", "window", np.arange(-prefix, suffix + 1)),
                              ("bin_lower", "bin", lower), ("bin_upper", "bin", upper)):
        a = g.create_array(name, shape=values.shape, dtype=values.dtype, dimension_names=(dim,), overwrite=True)
        a[:] = values


def block_arrays(top: dict, stats: dict, lo: int, top_k: int) -> dict[str, np.ndarray]:
    """The output arrays (all but the windows) of one feature block from its merged
    partial's top-k and statistics.

    Raises
    ------
    NonFiniteStatisticError
        A statistic overflowed (a finite activation near the float32 limit).
    """
    b, kk = top["values"].shape
    for name in ("max", "sum", "sumsq"):
        bad = ~np.isfinite(stats[name])
        if bad.any():
            f = lo + int(np.flatnonzero(bad)[0])
            raise NonFiniteStatisticError(
                f"feature {f}: statistic {name!r} overflowed to {stats[name][f - lo]} ({int(bad.sum())} features "
                "in this block); the activations are too large for float32/float64 statistics")
    pad = top_k - kk
    vals = np.pad(top["values"], ((0, 0), (0, pad)), constant_values=np.nan)
    smp = np.pad(top["samples"], ((0, 0), (0, pad)), constant_values=-1)
    pos = np.pad(top["positions"], ((0, 0), (0, pad)), constant_values=-1)
    vals[smp < 0] = np.nan
    return {
        "topk_value": vals, "topk_sample": smp, "topk_position": pos,
        "max_activation": stats["max"].astype(np.float32),
        "n_active_tokens": stats["n_active_tokens"].astype(np.int64),
        "n_active_samples": stats["n_active_samples"].astype(np.int64),
        "density": np.asarray(stats["density"], np.float64), "frequency": np.asarray(stats["frequency"], np.float64),
        "act_sum": stats["sum"], "act_sumsq": stats["sumsq"], "mean": stats["mean"], "std": stats["std"],
        "hist": stats["hist"].astype(np.int64), "dead": stats["dead"], "feature": np.arange(lo, lo + b, dtype=np.int64),
    }


def write_block(out: str, lo: int, arrays: dict[str, np.ndarray], slots: np.ndarray, tokens: np.ndarray,
                acts: np.ndarray, top_k: int) -> int:
    """Write one feature block into features ``[lo, lo + width)`` of the output; returns the
    bytes of array data handed to Zarr.

    Every write is aligned to the output's chunks (:func:`create_output`): a block starts on
    a feature chunk and ends on one or at ``d_sae``. The windows are written one feature
    chunk at a time, only over the rank chunks that hold examples (``slots`` = local feature
    x top_k + rank, sorted; ``tokens``/``acts`` ``[E, W]``); the rest stays fill.
    """
    import zarr

    g = zarr.open_group(out, mode="r+")
    n = 0
    for name, a in arrays.items():
        g[name][lo : lo + len(a)] = a
        n += a.nbytes
    width = len(arrays["feature"])
    wt_arr, wa_arr = g["window_tokens"], g["window_acts"]
    fc, rc, w = wa_arr.chunks
    for a in range(0, width, fc):
        b = min(a + fc, width)
        i, e = np.searchsorted(slots, [a * top_k, b * top_k])
        if i == e:
            continue  # no example in these features: fill
        local = slots[i:e] - a * top_k
        ranks = -(-(int((local % top_k).max()) + 1) // rc) * rc  # whole rank chunks
        ranks = min(ranks, top_k)
        feat, rank = local // top_k, local % top_k
        wt = np.full((b - a, ranks, w), -1, np.int32)
        wa = np.full((b - a, ranks, w), np.nan, np.float32)
        wt[feat, rank] = tokens[i:e]
        wa[feat, rank] = acts[i:e]
        wt_arr[lo + a : lo + b, :ranks] = wt
        wa_arr[lo + a : lo + b, :ranks] = wa
        n += wt.nbytes + wa.nbytes
    return n


def write_range_block(out: str, lo: int, arrays: dict[str, np.ndarray], slots: np.ndarray, tokens: np.ndarray,
                      acts: np.ndarray) -> int:
    """Write one feature block's range examples into features ``[lo, lo + width)``; returns the
    bytes handed to Zarr.

    ``arrays``: ``range_sample`` / ``range_value`` / ``range_position`` ``[width, n_bins, m]``
    (:func:`hvrt_dask.sae.range_examples.finalize`); ``slots`` (sorted; ``(local feature x
    n_bins + bin) x m + slot``) with their windows ``tokens`` / ``acts`` ``[E, W]``. Writes are
    aligned to the chunks and inside the block's features; window chunks (a feature chunk x
    :data:`RANGE_BIN_CHUNK` bins) without an example are never written (fill).
    """
    import zarr

    g = zarr.open_group(out, mode="r+")
    n = 0
    for name, a in arrays.items():
        g[name][lo : lo + len(a)] = a
        n += a.nbytes
    width, n_bins, m = arrays["range_sample"].shape
    wt_arr, wa_arr = g["range_window_tokens"], g["range_window_acts"]
    fc, bc, _, w = wt_arr.chunks
    per = n_bins * m
    for a in range(0, width, fc):
        b = min(a + fc, width)
        i, e = np.searchsorted(slots, [a * per, b * per])
        local = slots[i:e] - a * per
        feat, bin_, slot = local // per, (local // m) % n_bins, local % m
        # only the (feature chunk, bin chunk)s holding examples: the rest stays unwritten fill
        for c in np.unique(bin_ // bc):
            b0, b1 = int(c) * bc, min(int(c) * bc + bc, n_bins)
            sel = (bin_ >= b0) & (bin_ < b1)
            wt = np.full((b - a, b1 - b0, m, w), -1, np.int32)
            wa = np.full((b - a, b1 - b0, m, w), np.nan, np.float32)
            wt[feat[sel], bin_[sel] - b0, slot[sel]] = tokens[i:e][sel]
            wa[feat[sel], bin_[sel] - b0, slot[sel]] = acts[i:e][sel]
            wt_arr[lo + a : lo + b, b0:b1] = wt
            wa_arr[lo + a : lo + b, b0:b1] = wa
            n += wt.nbytes + wa.nbytes
    return n


def finalize_output(out: str, attrs: dict) -> None:
    """The group attributes (``complete`` True among them), consolidated metadata, then the
    completion marker (:func:`hvrt_dask.ownership.mark_complete`), last."""
    import zarr

    g = zarr.open_group(out, mode="r+")
    g.attrs.update(_jsonable({**attrs, "format": FORMAT, "pad_marker": -1, "versions": _versions(),
                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": True}))
    with warnings.catch_warnings():
        # partials/ holds numpy files (not Zarr nodes); consolidated metadata is a v3 extension
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(out)
    ownership.mark_complete(out)


def is_complete(out: str | os.PathLike) -> bool:
    """True when ``out`` is a finished extraction output (its completion marker is set)."""
    return ownership.is_complete(out) and ownership.owned_by(out, KIND)


def open_output(out: str | os.PathLike):
    """Open a complete extraction output as an :class:`xarray.Dataset`.

    Raises
    ------
    hvrt_dask.ownership.IncompleteOutputError
        When the output is incomplete (interrupted run or still being written).
    """
    import xarray as xr

    ownership.require_complete(out, "extraction output")
    return xr.open_zarr(os.fspath(out))


def read_summary(out: str) -> dict:
    """``batch_size``, ``n_chunks``, ``n_resumed``, ``workers`` and ``timings`` of a finished output."""
    import zarr

    a = dict(zarr.open_group(out, mode="r").attrs)
    s = dict(a["summary"])
    s["timings"] = a.get("timings", {})
    return s
