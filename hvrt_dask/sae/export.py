"""Exports of an extraction output: JSON Lines and a single static HTML page.

JSON Lines (:func:`export_jsonl`): the first line is a header record (``"record": "header"``)
with what every feature shares — the histogram bin bounds, the window offsets, the store and
SAE descriptions, the tokenizer — then one ``"record": "feature"`` line per feature, streamed
per block of features. Both exports are written to a temporary name and renamed when
complete (:func:`hvrt_dask.ownership.atomic_file`), so a failed export leaves no partial file.

Token strings are decoded when the activation store names a tokenizer directory that
``transformers.AutoTokenizer`` can load offline (``local_files_only=True``); otherwise the
token ids are shown and the reason is logged (:func:`hvrt_dask.sae.site.tokens.load_tokenizer`).
For browsing many features use the feature browser (:func:`hvrt_dask.sae.site.build_site`).
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
from hvrt_dask.sae.output import RANGE_DIM, open_output, read_range_examples
from hvrt_dask.sae.site.tokens import load_tokenizer as _load_tokenizer
from hvrt_dask.sae.site.tokens import visible_text

JSONL_FORMAT = "hvrt_dask.sae_features.jsonl/3"
#: Features read from the output per block while streaming records.
_BLOCK = 512

KIND_JSONL, KIND_HTML = "sae.export.jsonl", "sae.export.html"  # ownership kinds of the two exports


def load_tokenizer(name: str | None):
    """``AutoTokenizer`` for a local directory, or None (the reason is logged as a warning)."""
    return _load_tokenizer(name)[0]


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


def _feature_range(ds, features: Iterable[int] | None) -> range | list[int]:
    """The selected features, checked before any output: a ``range`` is checked by its
    bounds (never materialised), other iterables element by element."""
    n = ds.sizes["feature"]
    if features is None:
        return range(n)
    if isinstance(features, range):
        if len(features) and not (0 <= min(features[0], features[-1]) and max(features[0], features[-1]) < n):
            bad = features[0] if not 0 <= features[0] < n else features[-1]
            raise ValueError(f"feature index {bad} out of range [0, {n})")
        return features
    feats = [int(f) for f in features]
    bad = [f for f in feats if not 0 <= f < n]
    if bad:
        raise ValueError(f"feature index {bad[0]} out of range [0, {n})")
    return feats


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _edges(ds) -> dict:
    upper = ds.bin_upper.values
    return {"lower": ds.bin_lower.values.tolist(), "upper": [None if math.isinf(u) else float(u) for u in upper]}


def jsonl_header(out: str | os.PathLike, tokenizer: Any = "auto") -> dict:
    """The header record of :func:`export_jsonl`: metadata shared by every feature record."""
    ds = open_output(out)
    a = ds.attrs
    tok_name = (a.get("store") or {}).get("tokenizer")
    notice = None
    if tokenizer == "auto":
        notice = _load_tokenizer(tok_name)[1]
    return {
        "record": "header",
        "format": JSONL_FORMAT,
        "source": os.path.abspath(os.fspath(out)),
        "n_features": int(ds.sizes["feature"]),
        "top_k": int(ds.sizes["rank"]),
        "n_samples": a.get("n_samples"),
        "n_valid_tokens": a.get("n_valid_tokens"),
        "histogram": _edges(ds),
        "window_offsets": ds.window_offset.values.tolist(),
        "store": a.get("store"),
        "sae": a.get("sae"),
        "tokenizer": tok_name,
        "tokenizer_notice": notice,
    }


def feature_records(out: str | os.PathLike, features: Iterable[int] | None = None, tokenizer: Any = "auto"):
    """Yield one JSON-serialisable dict per feature (statistics, histogram counts, top examples,
    and, when the output has them, ``range_examples``: its examples across the activation range
    with their ``bin`` and ``slot``).

    Shared metadata (bin bounds, window offsets, store, SAE) is in :func:`jsonl_header`.
    The output is read per block of features (bounded memory for any SAE width).
    """
    ds = open_output(out)
    feats = _feature_range(ds, features)
    tok = load_tokenizer(ds.attrs["store"].get("tokenizer")) if tokenizer == "auto" else tokenizer
    has_range = RANGE_DIM in ds.sizes
    per_feature = ds.drop_vars([v for v in ds.variables if RANGE_DIM in ds[v].dims])  # read per block below
    for b0 in range(0, len(feats), _BLOCK):
        sel = feats[b0 : b0 + _BLOCK]
        sub = per_feature.isel(feature=list(sel) if not isinstance(sel, range) else slice(sel.start, sel.stop, sel.step)).load()
        if has_range:  # the block's rows (one slice), then each feature's
            rows = read_range_examples(out, min(sel), max(sel) + 1)
            rstart = np.searchsorted(rows["range_feature"], np.asarray(sel), side="left")
            rend = np.searchsorted(rows["range_feature"], np.asarray(sel), side="right")
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
                    "tokens": ids.tolist(),
                    "token_strings": _token_strings(tok, ids) if tok is not None else None,
                    "acts": [_num(a) for a in sub.window_acts.values[j, r]],
                })
            rec = {
                "record": "feature",
                "feature": int(f),
                "dead": bool(sub.dead.values[j]),
                "max_activation": float(sub.max_activation.values[j]),
                "density": float(sub.density.values[j]),
                "frequency": float(sub.frequency.values[j]),
                "n_active_tokens": int(sub.n_active_tokens.values[j]),
                "n_active_samples": int(sub.n_active_samples.values[j]),
                "mean": _num(sub["mean"].values[j]),
                "std": _num(sub["std"].values[j]),
                "histogram": sub.hist.values[j].tolist(),
                "examples": examples,
            }
            if has_range:
                rec["range_examples"] = [{
                    "bin": int(rows["range_bin"][e]), "slot": int(rows["range_slot"][e]),
                    "sample": int(rows["range_sample"][e]), "position": int(rows["range_position"][e]),
                    "value": float(rows["range_value"][e]), "tokens": rows["range_window_tokens"][e].tolist(),
                    "token_strings": (_token_strings(tok, rows["range_window_tokens"][e]) if tok is not None
                                      else None),
                    "acts": [_num(a) for a in rows["range_window_acts"][e]],
                } for e in range(int(rstart[j]), int(rend[j]))]
            yield rec


def export_jsonl(out: str | os.PathLike, path: str | os.PathLike, features: Iterable[int] | None = None) -> int:
    """Write the header record, then one record per feature, to ``path`` (JSON Lines).

    Returns the number of feature records. Written to a temporary name and renamed at the end
    (a failure — e.g. a non-finite statistic, which JSON cannot carry — leaves no file);
    an existing ``path`` is replaced only when hvrt_dask wrote it.
    """
    ds = open_output(out)
    _feature_range(ds, features)  # bad selections fail before the file is opened
    ownership.check_output_path(path, KIND_JSONL, inputs=(out,))
    n = 0
    with ownership.atomic_file(path, KIND_JSONL, encoding="utf8") as f:
        f.write(json.dumps(jsonl_header(out), allow_nan=False) + "\n")
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
    features: Iterable[int] | None = None,
    max_examples: int = 10,
) -> str:
    """Write one static HTML page of the top examples of ``features``, tokens shaded by activation.

    ``features`` defaults to the first 50 (fewer when the SAE is smaller). Shading is relative
    to the feature's maximum activation; the example's max token is outlined; ``·`` marks
    positions outside the sequence. Every value is escaped; bidi controls are made visible.
    For more than a few features build the feature browser instead (docs/site.md).
    """
    ds = open_output(out)
    if features is None:
        features = range(min(50, ds.sizes["feature"]))
    _feature_range(ds, features)
    offs = ds.window_offset.values.tolist()
    ds_attrs = ds.attrs
    esc = lambda x: html.escape(visible_text(str(x)), quote=True)  # noqa: E731 - text and attribute contexts
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><meta http-equiv='Content-Security-Policy' "
             f"content=\"default-src 'none'; style-src 'unsafe-inline'\"><title>SAE features</title><style>{_CSS}</style></head><body>"]
    sae, store = (a if isinstance(a, dict) else {} for a in (ds_attrs.get("sae"), ds_attrs.get("store")))
    parts.append(f"<h1>SAE features</h1><p class='stat'>SAE <bdi>{esc(sae.get('path'))}</bdi> "
                 f"(<bdi>{esc(str(sae.get('content_hash'))[:12])}</bdi>), store <bdi>{esc(store.get('path'))}</bdi></p>")
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
            for off, tid, name, a in zip(offs, ex["tokens"], names, ex["acts"]):
                if tid < 0:
                    spans.append("<span class='t pad'>·</span>")
                    continue
                alpha = 0.0 if a is None else max(0.0, min(1.0, a / mx))
                cls = "t prime" if off == 0 else "t"
                title = f"id {tid} · act {'n/a' if a is None else format(a, '.4g')}"
                shown = visible_text(name if ex["token_strings"] else f"[{name}]")
                text = html.escape(shown if len(shown) <= 32 else shown[:31] + "\u2026")
                spans.append(f"<span class='{cls}' style='background:rgba(255,120,0,{alpha:.3f})' title='{title}'>{text}</span>")
            parts.append(f"<div class='ex'><span class='stat'>#{ex['rank']} s{ex['sample']} p{ex['position']} "
                         f"{ex['value']:.4g}</span> {''.join(spans)}</div>")
    parts.append("</body></html>")
    page = "".join(parts)
    ownership.check_output_path(path, KIND_HTML, inputs=(out,))
    with ownership.atomic_file(path, KIND_HTML, encoding="utf8") as f:
        f.write(page)
    return os.fspath(path)
