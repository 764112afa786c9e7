"""Checkpoint I/O under ``<out>/partials/``: chunk partials with done markers, tree nodes,
topk token thresholds and the run record, all written atomically.

Each chunk partial records the fingerprint of the store chunks it was computed from
(:meth:`~hvrt_dask.sae.store.ActivationStore.fingerprint`), so a resume can refuse partials
of a store that was rewritten since.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from hvrt_dask import ownership
from hvrt_dask.sae import range_examples as _rx
from hvrt_dask.sae import topk as _topk

PARTIALS = "partials"
RUN_FILE = "run.json"
#: Layout of the partial files (sparse top-k slots and range examples since 2): recorded in
#: ``run.json``, so that an interrupted run of an older layout is refused, not misread.
PARTIALS_FORMAT = 2


def partial_path(partials_dir: str, cid: int, j: int) -> tuple[str, str]:
    """Files of the partial of (chunk ``cid``, block ``j``): data and done marker."""
    base = os.path.join(partials_dir, f"chunk-{cid:07d}-block-{j:05d}")
    return base + ".npz", base + ".done"


def threshold_path(partials_dir: str, cid: int) -> tuple[str, str]:
    """Files of chunk ``cid``'s topk token thresholds: data and done marker."""
    base = os.path.join(partials_dir, f"thresholds-{cid:07d}")
    return base + ".npy", base + ".done"


def node_path(partials_dir: str, j: int, level: int, idx: int) -> str:
    """A tree node of block ``j``'s reduction."""
    return os.path.join(partials_dir, f"node-{j:05d}-{level:02d}-{idx:07d}.npz")


def _tmp(fn: str) -> str:
    return f"{fn}.tmp-{os.getpid()}-{threading.get_ident()}"


#: Partial arrays stored sparse (most features fire in few histogram bins). The top-k arrays are
#: stored as their live slots (``topk.shape`` / ``topk.index``), the range examples in
#: :func:`hvrt_dask.sae.range_examples.sparsify`'s form, which is also the form they are merged in.
#: All exact: empty slots are fill.
SPARSE = ("hist",)
TOPK_SHAPE, TOPK_INDEX = "topk.shape", "topk.index"


def save_npz(fn: str, partial: dict) -> dict:
    """Write a partial atomically; returns its handle ``{"ref": fn}``."""
    tmp = _tmp(fn) + ".npz"
    arrays = dict(partial)
    for key in SPARSE:
        if key in arrays:
            a = arrays.pop(key)
            nz = np.flatnonzero(a)
            arrays.update({f"{key}.shape": np.array(a.shape, np.int64), f"{key}.index": nz, f"{key}.value": a.reshape(-1)[nz]})
    if "samples" in arrays and arrays["samples"].ndim == 2:  # top-k: only the live slots
        live = np.flatnonzero(arrays["samples"].reshape(-1) >= 0)
        arrays[TOPK_SHAPE] = np.array(arrays["samples"].shape, np.int64)
        arrays[TOPK_INDEX] = live
        for key in _topk.KEYS:
            arrays[key] = arrays[key].reshape(-1)[live]
    if _rx.KEYS[0] in arrays:
        arrays.update(_rx.sparsify({k: arrays.pop(k) for k in (*_rx.KEYS, _rx.SPARSE_SHAPE, _rx.SPARSE_INDEX)
                                    if k in arrays}))
    np.savez(tmp, **arrays)
    os.replace(tmp, fn)
    return {"ref": fn}


def save_done(done: str, info: dict) -> None:
    """The done marker (after the data it marks)."""
    tmp = _tmp(done)
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, done)


def read_done(done: str) -> dict | None:
    """A done marker's record, or None when absent/unreadable."""
    return ownership.read_json(done)


def save_partial(partials_dir: str, cid: int, j: int, partial: dict, fingerprint: str) -> dict:
    """Write a chunk partial atomically, then its done marker (with the chunk's fingerprint)."""
    fn, done = partial_path(partials_dir, cid, j)
    ref = save_npz(fn, partial)
    save_done(done, {"chunk": cid, "block": j, "worker": str(partial["workers"][0]), "fingerprint": fingerprint})
    return ref


def save_thresholds(partials_dir: str, cid: int, keys: np.ndarray, fingerprint: str) -> dict:
    """Write chunk ``cid``'s token thresholds (int64 ``[S, T]``), then their done marker."""
    fn, done = threshold_path(partials_dir, cid)
    tmp = _tmp(fn) + ".npy"
    np.save(tmp, keys)
    os.replace(tmp, fn)
    save_done(done, {"chunk": cid, "fingerprint": fingerprint})
    return {"ref": fn}


def resumable(done: str, data: str, fingerprint: str) -> bool:
    """Whether a checkpoint exists and was computed from the same store chunks."""
    rec = read_done(done)
    return rec is not None and os.path.exists(data) and rec.get("fingerprint") == fingerprint


def load_partial(path: str) -> dict:
    """Read a partial written by :func:`save_npz` (range examples stay in the sparse form)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    for key in SPARSE:
        if f"{key}.shape" in out:
            shape, nz, val = out.pop(f"{key}.shape"), out.pop(f"{key}.index"), out.pop(f"{key}.value")
            a = np.zeros(int(np.prod(shape)), val.dtype)
            a[nz] = val
            out[key] = a.reshape(tuple(shape))
    if TOPK_SHAPE in out:
        shape, live = tuple(int(x) for x in out.pop(TOPK_SHAPE)), out.pop(TOPK_INDEX)
        full = _topk.empty(*shape)
        for key in _topk.KEYS:
            full[key].reshape(-1)[live] = out[key]
        out.update(full)
    return out


def resolve(part: dict) -> dict:
    """A partial from a partial or a handle ``{"ref": path}``."""
    return load_partial(part["ref"]) if "ref" in part else part


def load_thresholds(handle) -> np.ndarray | None:
    """Token thresholds from a handle (None passes through)."""
    if handle is None:
        return None
    return np.load(handle["ref"]) if isinstance(handle, dict) else handle


def write_run(out: str, info: dict) -> None:
    fn = os.path.join(out, PARTIALS, RUN_FILE)
    tmp = fn + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, fn)


def read_run(out: str) -> dict | None:
    """The run record of an interrupted run in ``out`` (None when there is none)."""
    return read_done(os.path.join(out, PARTIALS, RUN_FILE))


def remove_partials(out: str, kind: str) -> None:
    """Delete the checkpoints this module wrote under ``out`` (known names only), then the
    folder if empty. Refuses unless ``out`` carries our ownership marker of ``kind`` and the
    partials folder, symlinks resolved, lies directly inside it."""
    out_r = ownership.resolve(out)
    partials_dir = ownership.resolve(os.path.join(out, PARTIALS))
    if not ownership.owned_by(out_r, kind) or os.path.dirname(partials_dir) != out_r:
        raise ownership.OwnershipError(f"refusing to delete checkpoints in {partials_dir!r}: not inside an output "
                                       f"that hvrt_dask wrote as {kind!r}")
    if not os.path.isdir(partials_dir):
        return
    for name in os.listdir(partials_dir):
        if name.startswith(("chunk-", "node-", "thresholds-")) or name == RUN_FILE:
            os.unlink(os.path.join(partials_dir, name))
    if not os.listdir(partials_dir):
        os.rmdir(partials_dir)
