"""Exports of an extraction output: JSON Lines (one record per feature) and a static HTML page.

Token strings are decoded when the activation store names a tokenizer directory that
``transformers.AutoTokenizer`` can load offline (``local_files_only=True``); otherwise the
token ids are shown.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from hvrt_dask import ownership
from hvrt_dask.sae.output import open_output

KIND_JSONL, KIND_HTML = "sae.export.jsonl", "sae.export.html"  # ownership kinds of the two exports


def load_tokenizer(name: str | None):
    """``AutoTokenizer`` for a local directory, or None when there is none / it cannot load offline."""
    if not name or not os.path.isdir(str(name)):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(name), local_files_only=True)
    except Exception:
        return None


def _token_strings(tok, ids: np.ndarray) -> list[str | None]:
    out: list[str | None] = []
    for i in ids.tolist():
        if i < 0:
            out.append(None)
        elif tok is None:
            out.append(str(i))
        else:
            out.append(tok.decode([i]))
    return out


def _feature_range(ds, features: Iterable[int] | None) -> list[int]:
    n = ds.sizes["feature"]
    feats = list(range(n)) if features is None else [int(f) for f in features]
    bad = [f for f in feats if not 0 <= f < n]
    if bad:
        raise ValueError(f"feature index {bad[0]} out of range [0, {n})")
    return feats


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def feature_records(out: str | os.PathLike, features: Iterable[int] | None = None, tokenizer: Any = "auto"):
    """Yield one JSON-serialisable dict per feature (statistics, histogram, top examples)."""
    ds = open_output(out)
    feats = _feature_range(ds, features)
    tok = load_tokenizer(ds.attrs["store"].get("tokenizer")) if tokenizer == "auto" else tokenizer
    lower, upper = ds.bin_lower.values, ds.bin_upper.values
    offs = ds.window_offset.values
    block = 512
    for b0 in range(0, len(feats), block):
        sel = feats[b0 : b0 + block]
        sub = ds.isel(feature=sel).load()
        for j, f in enumerate(sel):
            examples = []
            for r in range(sub.sizes["rank"]):
                s = int(sub.topk_sample.values[j, r])
                if s < 0:
                    continue
                ids = sub.window_tokens.values[j, r]
                examples.append({
                    "rank": r,
                    "sample": s,
                    "position": int(sub.topk_position.values[j, r]),
                    "value": float(sub.topk_value.values[j, r]),
                    "window_offsets": offs.tolist(),
                    "tokens": ids.tolist(),
                    "token_strings": _token_strings(tok, ids) if tok is not None else None,
                    "acts": [_num(a) for a in sub.window_acts.values[j, r]],
                })
            yield {
                "feature": f,
                "dead": bool(sub.dead.values[j]),
                "max_activation": float(sub.max_activation.values[j]),
                "density": float(sub.density.values[j]),
                "frequency": float(sub.frequency.values[j]),
                "n_active_tokens": int(sub.n_active_tokens.values[j]),
                "n_active_samples": int(sub.n_active_samples.values[j]),
                "mean": _num(sub["mean"].values[j]),
                "std": _num(sub["std"].values[j]),
                "histogram": {"lower": lower.tolist(), "upper": [None if math.isinf(u) else float(u) for u in upper],
                              "counts": sub.hist.values[j].tolist()},
                "examples": examples,
            }


def export_jsonl(out: str | os.PathLike, path: str | os.PathLike, features: Iterable[int] | None = None) -> int:
    """Write one JSON record per feature to ``path`` (JSON Lines); returns the record count.

    Written to a temporary file renamed into place at the end (:func:`hvrt_dask.ownership.atomic_file`):
    a failure never leaves a truncated file, and an existing ``path`` is replaced only when
    hvrt_dask wrote it.
    """
    ownership.check_output_path(path, KIND_JSONL, inputs=(out,))
    n = 0
    with ownership.atomic_file(path, KIND_JSONL, "w") as f:
        for rec in feature_records(out, features):
            f.write(json.dumps(rec, allow_nan=False) + "\n")
            n += 1
    return n


_CSS = """body{font-family:sans-serif;margin:1em}h2{margin-top:1.5em}.ex{font-family:monospace;margin:2px 0;
white-space:pre-wrap}.t{padding:0 1px;border-radius:2px}.pad{color:#bbb}.stat{color:#555;font-size:90%}
.prime{outline:1px solid #c00}"""


def export_html(
    out: str | os.PathLike,
    path: str | os.PathLike,
    features: Iterable[int] | None = range(0, 50),
    max_examples: int = 10,
) -> str:
    """Write a static HTML page of the top examples of ``features``, tokens shaded by activation.

    Shading is relative to the feature's maximum activation; the example's max token is
    outlined; ``·`` marks positions outside the sequence.
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>SAE features</title><style>{_CSS}</style></head><body>"]
    ds_attrs = open_output(out).attrs
    parts.append(f"<h1>SAE features</h1><p class='stat'>SAE {html.escape(str(ds_attrs['sae']['path']))} "
                 f"({ds_attrs['sae']['content_hash'][:12]}), store {html.escape(str(ds_attrs['store']['path']))}</p>")
    for rec in feature_records(out, features):
        mx = rec["max_activation"] or 1.0
        parts.append(
            f"<h2 id='f{rec['feature']}'>Feature {rec['feature']}{' (dead)' if rec['dead'] else ''}</h2>"
            f"<p class='stat'>max {rec['max_activation']:.4g} · density {rec['density']:.3g} · "
            f"frequency {rec['frequency']:.3g} · mean {rec['mean'] if rec['mean'] is None else format(rec['mean'], '.4g')}</p>"
        )
        for ex in rec["examples"][:max_examples]:
            spans = []
            names = ex["token_strings"] or [str(t) for t in ex["tokens"]]
            for off, tid, name, a in zip(ex["window_offsets"], ex["tokens"], names, ex["acts"]):
                if tid < 0:
                    spans.append("<span class='t pad'>·</span>")
                    continue
                alpha = 0.0 if a is None else max(0.0, min(1.0, a / mx))
                cls = "t prime" if off == 0 else "t"
                title = f"id {tid} · act {'n/a' if a is None else format(a, '.4g')}"
                text = html.escape(name if ex["token_strings"] else f"[{name}]")
                spans.append(f"<span class='{cls}' style='background:rgba(255,120,0,{alpha:.3f})' title='{title}'>{text}</span>")
            parts.append(f"<div class='ex'><span class='stat'>#{ex['rank']} s{ex['sample']} p{ex['position']} "
                         f"{ex['value']:.4g}</span> {''.join(spans)}</div>")
    parts.append("</body></html>")
    page = "".join(parts)
    ownership.check_output_path(path, KIND_HTML, inputs=(out,))
    with ownership.atomic_file(path, KIND_HTML, "w", encoding="utf8") as f:
        f.write(page)
    return os.fspath(path)
