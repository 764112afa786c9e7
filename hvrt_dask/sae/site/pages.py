"""The feature pages' data: one file per shard of features, and the token vocabulary files."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hvrt_dask.sae.site.data import Writer, dumps, rounded


def feat_key(shard: int) -> str:
    return f"feat/{shard // 1000:04d}/{shard:06d}"


def features_per_shard(setting: Any, window_per_feature: int) -> int:
    if setting == "auto":
        per = max(1, window_per_feature)
        return int(min(64, max(1, 2 ** math.floor(math.log2(max(1, 40_000 // per))))))
    if isinstance(setting, bool) or not isinstance(setting, (int, np.integer)) or setting < 1:
        raise ValueError(f"site setting 'features-per-shard' must be 'auto' or an integer >= 1, got {setting!r}")
    return int(setting)


def _live_examples(samples, positions, values, toks, acts) -> tuple[tuple[np.ndarray, ...], list]:
    """The live slots (sample >= 0) of a block's example arrays, as ``[sample, position, value,
    [token ids], [acts]]`` lists, with their leading indices (C order: by feature, then slot).

    Window activations are rounded like every value; ``-1`` stands for "no activation"
    (padding or outside the sequence; real activations are >= 0).
    """
    idx = np.nonzero(samples >= 0)
    if idx[0].size == 0:
        return idx, []
    a = acts[idx]
    rows = zip(samples[idx].tolist(), positions[idx].tolist(), rounded(values[idx]), toks[idx].tolist(),
               rounded(np.where(np.isnan(a), -1.0, a)))
    return idx, [list(r) for r in rows]


def _by_feature(first: np.ndarray, n: int) -> np.ndarray:
    """Start offsets of each of ``n`` features in a sorted index array (``n + 1`` values)."""
    return np.searchsorted(first, np.arange(n + 1))


def write_shards(writer: Writer, sub: dict, table, i0: int, a: int, fps: int, has_range: bool) -> None:
    """Feature-page data files of one block; every per-element conversion is done per block."""
    n_blk = sub["max_activation"].shape[0]
    mean, std = rounded(sub["mean"]), rounded(sub["std"])
    mx, dens, freq = rounded(sub["max_activation"]), rounded(sub["density"]), rounded(sub["frequency"])
    nat, nas, dead = sub["n_active_tokens"].tolist(), sub["n_active_samples"].tolist(), sub["dead"].tolist()
    hf, hb = np.nonzero(sub["hist"])
    hist_pairs = np.stack([hb, sub["hist"][hf, hb]], axis=1).tolist()
    hstart = _by_feature(hf, n_blk)
    tidx, top = _live_examples(sub["topk_sample"], sub["topk_position"], sub["topk_value"], sub["window_tokens"], sub["window_acts"])
    tstart = _by_feature(tidx[0], n_blk)
    if has_range:  # the block's range-example rows, sorted by (feature, bin, slot)
        ridx, rng = _live_examples(sub["range_sample"], sub["range_position"], sub["range_value"],
                                   sub["range_window_tokens"], sub["range_window_acts"])
        rstart, rbin = _by_feature(sub["range_feature"][ridx] - a, n_blk), sub["range_bin"][ridx].tolist()
    for s0 in range(0, n_blk, fps):
        s1 = min(n_blk, s0 + fps)
        feats = []
        for j in range(s0, s1):
            rec = {
                "f": a + j, "max": mx[j], "density": dens[j], "frequency": freq[j], "n_active_tokens": nat[j],
                "n_active_samples": nas[j], "mean": mean[j], "std": std[j], "dead": dead[j],
                "hist": hist_pairs[hstart[j]:hstart[j + 1]], "top": top[tstart[j]:tstart[j + 1]],
            }
            if has_range:
                groups: list = []
                for e in range(rstart[j], rstart[j + 1]):
                    if not groups or groups[-1][0] != rbin[e]:
                        groups.append([rbin[e], []])
                    groups[-1][1].append(rng[e])
                rec["range"] = groups
            feats.append(rec)
        writer.put_json(feat_key((i0 + s0) // fps), f'{{"f0":{a + s0},"features":{dumps(feats)}}}')


def write_vocab(writer: Writer, table, per_file: int) -> int:
    """Display entries of every token id, ``per_file`` ids per file (``vocab/NNNNNN``); returns
    the vocabulary size (0 without a tokenizer: the viewer shows ``[id]``)."""
    if table.tok is None:
        return 0
    n = len(table.tok)
    for v0 in range(0, n, per_file):
        body = ",".join(table.json(t) for t in range(v0, min(n, v0 + per_file)))
        writer.put_json(f"vocab/{v0 // per_file:06d}", f'{{"v0":{v0},"entries":[{body}]}}')
    return n
