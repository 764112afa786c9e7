"""Per-block finish task: a block's merged partial and window results become its region of
the output, written by the worker (the client never holds the result)."""

from __future__ import annotations

import numpy as np

from hvrt_dask.sae import range_examples as _rx
from hvrt_dask.sae import stats as _stats
from hvrt_dask.sae import topk as _topk
from hvrt_dask.sae.extract import checkpoint as ckpt
from hvrt_dask.sae.extract.params import Block, RunSpec
from hvrt_dask.sae.output import block_arrays, write_block, write_range_block


def block_examples(root) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` and ``positions`` ``[width, <=top_k]`` of a block's merged partial (read
    from its file without the rest of the partial)."""
    if isinstance(root, dict) and "ref" in root:
        with np.load(root["ref"], allow_pickle=False) as z:
            return z["samples"], z["positions"]
    return root["samples"], root["positions"]


def block_range_examples(root) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The live range examples of a block's merged partial: flat slots ``(local feature x
    n_bins + bin) x m + slot``, samples and positions (empty when the run has none)."""
    if isinstance(root, dict) and "ref" in root:
        with np.load(root["ref"], allow_pickle=False) as z:
            if "range.index" not in z.files:
                return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
            return z["range.index"].astype(np.int64), z["range_sample"], z["range_position"]
    if _rx.KEYS[0] not in root:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    smp = root["range_sample"].reshape(-1)
    live = np.flatnonzero(smp >= 0)
    return live, smp[live], root["range_position"].reshape(-1)[live]


def _gathered(windows: tuple[dict, ...], w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slots (sorted), tokens and acts of the window tasks' results."""
    if not windows:
        return np.zeros(0, np.int64), np.zeros((0, w), np.int32), np.zeros((0, w), np.float32)
    slots = np.concatenate([x["slots"] for x in windows])
    order = np.argsort(slots, kind="stable")
    return (slots[order], np.concatenate([x["tokens"] for x in windows])[order],
            np.concatenate([x["acts"] for x in windows])[order])


def finish_block(run: RunSpec, block: Block, root, *windows: dict) -> dict:
    """Write block ``block``'s features of the output; returns the block's run metadata."""
    part = ckpt.resolve(root)
    top = _topk.aggregate({k: part[k] for k in _topk.KEYS})
    stats = _stats.aggregate({k: part[k] for k in ("max", *_stats.SUM_KEYS)})
    arrays = block_arrays(top, stats, block.lo, run.top_k)
    slots, toks, acts = _gathered(windows, run.window)
    # slots below width x top_k are top-k examples, the others range examples (offset by it)
    cut = int(np.searchsorted(slots, block.width * run.top_k))
    nbytes = write_block(run.out, block.lo, arrays, slots[:cut], toks[:cut], acts[:cut], run.top_k)
    if run.range_m:
        nbytes += write_range_block(run.out, block.lo, _rx.finalize({k: part[k] for k in _rx.KEYS}),
                                    slots[cut:] - block.width * run.top_k, toks[cut:], acts[cut:])
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
