"""The activation store: the input contract of extraction and the output of capture.

A Zarr v3 group with

``activations``  float16 or float32, shape ``(n_samples, seq_len, d_in)``
``tokens``       int32, shape ``(n_samples, seq_len)``: token ids
``mask``         bool, shape ``(n_samples, seq_len)``: True where the token is valid
                 (padding is False and never counts)
``done``         bool, shape ``(n_chunks,)``: the writer's per-chunk marker
``checksum``     uint64, shape ``(n_chunks,)``: the writer's checksum of each chunk
                 (:func:`chunk_checksum`; 0 = not recorded yet)

(``activations`` written with byte-shuffled LZ4, :func:`~hvrt_dask.sae.codecs.fast_codec`;
any codec Zarr reads is accepted), all chunked along samples only and alike (one chunk =
``chunk_samples`` whole samples), and group attributes

``format``     ``"hvrt_dask.activations/2"`` (exactly; version 2 added ``checksum``)
``model``      model name or directory;   ``layer`` int;   ``hook`` str (e.g. ``"resid_post"``)
``tokenizer``  tokenizer directory (or null);  ``d_in``, ``seq_len``, ``dtype``
``complete``   the boolean True, written last by writers; a store without it is still being
               written.

Dtypes are exactly as listed (no silent casts: float token ids or int64 ids are refused).
Writers create the arrays up front and then write whole chunks only (partial-chunk writes
from parallel tasks race in Zarr), recording each finished chunk's checksum and marking it in
``done`` so an interrupted capture resumes. :func:`mark_complete` refuses a store with a chunk
not done, records the checksums still missing, then writes the completion marker. Readers
verify a chunk against its checksum (:func:`read_chunk`): a deleted or rewritten chunk file
is an error naming the chunk, never zeros.

Stores are hvrt_dask outputs of kind ``"sae.activations"`` (:mod:`hvrt_dask.ownership`):
``create_store`` claims the path first and replaces only a store it wrote.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import hashlib

import numpy as np
import zarr

from hvrt_dask import ownership
from hvrt_dask.sae.codecs import fast_codec

FORMAT = "hvrt_dask.activations/2"
KIND = "sae.activations"  # ownership kind
REQUIRED = ("activations", "tokens", "mask", "done", "checksum")
DTYPES = {"tokens": np.dtype("int32"), "mask": np.dtype("bool"), "done": np.dtype("bool"), "checksum": np.dtype("uint64")}


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

    @property
    def checksums(self) -> np.ndarray:
        """The writer's per-chunk checksums (uint64; 0 where not recorded)."""
        return np.asarray(self.group["checksum"][:], np.uint64)

    def fingerprint(self, start: int = 0, stop: int | None = None) -> str:
        """Digest of the checksums (and bounds) of the store chunks covering samples ``[start, stop)``.

        Changes whenever one of those chunks was rewritten; cheap (metadata only).
        """
        stop = self.n_samples if stop is None else stop
        lo, hi = start // self.chunk_samples, -(-stop // self.chunk_samples)
        h = hashlib.blake2b(digest_size=16)
        h.update(np.array([self.n_samples, self.seq_len, self.d_in, self.chunk_samples, lo, hi], np.int64).tobytes())
        h.update(self.checksums[lo:hi].tobytes())
        return h.hexdigest()


class ChunkReadError(StoreError):
    """A chunk of the activation store could not be read or does not match its checksum (message names the chunk)."""


def chunk_checksum(acts: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> int:
    """Checksum (nonzero uint64) of one chunk's activations, token ids and mask, as stored."""
    h = hashlib.blake2b(digest_size=8)
    for a in (acts, tokens, mask):
        h.update(np.ascontiguousarray(a).tobytes())
    return int.from_bytes(h.digest(), "little") or 1


def write_chunk(group: Any, i: int, acts: np.ndarray, tokens: np.ndarray, mask: np.ndarray) -> int:
    """Write chunk ``i`` whole (activations cast to the store dtype) and return its checksum.

    The caller records the checksum and the ``done`` marker (one writer for those arrays).
    """
    cs = group["activations"].chunks[0]
    start = i * cs
    acts = np.asarray(acts).astype(group["activations"].dtype, copy=False)
    tokens, mask = np.asarray(tokens, np.int32), np.asarray(mask, bool)
    stop = start + len(tokens)
    group["activations"][start:stop] = acts
    group["tokens"][start:stop] = tokens
    group["mask"][start:stop] = mask
    return chunk_checksum(acts, tokens, mask)


def read_chunk(st: ActivationStore, i: int, verify: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations, token ids and mask of store chunk ``i``, checked against its checksum.

    Raises
    ------
    ChunkReadError
        The chunk cannot be decoded, or its data do not match the writer's checksum (a
        deleted chunk file reads as fill values and fails here).
    """
    a, b = st.chunk_bounds(i)
    try:
        acts = st.activations[a:b]
        tokens = st.tokens[a:b]
        mask = st.mask[a:b]
    except Exception as exc:
        raise ChunkReadError(f"chunk {i} (samples {a}..{b - 1}) of activation store {st.path!r} could not be read: "
                             f"{type(exc).__name__}: {exc}") from exc
    if verify:
        want = int(st.group["checksum"][i])
        got = chunk_checksum(acts, tokens, mask)
        if want != got:
            raise ChunkReadError(
                f"chunk {i} (samples {a}..{b - 1}) of activation store {st.path!r} does not match the checksum its "
                f"writer recorded ({got:#018x} != {want:#018x}): a chunk file was deleted or rewritten after the "
                "store was completed; recapture the store")
    return acts, tokens, mask


def create_store(
    path: str | os.PathLike,
    n_samples: int,
    seq_len: int,
    d_in: int,
    chunk_samples: int,
    dtype: str | np.dtype = "float16",
    attrs: dict | None = None,
    overwrite: bool = False,
    inputs: tuple = (),
) -> Any:
    """Create an empty activation store (arrays allocated, ``complete`` False); returns the group.

    ``path`` must be absent, an empty directory or (with ``overwrite``) a store created
    here; it may not equal, contain or lie inside one of ``inputs``. The ownership marker is
    written first.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    hvrt_dask.ownership.OwnershipError
        ``path`` holds data hvrt_dask did not write (nothing is deleted), or overlaps an input.
    """
    path = os.fspath(path)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype("float16"), np.dtype("float32")):
        raise ValueError(f"activation dtype must be float16 or float32, got {dtype}")
    for name, v in (("n_samples", n_samples), ("seq_len", seq_len), ("d_in", d_in), ("chunk_samples", chunk_samples)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "n_samples" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'n_samples' else 'positive'} integer, got {v!r}")
    ownership.check_output_path(path, KIND, inputs=inputs)
    if os.path.exists(path) and os.listdir(path):
        if not overwrite:
            raise FileExistsError(f"activation store {path!r} already exists (pass overwrite=True to replace it)")
        ownership.clear(path, KIND)
    ownership.claim(path, KIND)
    g = zarr.open_group(path, mode="a", zarr_format=3)
    cs = int(max(1, min(chunk_samples, n_samples)))
    n_chunks = -(-n_samples // cs)
    g.create_array("activations", shape=(n_samples, seq_len, d_in), chunks=(cs, seq_len, d_in), dtype=dtype,
                   fill_value=0, compressors=(fast_codec(),))
    g.create_array("tokens", shape=(n_samples, seq_len), chunks=(cs, seq_len), dtype="int32", fill_value=0)
    g.create_array("mask", shape=(n_samples, seq_len), chunks=(cs, seq_len), dtype="bool", fill_value=False)
    g.create_array("done", shape=(n_chunks,), chunks=(max(1, n_chunks),), dtype="bool", fill_value=False)
    g.create_array("checksum", shape=(n_chunks,), chunks=(max(1, n_chunks),), dtype="uint64", fill_value=0)
    meta = {"format": FORMAT, "d_in": int(d_in), "seq_len": int(seq_len), "dtype": str(dtype), "complete": False}
    meta.update(attrs or {})
    g.attrs.update(meta)
    return g


def mark_complete(path: str | os.PathLike) -> None:
    """Finish a store (the writer's last step): every chunk must be done; checksums not yet
    recorded are computed from the data; then the completion marker.

    Raises
    ------
    StoreError
        A chunk is not marked done (names it).
    """
    path = os.fspath(path)
    g = zarr.open_group(path, mode="r+")
    done = np.asarray(g["done"][:], bool)
    if not done.all():
        missing = np.flatnonzero(~done)
        raise StoreError(f"activation store {path!r}: chunk {int(missing[0])} is not done ({len(missing)} chunks "
                         "not written); finish writing the store before marking it complete")
    sums = np.asarray(g["checksum"][:], np.uint64)
    cs = g["activations"].chunks[0]
    n = g["activations"].shape[0]
    for i in np.flatnonzero(sums == 0):
        a, b = int(i) * cs, min((int(i) + 1) * cs, n)
        sums[i] = chunk_checksum(g["activations"][a:b], g["tokens"][a:b], g["mask"][a:b])
    g["checksum"][:] = sums
    g.attrs["complete"] = True
    if ownership.read_owner(path) is not None:
        ownership.mark_complete(path)


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
    attrs = dict(g.attrs)
    fmt = attrs.get("format")
    if fmt != FORMAT:
        raise StoreError(f"activation store {path!r}: attribute 'format' is {fmt!r}, expected {FORMAT!r}"
                         + (" (version 1 stores lack per-chunk checksums; recapture the store)"
                            if fmt == "hvrt_dask.activations/1" else ""))
    for name in REQUIRED:
        if name not in g:
            raise StoreError(f"activation store {path!r} has no {name!r} array")
    acts, toks = g["activations"], g["tokens"]
    if acts.ndim != 3:
        raise StoreError(f"{path!r}: 'activations' must be (n_samples, seq_len, d_in), got shape {acts.shape}")
    if acts.dtype not in (np.dtype("float16"), np.dtype("float32")):
        raise StoreError(f"{path!r}: 'activations' dtype {acts.dtype} unsupported (float16/float32)")
    for name, want in DTYPES.items():
        if g[name].dtype != want:
            raise StoreError(f"{path!r}: {name!r} has dtype {g[name].dtype}, the contract requires {want} (no casts)")
    for name in ("tokens", "mask"):
        if g[name].shape != acts.shape[:2]:
            raise StoreError(f"{path!r}: {name!r} shape {g[name].shape} does not match activations {acts.shape[:2]}")
    if acts.chunks[1:] != acts.shape[1:]:
        raise StoreError(f"{path!r}: activations must be chunked along samples only, got chunks {acts.chunks}")
    cs = int(acts.chunks[0])
    for name in ("tokens", "mask"):
        if tuple(g[name].chunks) != (cs, acts.shape[1]):
            raise StoreError(f"{path!r}: {name!r} chunks {g[name].chunks} differ from the activations' ({cs}, {acts.shape[1]})")
    n_chunks = -(-int(acts.shape[0]) // cs)
    for name in ("done", "checksum"):
        if g[name].shape != (n_chunks,):
            raise StoreError(f"{path!r}: {name!r} has shape {g[name].shape}, expected ({n_chunks},) (one entry per chunk)")
    if require_complete:
        if attrs.get("complete") is not True:
            raise StoreError(f"activation store {path!r} is incomplete (attribute 'complete' is {attrs.get('complete')!r}, "
                             "not the boolean True)")
        done = np.asarray(g["done"][:], bool)
        if not done.all():
            raise StoreError(f"activation store {path!r}: chunk {int(np.flatnonzero(~done)[0])} is not marked done "
                             "although the store is marked complete")
        if (np.asarray(g["checksum"][:]) == 0).any():
            raise StoreError(f"activation store {path!r}: chunk {int(np.flatnonzero(np.asarray(g['checksum'][:]) == 0)[0])} "
                             "has no recorded checksum")
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
