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
=====================  ==========================  ==============================================

Coordinates ``feature``, ``rank``, ``window_offset`` (window, -prefix..suffix), ``bin_lower`` /
``bin_upper`` (bin). Attributes (JSON): ``store``, ``sae`` (path, hash, architecture, ...),
``config``, ``batch_size``, ``versions``, ``timings``, ``n_valid_tokens``, ``n_samples``,
``complete`` (written last, True only when the whole output is there).
"""

from __future__ import annotations

import json
import os
import platform
import time
import warnings
from typing import Any

import numpy as np

from hvrt_dask.sae.codecs import fast_codec
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


def write_output(
    out: str,
    *,
    topk: dict,
    stats: dict,
    edges: np.ndarray,
    window_tokens: np.ndarray,
    window_acts: np.ndarray,
    prefix: int,
    suffix: int,
    store,
    sae,
    run_info: dict,
    summary: dict,
    timings_start: float,
    timings: dict,
    feature_chunk: int = 1024,
) -> dict:
    """Write the dataset, then the completion marker (last), then consolidated metadata.

    Returns ``timings`` with ``write_s`` and ``total_s`` added (as recorded in the attributes).
    """
    import xarray as xr
    import zarr

    d_sae, k = topk["values"].shape
    lower, upper = bin_bounds(edges)
    fdims = ("feature",)
    ds = xr.Dataset(
        {
            "topk_value": (("feature", "rank"), topk["values"]),
            "topk_sample": (("feature", "rank"), topk["samples"]),
            "topk_position": (("feature", "rank"), topk["positions"]),
            "window_tokens": (("feature", "rank", "window"), window_tokens),
            "window_acts": (("feature", "rank", "window"), window_acts),
            "max_activation": (fdims, stats["max"].astype(np.float32)),
            "n_active_tokens": (fdims, stats["n_active_tokens"].astype(np.int64)),
            "n_active_samples": (fdims, stats["n_active_samples"].astype(np.int64)),
            "density": (fdims, np.asarray(stats["density"], np.float64)),
            "frequency": (fdims, np.asarray(stats["frequency"], np.float64)),
            "act_sum": (fdims, stats["sum"]),
            "act_sumsq": (fdims, stats["sumsq"]),
            "mean": (fdims, stats["mean"]),
            "std": (fdims, stats["std"]),
            "hist": (("feature", "bin"), stats["hist"].astype(np.int64)),
            "dead": (fdims, stats["dead"]),
        },
        coords={
            "feature": np.arange(d_sae),
            "rank": np.arange(k),
            "window_offset": ("window", np.arange(-prefix, suffix + 1)),
            "bin_lower": ("bin", lower),
            "bin_upper": ("bin", upper),
        },
    )
    timings = dict(timings)
    attrs = {
        "format": "hvrt_dask.sae_features/1",
        "store": {"path": os.path.abspath(store.path), "n_samples": store.n_samples, "seq_len": store.seq_len,
                  "d_in": store.d_in, "dtype": str(store.dtype),
                  **{k2: store.attrs.get(k2) for k2 in ("model", "layer", "hook", "tokenizer")}},
        "sae": sae.describe(),
        "config": run_info,
        "batch_size": summary["batch_size"],
        "summary": summary,
        "n_valid_tokens": int(stats["n_valid_tokens"]),
        "n_samples": int(stats["n_samples"]),
        "histogram": "log10-spaced inner edges fixed from config before the pass; bin i = (bin_lower, bin_upper]",
        "pad_marker": -1,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    fc = min(feature_chunk, d_sae)
    encoding = {name: {"chunks": (fc,) + v.shape[1:]} for name, v in ds.data_vars.items()}
    for name in ("window_tokens", "window_acts"):  # the two large arrays (d_sae x top_k x window)
        encoding[name]["compressors"] = (fast_codec(),)
    t0 = time.perf_counter()
    ds.attrs = {**attrs, "complete": False, "timings": _jsonable(timings)}
    # whole-array numpy writes: no partial-chunk races
    _write_fresh(ds, out, encoding)
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - timings_start
    g = zarr.open_group(out, mode="r+")
    g.attrs.update({"timings": _jsonable(timings)})
    g.attrs["complete"] = True  # the completion marker, written last
    with warnings.catch_warnings():
        # partials/ holds numpy files (not Zarr nodes); consolidated metadata is a v3 extension
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(out)
    return timings


def _write_fresh(ds, out: str, encoding: dict) -> None:
    """(Re)write the dataset arrays into ``out`` (the partials/ area is left alone)."""
    import shutil

    for name in os.listdir(out):
        if name != "partials":
            p = os.path.join(out, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # partials/ is not a Zarr node
        ds.to_zarr(out, mode="a", encoding=encoding, consolidated=False, zarr_format=3)


def is_complete(out: str | os.PathLike) -> bool:
    """True when ``out`` is a finished extraction output (its completion marker is set)."""
    fn = os.path.join(os.fspath(out), "zarr.json")
    if not os.path.exists(fn):
        return False
    with open(fn) as f:
        meta = json.load(f)
    return bool((meta.get("attributes") or {}).get("complete", False))


def open_output(out: str | os.PathLike):
    """Open a complete extraction output as an :class:`xarray.Dataset`.

    Raises
    ------
    ValueError
        When the output is incomplete (interrupted run or still being written).
    """
    import xarray as xr

    out = os.fspath(out)
    if not is_complete(out):
        raise ValueError(f"extraction output {out!r} is incomplete (no completion marker); resume the run")
    return xr.open_zarr(out)


def read_summary(out: str) -> dict:
    """``batch_size``, ``n_chunks``, ``n_resumed``, ``workers`` and ``timings`` of a finished output."""
    import zarr

    a = dict(zarr.open_group(out, mode="r").attrs)
    s = dict(a["summary"])
    s["timings"] = a.get("timings", {})
    return s
