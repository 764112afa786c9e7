"""Build the static feature browser from an extraction output, streaming it per feature block.

Layout of ``OUT_DIR`` (all data files are ``HVRT.receive(key, <JSON>)`` scripts, because browsers
refuse ``fetch`` of ``file://`` URLs; the page's Content-Security-Policy allows scripts from the
site itself only)::

    index.html, feature.html          jinja2 templates (autoescaped)
    static/site.js, static/site.css   the viewer (DOM APIs only: textContent/setAttribute)
    data/meta.js                      shared metadata: counts, bins, window offsets, views, notices
    data/rows/NNNNNN.js               index rows by feature id (rows-per-file features each)
    data/order/<filter>-<key>/NNNNNN.js  feature ids of a sorted/filtered view (order-file each)
    data/feat/NNNN/NNNNNN.js          feature pages' data (features-per-shard features each)
    data/search/NNN.js                token → features (hash bucket of the normalised token)
    data/vocab/NNNNNN.js              display entries of token ids (vocab-file ids each; with a tokenizer)

Memory: one block of the output (``read-elements`` window elements) plus O(n_features)
scalar columns (about 60 bytes per feature) for the sorted views and the search index.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import zarr

from hvrt_dask import config, ownership
from hvrt_dask.sae import range_examples as _rx
from hvrt_dask.sae.output import open_output
from hvrt_dask.sae.site import tokens as _tokens

log = logging.getLogger("hvrt_dask.sae.site")

KIND = "sae.site"
FILTERS = ("all", "dead", "rare", "dense")
SORT_KEYS = ("feature", "max_activation", "density", "frequency")
RANGE_VARS = _rx.OUTPUT_VARS
_STATS = ("max_activation", "density", "frequency", "n_active_tokens", "n_active_samples", "mean", "std", "dead", "hist")
_TOPK = ("topk_sample", "topk_position", "topk_value", "window_tokens", "window_acts")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; object-src 'none'")


@dataclass
class SiteResult:
    """What :func:`build_site` returns.

    Attributes
    ----------
    path : str
        The site directory (open ``index.html``).
    n_features : int
    files : int
        Data files written.
    bytes : int
        Bytes of the site on disk (data, pages, static).
    tokenizer_notice : str or None
        Why token ids are shown instead of text (None when the tokenizer loaded).
    seconds : float
    """

    path: str
    n_features: int
    files: int
    bytes: int
    tokenizer_notice: str | None
    seconds: float
    settings: dict = field(default_factory=dict)

    @property
    def index(self) -> str:
        """Path of the site's ``index.html``."""
        return os.path.join(self.path, "index.html")


def _setting(overrides: dict, key: str) -> Any:
    if key in overrides and overrides[key] is not None:
        return overrides[key]
    return config.get(f"site.{key}")


def _int_setting(overrides: dict, key: str, minimum: int = 1) -> int:
    v = _setting(overrides, key)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"site setting {key!r} (hvrt.site.{key}) must be an integer >= {minimum}, got {v!r}")
    return int(v)


def feature_span(features: Any, n: int) -> tuple[int, int]:
    """``[lo, hi)`` of a contiguous ``features`` selection, checked without materialising it.

    ``None`` is every feature; otherwise a ``range`` (step 1) or a ``slice``.
    """
    if features is None:
        return 0, n
    if isinstance(features, slice):
        if features.step not in (None, 1):
            raise ValueError(f"site features must be contiguous (step 1), got {features!r}")
        features = range(*features.indices(n))
    if not isinstance(features, range) or features.step != 1:
        raise ValueError(f"site features must be None, a slice or a range with step 1, got {type(features).__name__}"
                         f" {features!r}")
    if len(features) == 0:
        raise ValueError(f"site features {features!r} select no feature (the output has {n})")
    if features.start < 0 or features.stop > n:
        raise ValueError(f"site features {features!r} out of range: the output has {n} features [0, {n})")
    return features.start, features.stop


def _round(a: np.ndarray, digits: int = 5) -> list:
    """Floats rounded to ``digits`` significant digits (short JSON); NaN/inf → None."""
    x = np.asarray(a, np.float64)
    finite = np.isfinite(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(finite & (x != 0), np.floor(np.log10(np.abs(np.where(finite, x, 1)))), 0)
        scale = 10.0 ** (digits - 1 - mag)
        r = np.where(finite, np.round(x * scale) / scale, np.nan)
    out = r.tolist()
    if not finite.all():
        _none_nan(out)
    return out


def _none_nan(lst: list) -> None:
    for i, v in enumerate(lst):
        if isinstance(v, list):
            _none_nan(v)
        elif v != v or v in (math.inf, -math.inf):
            lst[i] = None


def _dumps(obj: Any) -> str:
    # ASCII-only JSON (U+2028 and every non-ASCII character escaped): safe as a script literal
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


class _Writer:
    """Writes ``data/<key>.js`` files and counts them."""

    def __init__(self, root: str):
        self.root = root
        self.files = 0
        self.bytes = 0
        self._dirs: set[str] = set()

    def put(self, key: str, obj: Any) -> None:
        self.put_json(key, _dumps(obj))

    def put_json(self, key: str, json_text: str) -> None:
        """Write already-encoded (ASCII) JSON."""
        fn = os.path.join(self.root, "data", *key.split("/")) + ".js"
        d = os.path.dirname(fn)
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)
        text = f"HVRT.receive({_dumps(key)},{json_text});\n"
        with open(fn, "w", encoding="ascii") as f:
            f.write(text)
        self.files += 1
        self.bytes += len(text)


def feat_key(shard: int) -> str:
    return f"feat/{shard // 1000:04d}/{shard:06d}"


def _features_per_shard(setting: Any, window_per_feature: int) -> int:
    if setting == "auto":
        per = max(1, window_per_feature)
        return int(min(64, max(1, 2 ** math.floor(math.log2(max(1, 40_000 // per))))))
    if isinstance(setting, bool) or not isinstance(setting, (int, np.integer)) or setting < 1:
        raise ValueError(f"site setting 'features-per-shard' must be 'auto' or an integer >= 1, got {setting!r}")
    return int(setting)


def _top_tokens(center: np.ndarray, live: np.ndarray, n_top: int) -> np.ndarray:
    """Per feature, the ``n_top`` most frequent tokens at the max position of its top examples.

    Ties by the best rank they appear at. ``center``/``live``: ``[F, k]``. Returns ``[F, n_top]`` (-1 fill).
    """
    f_n, k = center.shape
    out = np.full((f_n, n_top), -1, np.int64)
    fi, ri = np.nonzero(live & (center >= 0))
    if fi.size == 0:
        return out
    t = center[fi, ri].astype(np.int64)
    order = np.lexsort((ri, t, fi))
    fi, ri, t = fi[order], ri[order], t[order]
    new = np.r_[True, (fi[1:] != fi[:-1]) | (t[1:] != t[:-1])]
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, fi.size])
    uf, ut, ur = fi[starts], t[starts], ri[starts]  # ri is the best rank (sorted asc within group)
    o2 = np.lexsort((ur, -counts, uf))
    uf, ut = uf[o2], ut[o2]
    gs = np.flatnonzero(np.r_[True, uf[1:] != uf[:-1]])
    rank = np.arange(uf.size) - np.repeat(gs, np.diff(np.r_[gs, uf.size]))
    keep = rank < n_top
    out[uf[keep], rank[keep]] = ut[keep]
    return out


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
    rows = zip(samples[idx].tolist(), positions[idx].tolist(), _round(values[idx]), toks[idx].tolist(),
               _round(np.where(np.isnan(a), -1.0, a)))
    return idx, [list(r) for r in rows]


def _by_feature(first: np.ndarray, n: int) -> np.ndarray:
    """Start offsets of each of ``n`` features in a sorted index array (``n + 1`` values)."""
    return np.searchsorted(first, np.arange(n + 1))


def _output_info(ds) -> dict:
    a = ds.attrs
    sae = a.get("sae") if isinstance(a.get("sae"), dict) else {}
    store = a.get("store") if isinstance(a.get("store"), dict) else {}
    keep_sae = {k: sae.get(k) for k in ("path", "content_hash", "architecture", "d_in", "d_sae") if k in sae}
    keep_store = {k: store.get(k) for k in ("path", "model", "layer", "hook", "tokenizer", "n_samples", "seq_len") if k in store}
    return {"sae": keep_sae, "store": keep_store, "n_samples": a.get("n_samples"),
            "n_valid_tokens": a.get("n_valid_tokens"), "created": a.get("created"), "format": a.get("format")}


def _copy_static(out: str, title: str, info: dict, notice: str | None) -> None:
    import jinja2

    pkg = resources.files("hvrt_dask.sae.site")
    env = jinja2.Environment(loader=jinja2.PackageLoader("hvrt_dask.sae.site", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined)
    for name in ("index.html", "feature.html"):
        page = env.get_template(name).render(title=title, csp=CSP, info=info, notice=notice)
        with open(os.path.join(out, name), "w", encoding="utf8") as f:
            f.write(page)
    os.makedirs(os.path.join(out, "static"), exist_ok=True)
    for name in ("site.js", "site.css"):
        with (pkg / "static" / name).open("rb") as src, open(os.path.join(out, "static", name), "wb") as dst:
            shutil.copyfileobj(src, dst)


def build_site(
    features_zarr: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    features: range | slice | None = None,
    tokenizer: Any = "auto",
    progress: bool = False,
    **settings: Any,
) -> SiteResult:
    """Write the static feature browser of an extraction output.

    Parameters
    ----------
    features_zarr : path
        A complete extraction output (:func:`hvrt_dask.sae.extract.extract_features`).
    out_dir : path
        The site directory. It must be absent, empty, or a site hvrt_dask built before
        (which is replaced); anything else is refused before any work.
    features : range, slice or None
        A contiguous selection of features (default: all). Checked arithmetically, never
        materialised.
    tokenizer : "auto", tokenizer or None
        ``"auto"`` loads the tokenizer the activation store names (offline); ``None`` shows ids.
        When ids are shown, the reason is logged and written on every page.
    progress : bool
        Log one line per block.
    **settings
        Overrides of ``hvrt.site`` settings with ``_`` for ``-`` (``features_per_shard=16``, ...).

    Returns
    -------
    SiteResult

    Raises
    ------
    ValueError
        Incomplete output, features out of range, bad settings (before anything is written).
    hvrt_dask.ownership.OwnershipError
        ``out_dir`` holds something hvrt_dask did not write as a site.
    """
    t0 = time.perf_counter()
    ov = {k.replace("_", "-"): v for k, v in settings.items()}
    unknown = set(ov) - set(config.get("site"))
    if unknown:
        raise ValueError(f"unknown site setting(s) {sorted(unknown)}; known: {sorted(config.get('site'))}")
    src = ownership.resolve(features_zarr)
    ds = open_output(src)
    n_all = int(ds.sizes["feature"])
    lo, hi = feature_span(features, n_all)
    n = hi - lo
    k = int(ds.sizes["rank"])
    w = int(ds.sizes["window"])
    has_range = all(v in ds.variables for v in RANGE_VARS)
    m = int(ds.sizes[_rx.SLOT_DIM]) if has_range else 0
    n_bins = int(ds.sizes["bin"])
    # window elements per feature: as shown (a feature's range examples fill a few bins) and as
    # read (range arrays are dense: every bin's slots)
    fps = _features_per_shard(_setting(ov, "features-per-shard"), k * w + (min(n_bins, 8) * m * w if has_range else 0))
    per_feature_window = k * w + (n_bins * m * w if has_range else 0)
    rows_per_file = _int_setting(ov, "rows-per-file")
    order_file = _int_setting(ov, "order-file")
    page_size = _int_setting(ov, "page-size")
    n_top = _int_setting(ov, "top-tokens")
    max_chars = _int_setting(ov, "max-token-chars", 2)
    n_buckets = _int_setting(ov, "search-buckets")
    search_max = _int_setting(ov, "search-max-features")
    read_elements = _int_setting(ov, "read-elements")
    vocab_file = _int_setting(ov, "vocab-file")
    rare, dense = float(_setting(ov, "rare-density")), float(_setting(ov, "dense-density"))
    info = _output_info(ds)
    store_tok = info["store"].get("tokenizer")

    inputs = [src] + [p for p in (info["store"].get("path"), store_tok) if isinstance(p, str) and p]
    out = ownership.check_output_path(out_dir, KIND, inputs=inputs)  # before any work
    if isinstance(tokenizer, str) and tokenizer == "auto":
        tok, notice = _tokens.load_tokenizer(store_tok)
    elif tokenizer is None:
        tok, notice = None, "No tokenizer was given to the site builder: tokens are shown as ids."
        log.warning("%s", notice)
    else:
        tok, notice = tokenizer, None
    table = _tokens.TokenTable(tok, max_chars)
    if os.path.lexists(out) and ownership.owned_by(out, KIND):
        ownership.clear(out, KIND)
    ownership.claim(out, KIND, source=src)
    writer = _Writer(out)
    vocab_size = _write_vocab(writer, table, vocab_file)
    title = f"SAE features ({n:,} of {n_all:,})"
    _copy_static(out, title, info, notice)

    # O(n) scalar columns for the sorted views and the search index
    cols = {
        "max_activation": np.zeros(n, np.float32), "density": np.zeros(n, np.float64),
        "frequency": np.zeros(n, np.float64), "dead": np.zeros(n, bool),
    }
    top_tok = np.full((n, n_top), -1, np.int32)
    base = math.lcm(fps, rows_per_file)
    block = base * max(1, read_elements // max(1, base * per_feature_window))
    center = int(np.flatnonzero(ds.window_offset.values == 0)[0])
    names = list(_STATS + _TOPK + (RANGE_VARS if has_range else ()))
    group = zarr.open_group(src, mode="r")  # plain slice reads: no dask graph per block
    for a in range(lo, hi, block):
        b = min(hi, a + block)
        sub = {v: group[v][a:b] for v in names}
        i0 = a - lo
        for c in cols:
            cols[c][i0 : i0 + (b - a)] = sub[c]
        live = sub["topk_sample"] >= 0
        tt = _top_tokens(sub["window_tokens"][:, :, center], live, n_top)
        top_tok[i0 : i0 + (b - a)] = tt
        _write_rows(writer, sub, tt, table, i0, a, rows_per_file)
        _write_shards(writer, sub, table, i0, a, fps, has_range)
        if progress:
            log.info("site: features %d-%d of %d written (%.1f s)", a, b, hi, time.perf_counter() - t0)
    views = _write_views(writer, cols, lo, order_file, rare, dense)
    _write_search(writer, top_tok, cols["max_activation"], lo, table, n_buckets, search_max)
    lower, upper = ds.bin_lower.values, ds.bin_upper.values
    meta = {
        "format": "hvrt_dask.sae_site/1",
        "f0": lo, "n": n, "n_all": n_all, "top_k": k, "range_m": m, "has_range": has_range,
        "features_per_shard": fps, "rows_per_file": rows_per_file, "order_file": order_file,
        "page_size": page_size, "search_buckets": n_buckets, "search_max": search_max,
        "rare_density": rare, "dense_density": dense,
        "bin_lower": _round(lower), "bin_upper": _round(upper),
        "window_offset": ds.window_offset.values.astype(int).tolist(),
        "views": views, "counts": {f: int(_mask(cols, f, rare, dense).sum()) for f in FILTERS},
        "info": info, "tokenizer_notice": notice, "by_id": table.tok is None,
        "vocab_size": vocab_size, "vocab_file": vocab_file,
    }
    writer.put("meta", meta)
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(out) for f in fs)
    ownership.mark_complete(out, n_features=n, files=writer.files)
    secs = time.perf_counter() - t0
    log.info("site: %d features, %d data files, %.1f MB in %.1f s -> %s", n, writer.files, total / 1e6, secs,
             os.path.join(out, "index.html"))
    return SiteResult(path=out, n_features=n, files=writer.files, bytes=total, tokenizer_notice=notice,
                      seconds=secs, settings={"features_per_shard": fps, "rows_per_file": rows_per_file})


def _write_rows(writer: _Writer, sub: dict, top: np.ndarray, table, i0: int, a: int, rpf: int) -> None:
    n_blk = sub["max_activation"].shape[0]
    for r0 in range(0, n_blk, rpf):
        r1 = min(n_blk, r0 + rpf)
        writer.put(f"rows/{(i0 + r0) // rpf:06d}", {
            "f0": a + r0,
            "max": _round(sub["max_activation"][r0:r1]),
            "density": _round(sub["density"][r0:r1]),
            "frequency": _round(sub["frequency"][r0:r1]),
            "n_active_tokens": sub["n_active_tokens"][r0:r1].tolist(),
            "dead": sub["dead"][r0:r1].astype(int).tolist(),
            "top": [[table(t) for t in row if t >= 0] for row in top[r0:r1].tolist()],
        })


def _write_shards(writer: _Writer, sub: dict, table, i0: int, a: int, fps: int, has_range: bool) -> None:
    """Feature-page data files of one block; every per-element conversion is done per block."""
    n_blk = sub["max_activation"].shape[0]
    mean, std = _round(sub["mean"]), _round(sub["std"])
    mx, dens, freq = _round(sub["max_activation"]), _round(sub["density"]), _round(sub["frequency"])
    nat, nas, dead = sub["n_active_tokens"].tolist(), sub["n_active_samples"].tolist(), sub["dead"].tolist()
    hf, hb = np.nonzero(sub["hist"])
    hist_pairs = np.stack([hb, sub["hist"][hf, hb]], axis=1).tolist()
    hstart = _by_feature(hf, n_blk)
    tidx, top = _live_examples(sub["topk_sample"], sub["topk_position"], sub["topk_value"], sub["window_tokens"], sub["window_acts"])
    tstart = _by_feature(tidx[0], n_blk)
    if has_range:
        ridx, rng = _live_examples(sub["range_sample"], sub["range_position"], sub["range_value"],
                                   sub["range_window_tokens"], sub["range_window_acts"])
        rstart, rbin = _by_feature(ridx[0], n_blk), ridx[1].tolist()
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
        writer.put_json(feat_key((i0 + s0) // fps), f'{{"f0":{a + s0},"features":{_dumps(feats)}}}')


def _write_vocab(writer: _Writer, table, per_file: int) -> int:
    """Display entries of every token id, ``per_file`` ids per file (``vocab/NNNNNN``); returns
    the vocabulary size (0 without a tokenizer: the viewer shows ``[id]``)."""
    if table.tok is None:
        return 0
    n = len(table.tok)
    for v0 in range(0, n, per_file):
        body = ",".join(table.json(t) for t in range(v0, min(n, v0 + per_file)))
        writer.put_json(f"vocab/{v0 // per_file:06d}", f'{{"v0":{v0},"entries":[{body}]}}')
    return n


def _mask(cols: dict, name: str, rare: float, dense: float) -> np.ndarray:
    dead = cols["dead"]
    if name == "all":
        return np.ones(dead.shape, bool)
    if name == "dead":
        return dead
    if name == "rare":
        return ~dead & (cols["density"] < rare)
    return ~dead & (cols["density"] > dense)


def _write_views(writer: _Writer, cols: dict, lo: int, order_file: int, rare: float, dense: float) -> dict:
    """Sorted/filtered views as pages of global feature ids.

    ``feature`` ascending; the value keys descending with ties by feature ascending (the
    viewer reverses a view for the other direction). ``all``/``feature`` is the identity and
    is not written; ``dead`` only by feature (every value is 0).
    """
    views = {}
    ids_all = np.arange(cols["dead"].size, dtype=np.int64)
    for flt in FILTERS:
        mask = _mask(cols, flt, rare, dense)
        ids = ids_all[mask]
        for key in SORT_KEYS:
            if (flt == "all" and key == "feature") or (flt == "dead" and key != "feature"):
                continue
            if key == "feature":
                order = ids
            else:
                v = cols[key][mask].astype(np.float64)
                order = ids[np.lexsort((ids, -v))]
            name = f"{flt}-{key}"
            for p0 in range(0, order.size, order_file):
                writer.put(f"order/{name}/{p0 // order_file:06d}", (order[p0 : p0 + order_file] + lo).tolist())
            views[name] = {"n": int(order.size)}
    return views


def _write_search(writer: _Writer, top_tok: np.ndarray, mx: np.ndarray, lo: int, table, n_buckets: int,
                  search_max: int) -> None:
    """Token → features (most active first) in ``n_buckets`` files keyed by the normalised token."""
    n, n_top = top_tok.shape
    # rank of each feature by max activation (descending, ties by feature); int32 throughout
    # and one int64 sort key, so the transient memory stays ~20 bytes per (feature, top token)
    rank = np.empty(n, np.int64)
    rank[np.lexsort((np.arange(n), -mx.astype(np.float64)))] = np.arange(n)
    flat = top_tok.reshape(-1)
    pos = np.flatnonzero(flat >= 0)
    fi = (pos // n_top).astype(np.int32)
    t = flat[pos]
    del pos
    order = np.argsort(t.astype(np.int64) * n + rank[fi], kind="stable")
    fi, t = fi[order], t[order]
    del order, rank
    starts = np.flatnonzero(np.r_[True, t[1:] != t[:-1]]) if t.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], t.size]
    by_bucket: dict[int, list[tuple[str, int, int]]] = {}
    for s, e in zip(starts.tolist(), ends.tolist()):
        tid = int(t[s])
        key = str(tid) if table.tok is None else _tokens.search_key(table.raw(tid))
        if key:
            by_bucket.setdefault(_tokens.bucket(key, n_buckets), []).append((key, s, e))
    for bk in range(n_buckets):
        entries: dict[str, list[int]] = {}
        for key, s, e in by_bucket.get(bk, ()):
            entries.setdefault(key, []).extend(fi[s:e][:search_max].tolist())
        out = {}
        for key, feats in entries.items():
            f = np.unique(np.asarray(feats, np.int64))
            f = f[np.lexsort((f, -mx[f].astype(np.float64)))][:search_max]
            out[key] = (f + lo).tolist()
        writer.put(f"search/{bk:03d}", out)
