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
``range_start``        (feature) int64             first ``range_example`` row of the feature
``range_count``        (feature) int32             its range examples (rows ``start .. start+count``)
``range_*``            (range_example[, window])   examples across the activation range, one row
                                                   each (when ``range_examples`` > 0; see
                                                   :mod:`hvrt_dask.sae.range_examples`)
=====================  ==========================  ==============================================

The range examples are stored sparse (format 3): one row per example found, rows sorted by
``(range_feature, range_bin, range_slot)``; a feature's rows are one slice
(:func:`read_range_examples`). Rows between feature blocks that hold no example (the
``range_example`` chunks are aligned to the blocks, so each block writes whole chunks) have
``range_feature`` -1 and the fill values. :func:`dense_range_examples` gives the
``(feature, bin, range_slot[, window])`` view of format 2.

Coordinates ``feature``, ``rank``, ``window_offset`` (window, -prefix..suffix), ``bin_lower`` /
``bin_upper`` (bin). Attributes (JSON): ``store``, ``sae`` (path, hash, architecture, ...),
``config``, ``batch_size``, ``versions``, ``timings``, ``n_valid_tokens``, ``n_samples``,
``complete`` (written last, True only when the whole output is there).
"""

from __future__ import annotations

import os
import platform
import threading
import time
import warnings
from typing import Any

import numpy as np

from hvrt_dask import ownership
from hvrt_dask.sae.codecs import fast_codec
from hvrt_dask.sae.range_examples import OUTPUT_VARS
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
FORMAT = "hvrt_dask.sae_features/3"
#: Rows per chunk of the ``range_example`` arrays (at most): one block writes whole chunks.
RANGE_EXAMPLE_CHUNK = 4096
RANGE_DIM = "range_example"
#: Output chunk along ``feature`` of the window arrays (at most; a divisor of the feature block so
#: block writes align). A written window chunk is mostly fill, which LZ4 shrinks to almost nothing:
#: few wide chunks (x :data:`RANK_CHUNK` ranks) cost less than many narrow ones (measured at
#: d_sae 131,072: 2.8 s CPU for the window pass with 16384 x 2, 3.2 s with 4096 x 4, 4.1 s with 1024 x 8).
FEATURE_CHUNK = 16384
#: Output chunk along ``feature`` of the other arrays (at most; a divisor of the feature block):
#: small per feature, so fewer, larger chunk files (a chunk file costs ~1 ms to create here).
WIDE_FEATURE_CHUNK = 16384
#: Chunk of the window arrays along ``rank``: ranks beyond a chunk's last example stay unwritten fill,
#: so the window arrays' bytes on disk follow the examples found, not ``d_sae x top_k``.
RANK_CHUNK = 2
WINDOW_ARRAYS = ("window_tokens", "window_acts")
#: Arrays of examples (per feature and rank), chunked along ``rank`` and written only where examples are.
SPARSE_ARRAYS = ("topk_value", "topk_sample", "topk_position", *WINDOW_ARRAYS)
#: Chunk files named ``c.<i>.<j>...`` in one folder per array: a nested ``c/<i>/<j>/...`` layout
#: creates (and later removes) folders per chunk, which costs as much as the chunk's data here.
CHUNK_KEYS = {"name": "default", "separator": "."}
_COORDS = "feature rank window_offset bin_lower bin_upper"


class NonFiniteStatisticError(ValueError):
    """A feature's statistic overflowed to inf (message names the feature); nothing is written for it."""


def feature_chunk(feature_block: int, cap: int = FEATURE_CHUNK) -> int:
    """The output's chunk along ``feature``: the largest divisor of ``feature_block`` up to
    ``cap`` (a power of two), so that every block's region write covers whole chunks."""
    import math

    return math.gcd(int(feature_block), cap) if feature_block % cap else cap


def create_output(out: str, *, d_sae: int, top_k: int, prefix: int, suffix: int, edges: np.ndarray,
                  feature_block: int, range_m: int = 0) -> None:
    """Create the output's arrays (metadata only; the small coordinates are written here).

    Every array is chunked along ``feature`` by :func:`feature_chunk` (window arrays at most
    :data:`FEATURE_CHUNK`, the others :data:`WIDE_FEATURE_CHUNK` features), so the workers' block
    writes (:func:`write_block`, :func:`write_examples`) never share a chunk. Fill values are the empty-slot values
    (NaN, -1), so chunks that hold no example are never written.
    """
    import zarr

    w = prefix + 1 + suffix
    n_bins = len(edges) + 1
    fc = min(feature_chunk(feature_block), d_sae)
    wide = min(feature_chunk(feature_block, WIDE_FEATURE_CHUNK), d_sae)
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
        chunks = (wide,) + tuple(shape[d] for d in dims[1:])
        kw = {"compressors": (fast_codec(),)}
        if name in SPARSE_ARRAYS:
            # written chunk by chunk, only chunks holding an example (write_examples): Zarr's
            # check for all-fill chunks (slow for NaN fill) would never find one
            kw["config"] = {"write_empty_chunks": True}
        if name in WINDOW_ARRAYS:
            chunks = (fc, min(RANK_CHUNK, top_k), w)
        a = g.create_array(name, shape=tuple(shape[d] for d in dims), chunks=chunks, chunk_key_encoding=CHUNK_KEYS,
                           dtype=dtype, fill_value=fill, dimension_names=dims, overwrite=True, **kw)
        if name != "feature":
            a.attrs["coordinates"] = _COORDS
    if range_m:  # per-feature index of the range examples (their arrays: create_range_examples)
        for name, dtype in (("range_start", "int64"), ("range_count", "int32")):
            a = g.create_array(name, shape=(d_sae,), chunks=(wide,), chunk_key_encoding=CHUNK_KEYS, dtype=dtype,
                               fill_value=0, dimension_names=F, overwrite=True, compressors=(fast_codec(),))
            a.attrs["coordinates"] = _COORDS
    for name, dim, values in (("rank", "rank", np.arange(top_k)), ("window_offset", "window", np.arange(-prefix, suffix + 1)),
                              ("bin_lower", "bin", lower), ("bin_upper", "bin", upper)):
        a = g.create_array(name, shape=values.shape, dtype=values.dtype, dimension_names=(dim,), overwrite=True)
        a[:] = values


#: The range-example arrays: name -> (dtype, fill, windowed).
RANGE_ARRAYS = {
    "range_feature": ("int64", -1, False), "range_bin": ("int32", -1, False), "range_slot": ("int32", -1, False),
    "range_sample": ("int64", -1, False), "range_value": ("float32", np.nan, False),
    "range_position": ("int32", -1, False), "range_window_tokens": ("int32", -1, True),
    "range_window_acts": ("float32", np.nan, True),
}


def range_layout(counts, cap: int = RANGE_EXAMPLE_CHUNK) -> tuple[int, np.ndarray, int]:
    """Chunk, per-block first row and total rows of the ``range_example`` arrays from the
    blocks' example counts (O(blocks), on the client): each block starts on a chunk, so its
    write covers whole chunks that no other block touches."""
    counts = np.asarray(counts, np.int64)
    big = int(counts.max()) if counts.size else 0
    chunk = int(min(cap, 1 << max(0, (max(big, 1) - 1).bit_length())))  # a power of two, <= cap
    rows = -(-counts // chunk) * chunk
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    return chunk, starts, int(rows.sum())


def create_range_examples(out: str, *, n_rows: int, chunk: int, window: int) -> None:
    """Create the ``range_example`` arrays (metadata only; every chunk is written by a block)."""
    import zarr

    g = zarr.open_group(out, mode="r+")
    for name, (dtype, fill, windowed) in RANGE_ARRAYS.items():
        shape, chunks = (n_rows, window) if windowed else (n_rows,), (chunk, window) if windowed else (chunk,)
        dims = (RANGE_DIM, "window") if windowed else (RANGE_DIM,)
        a = g.create_array(name, shape=shape, chunks=chunks, chunk_key_encoding=CHUNK_KEYS, dtype=dtype,
                           fill_value=fill, dimension_names=dims, overwrite=True,
                           config={"write_empty_chunks": True}, compressors=(fast_codec(),))
        a.attrs["coordinates"] = _COORDS


def write_range_examples(out: str, start: int, rows: dict[str, np.ndarray]) -> int:
    """Write one block's range examples (``rows``: every :data:`RANGE_ARRAYS` name, sorted) from
    row ``start`` (a chunk boundary), padded with fill to whole chunks; returns the bytes."""
    import zarr

    n = len(rows["range_feature"])
    if not n:
        return 0
    chunk = writable(out, "range_feature").chunks[0]
    padded = -(-n // chunk) * chunk
    nbytes = 0
    for name, (dtype, fill, _) in RANGE_ARRAYS.items():
        v = np.asarray(rows[name], dtype)
        buf = np.full((padded,) + v.shape[1:], fill, dtype)
        buf[:n] = v
        writable(out, name)[start : start + padded] = buf
        nbytes += buf.nbytes
    return nbytes


def _group(out):
    import zarr

    return out if isinstance(out, zarr.Group) else zarr.open_group(os.fspath(out), mode="r")


def read_range_examples(out, lo: int, hi: int) -> dict[str, np.ndarray]:
    """The range examples of features ``[lo, hi)`` of an output (path or open Zarr group): the
    :data:`RANGE_ARRAYS` rows, sorted by (feature, bin, slot), read as one slice."""
    g = _group(out)
    check_format(g)
    start, count = g["range_start"][lo:hi], g["range_count"][lo:hi]
    live = np.flatnonzero(count)
    if not live.size:
        return {name: g[name][0:0] for name in RANGE_ARRAYS}
    a, b = int(start[live[0]]), int(start[live[-1]] + count[live[-1]])
    rows = {name: g[name][a:b] for name in RANGE_ARRAYS}
    keep = rows["range_feature"] >= 0  # drop the fill rows between blocks
    return {k: v[keep] for k, v in rows.items()}


def dense_range_examples(out, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
    """The range examples of features ``[lo, hi)`` as dense ``(feature, bin, range_slot[, window])``
    arrays (``range_sample``, ``range_value``, ``range_position``, ``range_window_tokens``,
    ``range_window_acts``; fill values in empty slots), as format 2 stored them. Memory grows
    with ``(hi - lo) x bins x range_examples x window``: for small feature ranges."""
    g = _group(out)
    hi = g["range_start"].shape[0] if hi is None else hi
    n_bins, m = g["hist"].shape[1], int(dict(g.attrs)["config"]["range_examples"])
    w = g["window_offset"].shape[0]
    rows = read_range_examples(g, lo, hi)
    where = (rows["range_feature"] - lo, rows["range_bin"], rows["range_slot"])
    out_ = {}
    for name in OUTPUT_VARS:
        dtype, fill, windowed = RANGE_ARRAYS[name]
        a = np.full((hi - lo, n_bins, m) + ((w,) if windowed else ()), fill, dtype)
        a[where] = rows[name]
        out_[name] = a
    return out_


def check_format(g) -> None:
    """Refuse an output of another format version (clear message naming it and the path)."""
    fmt = dict(g.attrs).get("format")
    if fmt != FORMAT:
        raise ValueError(f"extraction output {g.store!s}: format {fmt!r} is not {FORMAT!r} (written by another "
                         "hvrt_dask version; re-run the extraction with this version to read it)")


def block_arrays(stats: dict, lo: int) -> dict[str, np.ndarray]:
    """The per-feature output arrays of one feature block from its merged statistics
    (the examples are written by :func:`write_examples`).

    Raises
    ------
    NonFiniteStatisticError
        A statistic overflowed (a finite activation near the float32 limit).
    """
    b = len(stats["max"])
    for name in ("max", "sum", "sumsq"):
        bad = ~np.isfinite(stats[name])
        if bad.any():
            f = lo + int(np.flatnonzero(bad)[0])
            raise NonFiniteStatisticError(
                f"feature {f}: statistic {name!r} overflowed to {stats[name][f - lo]} ({int(bad.sum())} features "
                "in this block); the activations are too large for float32/float64 statistics")
    return {
        "max_activation": stats["max"].astype(np.float32),
        "n_active_tokens": stats["n_active_tokens"].astype(np.int64),
        "n_active_samples": stats["n_active_samples"].astype(np.int64),
        "density": np.asarray(stats["density"], np.float64), "frequency": np.asarray(stats["frequency"], np.float64),
        "act_sum": stats["sum"], "act_sumsq": stats["sumsq"], "mean": stats["mean"], "std": stats["std"],
        "hist": stats["hist"].astype(np.int64), "dead": stats["dead"], "feature": np.arange(lo, lo + b, dtype=np.int64),
    }


def write_block(out: str, lo: int, arrays: dict[str, np.ndarray]) -> int:
    """Write one feature block's per-feature arrays (:func:`block_arrays`) into features
    ``[lo, lo + width)``; returns the bytes handed to Zarr. The block starts on a feature
    chunk and ends on one or at ``d_sae``, so the write is chunk-aligned."""
    for name, a in arrays.items():
        writable(out, name)[lo : lo + len(a)] = a
    return sum(a.nbytes for a in arrays.values())


_LOCAL = threading.local()
_ARRAYS: dict = {}
_ARRAYS_MAX = 64


def writable(out: str, name: str):
    """Array ``name`` of output ``out`` opened for writing, cached per process while its
    metadata file is unchanged (opening an array reads and parses its metadata: ~1-3 ms, paid
    ~30 times per feature block otherwise). A re-created array (another run, a resume) has a
    new metadata file, so it is opened again. Opened with ``write_empty_chunks`` (no all-fill
    check: the callers write chunks that hold data)."""
    import zarr

    path = os.path.join(out, name)
    st = os.stat(os.path.join(path, "zarr.json"))
    stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
    hit = _ARRAYS.get(path)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    # every write hands Zarr whole chunks holding data (or a block's per-feature values):
    # skip Zarr's all-fill check (slow with NaN fill; a runtime setting, not stored)
    arr = zarr.open_array(path, mode="r+", zarr_format=3).with_config({"write_empty_chunks": True})
    if len(_ARRAYS) >= _ARRAYS_MAX:
        _ARRAYS.pop(next(iter(_ARRAYS)))
    _ARRAYS[path] = (stamp, arr)
    return arr


def _buffers() -> dict:
    """This thread's chunk buffers of :func:`write_examples`, kept all fill between writes and
    reused across blocks: a fresh multi-MB buffer per chunk costs its page faults every time
    (measured: most of the write's own time). A handful of chunk shapes per run, so bounded."""
    if not hasattr(_LOCAL, "buffers"):
        _LOCAL.buffers = {}
    return _LOCAL.buffers


def write_examples(out: str, lo: int, width: int, names: tuple[str, ...], coords: tuple[np.ndarray, ...],
                   values: tuple[np.ndarray, ...]) -> int:
    """Write examples of one feature block into arrays chunked ``(feature, <dim 1>, <whole>...)``;
    returns the bytes handed to Zarr.

    ``coords`` are the examples' indices along the arrays' leading dimensions (block-local
    feature first); ``values[i]`` holds array ``names[i]``'s entries (``[E, *trailing]``).
    Only chunks holding an example are written, so the arrays' bytes on disk follow the
    examples found; every other cell stays unwritten fill. Each write is one whole chunk from
    a C-contiguous buffer of the chunk's shape (the block starts on a feature chunk): Zarr
    then encodes the buffer as it is, where a region spanning several chunks, or a strided
    one, is copied chunk by chunk first (measured 4-5x slower).
    """
    import zarr

    if not len(coords[0]):
        return 0
    arrs = [writable(out, n) for n in names]
    fc, c1 = arrs[0].chunks[:2]
    n1 = arrs[0].shape[1]
    per = -(-n1 // c1)  # chunks along dim 1
    key = (coords[0] // fc) * per + coords[1] // c1  # (feature chunk, dim-1 chunk) of each example
    order = np.argsort(key, kind="stable")
    key = key[order]
    cuts = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    nbytes = 0
    buffers = _buffers()
    for r in range(len(cuts) - 1):
        ck = int(key[cuts[r]])
        sel = order[cuts[r] : cuts[r + 1]]
        f0, a1 = (ck // per) * fc, (ck % per) * c1
        f1, b1 = min(f0 + fc, width), min(a1 + c1, n1)
        idx = (coords[0][sel] - f0, coords[1][sel] - a1, *(c[sel] for c in coords[2:]))
        for arr, v in zip(arrs, values):
            shape = (f1 - f0, b1 - a1) + arr.shape[2:]
            bkey = (shape, np.dtype(arr.dtype).str, repr(arr.fill_value))
            buf = buffers.get(bkey)
            if buf is None:
                buf = buffers[bkey] = np.full(shape, arr.fill_value, arr.dtype)
            try:
                buf[idx] = v[sel]
                arr[lo + f0 : lo + f1, a1:b1] = buf
            finally:
                buf[idx] = arr.fill_value  # back to fill, even on error: the buffer is reused
            nbytes += buf.nbytes
    return nbytes


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
    check_format(_group(out))
    return xr.open_zarr(os.fspath(out))


def read_summary(out: str) -> dict:
    """``batch_size``, ``n_chunks``, ``n_resumed``, ``workers`` and ``timings`` of a finished output."""
    import zarr

    a = dict(zarr.open_group(out, mode="r").attrs)
    s = dict(a["summary"])
    s["timings"] = a.get("timings", {})
    return s
