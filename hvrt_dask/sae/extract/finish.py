"""Per-block finish task: a block's merged partial and window results become its region of
the output, written by the worker (the client never holds the result)."""

from __future__ import annotations

import numpy as np

from hvrt_dask.sae import stats as _stats
from hvrt_dask.sae import topk as _topk
from hvrt_dask.sae.extract import checkpoint as ckpt
from hvrt_dask.sae.extract.params import Block, RunSpec
from hvrt_dask.sae.output import block_arrays, write_region


def block_examples(root) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` and ``positions`` ``[width, <=top_k]`` of a block's merged partial (read
    from its file without the rest of the partial)."""
    if isinstance(root, dict) and "ref" in root:
        with np.load(root["ref"], allow_pickle=False) as z:
            return z["samples"], z["positions"]
    return root["samples"], root["positions"]


def finish_block(run: RunSpec, block: Block, root, *windows: dict) -> dict:
    """Write block ``block``'s features of the output; returns the block's run metadata."""
    import zarr

    part = ckpt.resolve(root)
    top = _topk.aggregate({k: part[k] for k in _topk.KEYS})
    stats = _stats.aggregate({k: part[k] for k in ("max", *_stats.SUM_KEYS)})
    k = run.top_k
    if windows:
        slots = np.concatenate([w["slots"] for w in windows])
        order = np.argsort(slots, kind="stable")
        slots = slots[order]
        toks = np.concatenate([w["tokens"] for w in windows])[order]
        acts = np.concatenate([w["acts"] for w in windows])[order]
    else:
        slots, toks, acts = np.zeros(0, np.int64), np.zeros((0, run.window), np.int32), np.zeros((0, run.window), np.float32)
    # one output chunk of features at a time: memory holds the windows found plus one chunk
    fc = zarr.open_group(run.out, mode="r")["topk_value"].chunks[0]
    nbytes = 0
    for a in range(0, block.width, fc):
        b = min(a + fc, block.width)
        i, e = np.searchsorted(slots, [a * k, b * k])
        sub = {"slots": slots[i:e] - a * k, "tokens": toks[i:e], "acts": acts[i:e]}
        arrays = block_arrays({key: v[a:b] for key, v in top.items()},
                              {key: (v[a:b] if np.ndim(v) else v) for key, v in stats.items()},
                              block.lo + a, k, run.window, [sub])
        nbytes += write_region(run.out, block.lo + a, arrays)
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
