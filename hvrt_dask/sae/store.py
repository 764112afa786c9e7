"""The activation store: the input contract of extraction and the output of capture.

A Zarr v3 group with

``activations``  float16 or float32, shape ``(n_samples, seq_len, d_in)``
``tokens``       int32, shape ``(n_samples, seq_len)``: token ids
``mask``         bool, shape ``(n_samples, seq_len)``: True where the token is valid
                 (padding is False and never counts)

(``activations`` written with byte-shuffled LZ4, :func:`~hvrt_dask.sae.codecs.fast_codec`;
any codec Zarr reads is accepted), all chunked along samples only (one chunk = ``chunk_samples`` whole samples), and group
attributes

``format``     ``"hvrt_dask.activations/1"``
``model``      model name or directory;   ``layer`` int;   ``hook`` str (e.g. ``"resid_post"``)
``tokenizer``  tokenizer directory (or null);  ``d_in``, ``seq_len``, ``dtype``
``complete``   True, written last by writers; a store without it is still being written.

Writers create the arrays up front and then write whole chunks only (partial-chunk writes
from parallel tasks race in Zarr), marking each finished chunk in ``done`` (bool, one entry
per chunk) so an interrupted capture resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from hvrt_dask.sae.codecs import fast_codec

FORMAT = "hvrt_dask.activations/1"
REQUIRED = ("activations", "tokens", "mask")


class StoreError(ValueError):
    """The activation store is missing, malformed or incomplete (message names what)."""


@dataclass(frozen=True)
class ActivationStore:
    """An opened, validated activation store."""

    path: str
    group: Any
    n_samples: int
    seq_len: int
    d_in: int
    chunk_samples: int
    dtype: np.dtype
    attrs: dict

    @property
    def activations(self) -> Any:
        return self.group["activations"]

    @property
    def tokens(self) -> Any:
        return self.group["tokens"]

    @property
    def mask(self) -> Any:
        return self.group["mask"]

    @property
    def n_chunks(self) -> int:
        return -(-self.n_samples // self.chunk_samples)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        """Sample range ``[start, stop)`` of chunk ``i``."""
        start = i * self.chunk_samples
        return start, min(start + self.chunk_samples, self.n_samples)


def create_store(
    path: str | os.PathLike,
    n_samples: int,
    seq_len: int,
    d_in: int,
    chunk_samples: int,
    dtype: str | np.dtype = "float16",
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Any:
    """Create an empty activation store (arrays allocated, ``complete`` False); returns the group."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"activation store {path!r} already exists (pass overwrite=True)")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype("float16"), np.dtype("float32")):
        raise ValueError(f"activation dtype must be float16 or float32, got {dtype}")
    g = zarr.open_group(path, mode="w" if overwrite else "w-", zarr_format=3)
    cs = int(max(1, min(chunk_samples, n_samples)))
    g.create_array("activations", shape=(n_samples, seq_len, d_in), chunks=(cs, seq_len, d_in), dtype=dtype,
                   fill_value=0, compressors=(fast_codec(),))
    g.create_array("tokens", shape=(n_samples, seq_len), chunks=(cs, seq_len), dtype="int32", fill_value=0)
    g.create_array("mask", shape=(n_samples, seq_len), chunks=(cs, seq_len), dtype="bool", fill_value=False)
    g.create_array("done", shape=(-(-n_samples // cs),), chunks=(-(-n_samples // cs),), dtype="bool", fill_value=False)
    meta = {"format": FORMAT, "d_in": int(d_in), "seq_len": int(seq_len), "dtype": str(dtype), "complete": False}
    meta.update(attrs or {})
    g.attrs.update(meta)
    return g


def mark_complete(path: str | os.PathLike) -> None:
    """Write the completion marker (last step of a writer)."""
    g = zarr.open_group(os.fspath(path), mode="r+")
    g.attrs["complete"] = True


def open_store(path: str | os.PathLike, require_complete: bool = True) -> ActivationStore:
    """Open and validate an activation store.

    Raises
    ------
    StoreError
        Naming the missing array, the mismatched shape or the missing completion marker.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise StoreError(f"activation store {path!r} does not exist")
    try:
        g = zarr.open_group(path, mode="r")
    except Exception as exc:  # not a zarr group at all
        raise StoreError(f"{path!r} is not a Zarr group: {exc}") from exc
    for name in ("activations", "tokens"):
        if name not in g:
            raise StoreError(f"activation store {path!r} has no {name!r} array")
    acts, toks = g["activations"], g["tokens"]
    if acts.ndim != 3:
        raise StoreError(f"{path!r}: 'activations' must be (n_samples, seq_len, d_in), got shape {acts.shape}")
    if toks.shape != acts.shape[:2]:
        raise StoreError(f"{path!r}: 'tokens' shape {toks.shape} does not match activations {acts.shape[:2]}")
    if "mask" in g and g["mask"].shape != acts.shape[:2]:
        raise StoreError(f"{path!r}: 'mask' shape {g['mask'].shape} does not match activations {acts.shape[:2]}")
    if "mask" not in g:
        raise StoreError(f"activation store {path!r} has no 'mask' array (validity mask)")
    if acts.dtype not in (np.dtype("float16"), np.dtype("float32")):
        raise StoreError(f"{path!r}: activations dtype {acts.dtype} unsupported (float16/float32)")
    if acts.chunks[1:] != acts.shape[1:]:
        raise StoreError(f"{path!r}: activations must be chunked along samples only, got chunks {acts.chunks}")
    attrs = dict(g.attrs)
    if require_complete and not attrs.get("complete", False):
        raise StoreError(f"activation store {path!r} is incomplete (no completion marker)")
    return ActivationStore(
        path=path,
        group=g,
        n_samples=int(acts.shape[0]),
        seq_len=int(acts.shape[1]),
        d_in=int(acts.shape[2]),
        chunk_samples=int(acts.chunks[0]),
        dtype=np.dtype(acts.dtype),
        attrs=attrs,
    )
