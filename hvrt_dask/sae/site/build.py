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
from hvrt_dask.sae.output import RANGE_ARRAYS, open_output, read_range_examples
from hvrt_dask.sae.site import tokens as _tokens
from hvrt_dask.sae.site.data import Writer, rounded
from hvrt_dask.sae.site.index import FILTERS, filter_mask, top_tokens, write_rows, write_search, write_views
from hvrt_dask.sae.site.pages import features_per_shard, write_shards, write_vocab

log = logging.getLogger("hvrt_dask.sae.site")

KIND = "sae.site"
RANGE_VARS = tuple(RANGE_ARRAYS) + ("range_start", "range_count")
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
    m = int(ds.attrs["config"].get("range_examples", 0)) if has_range else 0
    n_bins = int(ds.sizes["bin"])
    # window elements per feature, as shown and as read (a feature's range examples fill a few
    # bins; they are stored one row per example)
    per_feature_window = k * w + (min(n_bins, 8) * m * w if has_range else 0)
    fps = features_per_shard(_setting(ov, "features-per-shard"), per_feature_window)
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
    writer = Writer(out)
    vocab_size = write_vocab(writer, table, vocab_file)
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
    names = list(_STATS + _TOPK)
    group = zarr.open_group(src, mode="r")  # plain slice reads: no dask graph per block
    for a in range(lo, hi, block):
        b = min(hi, a + block)
        sub = {v: group[v][a:b] for v in names}
        if has_range:
            sub.update(read_range_examples(group, a, b))
        i0 = a - lo
        for c in cols:
            cols[c][i0 : i0 + (b - a)] = sub[c]
        live = sub["topk_sample"] >= 0
        tt = top_tokens(sub["window_tokens"][:, :, center], live, n_top)
        top_tok[i0 : i0 + (b - a)] = tt
        write_rows(writer, sub, tt, table, i0, a, rows_per_file)
        write_shards(writer, sub, table, i0, a, fps, has_range)
        if progress:
            log.info("site: features %d-%d of %d written (%.1f s)", a, b, hi, time.perf_counter() - t0)
    views = write_views(writer, cols, lo, order_file, rare, dense)
    write_search(writer, top_tok, cols["max_activation"], lo, table, n_buckets, search_max)
    lower, upper = ds.bin_lower.values, ds.bin_upper.values
    meta = {
        "format": "hvrt_dask.sae_site/1",
        "f0": lo, "n": n, "n_all": n_all, "top_k": k, "range_m": m, "has_range": has_range,
        "features_per_shard": fps, "rows_per_file": rows_per_file, "order_file": order_file,
        "page_size": page_size, "search_buckets": n_buckets, "search_max": search_max,
        "rare_density": rare, "dense_density": dense,
        "bin_lower": rounded(lower), "bin_upper": rounded(upper),
        "window_offset": ds.window_offset.values.astype(int).tolist(),
        "views": views, "counts": {f: int(filter_mask(cols, f, rare, dense).sum()) for f in FILTERS},
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

