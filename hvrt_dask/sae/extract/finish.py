"""Per-block finish task: a block's merged partial and window results become its region of
the output, written by the worker (the client never holds the result)."""

from __future__ import annotations

import numpy as np

from hvrt_dask.sae import stats as _stats
from hvrt_dask.sae import topk as _topk
from hvrt_dask.sae.extract import checkpoint as ckpt
from hvrt_dask.sae.extract.params import Block, RunSpec
from hvrt_dask.sae.output import block_arrays, write_block


def block_examples(root) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` and ``positions`` ``[width, <=top_k]`` of a block's merged partial (read
    from its file without the rest of the partial)."""
    if isinstance(root, dict) and "ref" in root:
        with np.load(root["ref"], allow_pickle=False) as z:
            return z["samples"], z["positions"]
    return root["samples"], root["positions"]


def finish_block(run: RunSpec, block: Block, root, *windows: dict) -> dict:
    """Write block ``block``'s features of the output; returns the block's run metadata."""
    part = ckpt.resolve(root)
    top = _topk.aggregate({k: part[k] for k in _topk.KEYS})
    stats = _stats.aggregate({k: part[k] for k in ("max", *_stats.SUM_KEYS)})
    arrays = block_arrays(top, stats, block.lo, run.top_k)
    if windows:
        slots = np.concatenate([w["slots"] for w in windows])
        order = np.argsort(slots, kind="stable")
        slots = slots[order]
        toks = np.concatenate([w["tokens"] for w in windows])[order]
        acts = np.concatenate([w["acts"] for w in windows])[order]
    else:
        slots, toks, acts = np.zeros(0, np.int64), np.zeros((0, run.window), np.int32), np.zeros((0, run.window), np.float32)
    nbytes = write_block(run.out, block.lo, arrays, slots, toks, acts, run.top_k)
    return {
        "workers": [str(x) for x in part["workers"]],
        "batch_size": int(part["batch_size"]),
        "seconds": float(part["seconds"]),
        "read_seconds": float(part["read_seconds"]),
        "n_nonfinite_masked": int(part["n_nonfinite_masked"]),
        "n_valid_tokens": int(part["n_valid_tokens"]),
        "n_samples": int(part["n_samples"]),
        "n_examples": int((top["samples"] >= 0).sum()),
        "bytes": nbytes,
    }
