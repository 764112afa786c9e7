"""Per-block finish task: a block's merged partial and window results become its region of
the output, written by the worker (the client never holds the result)."""

from __future__ import annotations

import numpy as np

from hvrt_dask.sae import range_examples as _rx
from hvrt_dask.sae import stats as _stats
from hvrt_dask.sae.extract import checkpoint as ckpt
from hvrt_dask.sae.extract.params import Block, RunSpec
from hvrt_dask.sae.output import SPARSE_ARRAYS, block_arrays, write_block, write_examples, write_range_examples


def block_examples(root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The live top-k examples of a block's merged partial: local features, ranks (ascending
    slot ``feature x k + rank``), samples and positions (read from its file without the rest
    of the partial)."""
    if isinstance(root, dict) and "ref" in root:
        with np.load(root["ref"], allow_pickle=False) as z:
            if ckpt.TOPK_INDEX in z.files:
                kk = int(z[ckpt.TOPK_SHAPE][1])
                live = z[ckpt.TOPK_INDEX]
                return live // kk, live % kk, z["samples"], z["positions"]
            root = {"samples": z["samples"], "positions": z["positions"]}
    fi, ri = np.nonzero(root["samples"] >= 0)
    return fi, ri, root["samples"][fi, ri], root["positions"][fi, ri]


def block_range_count(root) -> int:
    """The number of live range examples in a block's merged partial (0 when the run has none)."""
    return len(block_range_examples(root)[0])


def block_range_examples(root) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The live range examples of a block's merged partial: flat slots ``(local feature x
    n_bins + bin) x m + slot`` (ascending), samples and positions (empty when the run has none)."""
    if isinstance(root, dict) and "ref" in root:
        with np.load(root["ref"], allow_pickle=False) as z:
            if _rx.SPARSE_INDEX not in z.files:
                return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
            return z[_rx.SPARSE_INDEX].astype(np.int64), z["range_sample"], z["range_position"]
    if _rx.KEYS[0] not in root:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    sp = _rx.sparsify(root)
    return sp[_rx.SPARSE_INDEX].astype(np.int64), sp["range_sample"], sp["range_position"]


def _gathered(windows: tuple[dict, ...], w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slots (sorted), tokens and acts of the window tasks' results."""
    if not windows:
        return np.zeros(0, np.int64), np.zeros((0, w), np.int32), np.zeros((0, w), np.float32)
    slots = np.concatenate([x["slots"] for x in windows])
    order = np.argsort(slots, kind="stable")
    return (slots[order], np.concatenate([x["tokens"] for x in windows])[order],
            np.concatenate([x["acts"] for x in windows])[order])


def finish_block(run: RunSpec, block: Block, root, range_row: int, *windows) -> dict:
    """Write block ``block``'s features of the output; returns the block's run metadata.

    ``range_row`` is the block's first ``range_example`` row (a chunk boundary,
    :func:`hvrt_dask.sae.output.range_layout`).

    ``windows`` are window results, or window task arguments (tuples for
    :func:`~hvrt_dask.sae.extract.windows.gather_windows`) run here: a block whose examples lie
    in one sample chunk gathers and writes them in one task.
    """
    from hvrt_dask.sae.extract.windows import gather_windows

    windows = tuple(gather_windows(run, *w) if isinstance(w, tuple) else w for w in windows)
    part = ckpt.resolve(root)
    stats = _stats.aggregate({k: part[k] for k in ("max", *_stats.SUM_KEYS)})
    arrays = block_arrays(stats, block.lo)
    slots, toks, acts = _gathered(windows, run.window)
    # slots below width x top_k are top-k examples, the others range examples (offset by it)
    cut = int(np.searchsorted(slots, block.width * run.top_k))
    fi, ri = np.nonzero(part["samples"] >= 0)  # row-major: ascending slot fi x top_k + ri
    if not np.array_equal(slots[:cut], fi * run.top_k + ri):
        raise RuntimeError(f"feature block {block.j}: the context windows do not match the block's top-k examples")
    # the examples' arrays and their windows are chunked differently: one call per chunk grid
    nbytes = write_examples(run.out, block.lo, block.width, SPARSE_ARRAYS[:3], (fi, ri),
                             (part["values"][fi, ri], part["samples"][fi, ri], part["positions"][fi, ri]))
    nbytes += write_examples(run.out, block.lo, block.width, SPARSE_ARRAYS[3:], (fi, ri), (toks[:cut], acts[:cut]))
    if run.range_m:
        sp = _rx.sparsify({k: part[k] for k in (*_rx.KEYS, _rx.SPARSE_SHAPE, _rx.SPARSE_INDEX) if k in part})
        idx = sp[_rx.SPARSE_INDEX].astype(np.int64)
        if not np.array_equal(slots[cut:] - block.width * run.top_k, idx):
            raise RuntimeError(f"feature block {block.j}: the context windows do not match the block's range examples")
        _, n_bins, m = (int(x) for x in sp[_rx.SPARSE_SHAPE])
        feat = idx // (n_bins * m)  # block-local; idx ascending = rows sorted by (feature, bin, slot)
        count = np.bincount(feat, minlength=block.width)
        arrays["range_count"] = count.astype(np.int32)
        arrays["range_start"] = int(range_row) + np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        nbytes += write_range_examples(run.out, int(range_row), {
            "range_feature": feat + block.lo, "range_bin": (idx // m) % n_bins, "range_slot": idx % m,
            "range_sample": sp["range_sample"], "range_value": sp["range_value"],
            "range_position": sp["range_position"], "range_window_tokens": toks[cut:], "range_window_acts": acts[cut:]})
    nbytes += write_block(run.out, block.lo, arrays)
    return {
        "workers": [str(x) for x in part["workers"]],
        "batch_size": int(part["batch_size"]),
        "seconds": float(part["seconds"]),
        "read_seconds": float(part["read_seconds"]),
        "n_nonfinite_masked": int(part["n_nonfinite_masked"]),
        "n_valid_tokens": int(part["n_valid_tokens"]),
        "n_samples": int(part["n_samples"]),
        "n_examples": int(len(fi)),
        "bytes": nbytes,
    }
