"""Tables for the HVRT stages: bundled scikit-learn datasets, .npy, CSV, Parquet, Zarr arrays,
and the outputs of earlier expand/reduce stages (read with :func:`hvrt_dask.hvrt.read_output`)."""

from __future__ import annotations

import os
from typing import Any

from hvrt_dask import ownership
from pipelines.schema import ConfigError

HVRT_OUTPUT_KINDS = ("hvrt.expand", "hvrt.reduce")
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".npy", ".zarr")


def data_kind(spec: str) -> str:
    """``"sklearn"``, ``"npy"``, ``"csv"``, ``"parquet"`` or ``"zarr"`` (by prefix, suffix or content)."""
    if spec.startswith("sklearn:"):
        return "sklearn"
    low = spec.lower().rstrip("/")
    if low.endswith(".npy"):
        return "npy"
    if low.endswith((".csv", ".csv.gz")):
        return "csv"
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    if os.path.isdir(spec) and not os.path.exists(os.path.join(spec, "zarr.json")) \
            and any(n.endswith((".parquet", ".pq")) for n in os.listdir(spec)):
        return "parquet"  # a directory of Parquet files (a dataset)
    return "zarr"


def check_data(spec: str) -> None:
    """Raise :class:`ConfigError`-ready ``ValueError``/``FileNotFoundError`` for unusable data."""
    kind = data_kind(spec)
    if kind == "sklearn":
        import sklearn.datasets

        name = spec.split(":", 1)[1]
        if not name.startswith("load_") or not callable(getattr(sklearn.datasets, name, None)):
            raise ValueError(f"{spec!r} is not a bundled scikit-learn dataset loader (sklearn:load_*)")
        return
    if not os.path.exists(spec):
        raise FileNotFoundError(f"{spec!r} does not exist")
    if hvrt_output(spec):
        ownership.require_complete(spec, "hvrt_dask output")  # refuses a half-written one
        return
    if kind == "zarr" and not os.path.exists(os.path.join(spec, "zarr.json")) \
            and not os.path.exists(os.path.join(spec, ".zarray")):
        raise ValueError(f"{spec!r} is not a table this stage reads (sklearn:<loader>, .npy, .csv,"
                         " .parquet or a Zarr array)")


def hvrt_output(spec: str) -> bool:
    """True when ``spec`` is an ``expand``/``reduce`` output (Zarr group or Parquet dataset)."""
    owner = ownership.read_owner(spec) if os.path.isdir(spec) else None
    return owner is not None and owner.get("kind") in HVRT_OUTPUT_KINDS


def load_data(spec: str, persist: bool = False) -> Any:
    """Open the ``data`` of an expand/reduce config.

    ``sklearn:<loader>`` (a dataset bundled with scikit-learn), a ``.npy`` file, a CSV or
    Parquet table (file, glob or Parquet dataset directory; read lazily with
    ``dask.dataframe``), or a Zarr array path (passed to ``HVRT.fit`` as is, or opened as a
    dask array and persisted on the cluster with ``persist``).
    """
    try:
        check_data(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"data: {exc}") from None
    if hvrt_output(spec):  # names, dtypes and categories restored; lazily, one partition per chunk
        from hvrt_dask.hvrt import read_output

        df = read_output(spec, lazy=True)
        return df.persist() if persist else df
    kind = data_kind(spec)
    if kind == "sklearn":
        import sklearn.datasets

        return getattr(sklearn.datasets, spec.split(":", 1)[1])(as_frame=True).data
    if kind == "npy":
        import numpy as np

        return np.load(spec, mmap_mode="r")
    if kind in ("csv", "parquet"):
        import dask.dataframe as dd

        df = dd.read_csv(spec) if kind == "csv" else dd.read_parquet(spec)
        return df.persist() if persist else df
    if persist:
        import dask.array as da

        return da.from_zarr(spec).persist()
    return spec
