"""The feature browser in a real headless Chromium (file:// and served on 127.0.0.1).

Expected values come from the extraction output (xarray), not from the site's data files.
"""

from __future__ import annotations

import os
import urllib.request

import numpy as np
import pytest

from _site_data import set_attrs, tiny_output, word_tokenizer
from hvrt_dask.sae.output import dense_range_examples, open_output
from hvrt_dask.sae.site import build_site, start_server

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser-plain")
    out = tiny_output(root, d_sae=60, range_m=3)
    # small pages so that paging, order files and row files are all exercised
    site = build_site(out, root / "site", page_size=20, order_file=7, rows_per_file=16, features_per_shard=8)
    return out, site


def url(site, page="index.html", frag=""):
    return "file://" + os.path.join(site.path, page) + frag


def ready(pg):
    pg.wait_for_selector("body[data-ready='1']", timeout=60000)


def shown_features(pg):
    return [int(x) for x in pg.eval_on_selector_all("#rows tr", "rs => rs.map(r => r.getAttribute('data-feature'))")]


def test_index_loads_sorts_filters_and_pages(plain, page, artifacts):
    out, site = plain
    ds = open_output(out).load()
    page.goto(url(site))
    ready(page)
    assert shown_features(page) == list(range(20))
    assert page.inner_text("#pageinfo") == "page 1 of 3"
    page.screenshot(path=os.path.join(artifacts, "site-index.png"), full_page=True)
    mx = ds.max_activation.values.astype(np.float64)
    by_max = sorted(range(60), key=lambda f: (-mx[f], f))
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.select_option("#sort", "max_activation")
    ready(page)
    assert shown_features(page) == by_max[:20]
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.click("#next")
    ready(page)
    assert shown_features(page) == by_max[20:40]
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.click("th[data-sort='max_activation']")  # the same column again: reversed
    ready(page)
    assert shown_features(page) == by_max[::-1][:20]
    dens = ds.density.values
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.click("th[data-sort='density']")
    ready(page)
    assert shown_features(page) == sorted(range(60), key=lambda f: (-dens[f], f))[:20]
    # filters: dense (density > 0.1) by feature, and dead
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.select_option("#sort", "feature")
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.select_option("#filter", "dense")
    ready(page)
    dense = [f for f in range(60) if not ds.dead.values[f] and dens[f] > 0.1]
    assert shown_features(page) == dense[:20]
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.select_option("#filter", "dead")
    ready(page)
    assert shown_features(page) == [f for f in range(60) if ds.dead.values[f]][:20]
    assert page.errors == []


def test_search_by_token(plain, page):
    out, site = plain
    ds = open_output(out).load()
    c = int(np.flatnonzero(ds.window_offset.values == 0)[0])
    centre, live = ds.window_tokens.values[:, :, c], ds.topk_sample.values >= 0
    mx = ds.max_activation.values.astype(np.float64)
    page.goto(url(site))
    ready(page)
    for t in (3, 11):
        # top_k 4 <= top-tokens 5: every token at an example's max position is a top token
        expect = sorted({f for f in range(60) if t in centre[f][live[f]].tolist()}, key=lambda f: (-mx[f], f))
        page.evaluate("document.body.removeAttribute('data-ready')")
        page.fill("#q", f"[{t}]")
        page.click("#go")
        ready(page)
        assert shown_features(page) == expect[:20] and len(expect) > 0
        assert page.inner_text("#status").startswith(f"{len(expect)} features with top token")
    page.evaluate("document.body.removeAttribute('data-ready')")
    page.fill("#q", "no-such-token")
    page.click("#go")
    ready(page)
    assert shown_features(page) == []


def test_feature_page_histogram_examples_and_hover(plain, page, artifacts):
    out, site = plain
    ds = open_output(out).load()
    f = int(np.argmax(ds.n_active_tokens.values))
    page.goto(url(site, "feature.html", f"#{f}"))
    ready(page)
    assert page.inner_text("#ftitle") == f"Feature {f}"
    h = ds.hist.values[f]
    bars = page.eval_on_selector_all("#histsvg rect.bar", "rs => rs.map(r => [+r.getAttribute('data-bin'), +r.getAttribute('data-count')])")
    assert {b: c for b, c in bars if c} == {int(b): int(h[b]) for b in np.flatnonzero(h)}
    heights = page.eval_on_selector_all("#histsvg rect.bar", "rs => rs.map(r => r.getBBox().height)")
    assert max(heights) > 100  # drawn, tallest bar near full height
    live = ds.topk_sample.values[f] >= 0
    labels = page.eval_on_selector_all("#topk .ex .exlabel", "xs => xs.map(x => x.textContent)")
    assert len(labels) == int(live.sum())
    assert [int(x.split("sample ")[1].split(" ")[0]) for x in labels] == ds.topk_sample.values[f][live].tolist()
    rs = dense_range_examples(out, f, f + 1)["range_sample"][0]
    assert page.locator("#range .rangebin .ex").count() == int((rs >= 0).sum())
    assert page.locator("#range-na").count() == 0
    # hover the first example's max token: the tip shows its activation
    page.hover("#topk .ex >> nth=0 >> .t.prime")
    tip = page.inner_text("#tip")
    assert tip.startswith("activation ") and page.is_visible("#tip")
    want = float(ds.topk_value.values[f, 0])
    assert abs(float(tip.split("activation ")[1].split(" ")[0]) - want) <= 1e-3 * want
    page.hover("#histsvg rect.bar[data-count='%d']" % int(h.max()))
    assert page.inner_text("#tip").endswith(f": {int(h.max())}")
    page.screenshot(path=os.path.join(artifacts, "site-feature.png"), full_page=True)
    assert os.path.getsize(os.path.join(artifacts, "site-feature.png")) > 10_000
    assert page.errors == []


def test_tiny_sae_without_tokenizer_or_range_examples(tmp_path, page):
    out = tiny_output(tmp_path, d_sae=5)
    site = build_site(out, tmp_path / "site")  # every default on 5 features
    page.goto(url(site))
    ready(page)
    assert shown_features(page) == [0, 1, 2, 3, 4] and page.inner_text("#pageinfo") == "page 1 of 1"
    assert page.is_visible("#tokenizer-notice")
    assert "names no tokenizer: tokens are shown as ids" in page.inner_text("#tokenizer-notice")
    page.goto(url(site, "feature.html", "#2"))
    ready(page)
    assert "Not available" in page.inner_text("#range-na")
    assert page.locator("#histsvg").count() == 1


HOSTILE = [
    '<img src=x onerror="window.__pwned=1">',
    "</script><script>window.__pwned=2</script>",
    "\u202eevil.exe\u202c",
    "x" * 5000,
    '" onmouseover="window.__pwned=3" x="',
    "&lt;b&gt;",
    "javascript:window.__pwned=4",
]


def test_hostile_tokens_and_attributes(tmp_path, page, artifacts):
    words = HOSTILE + [f"w{i}" for i in range(len(HOSTILE), 20)]
    out = tiny_output(tmp_path, d_sae=12, tokenizer=word_tokenizer(tmp_path / "tok", words))
    set_attrs(out, sae={"path": '"><script>window.__pwned=5</script>', "content_hash": "<img src=x onerror=window.__pwned=6>",
                        "architecture": "<svg onload=window.__pwned=7>"},
              store={"path": "/tmp/\u202etxt.exe", "model": "<iframe src=javascript:window.__pwned=8>", "layer": "<b>0</b>",
                     "tokenizer": str(tmp_path / "tok")})
    site = build_site(out, tmp_path / "site", max_token_chars=20)
    injected = """() => ({
        pwned: window.__pwned === undefined ? null : window.__pwned,
        foreign: document.querySelectorAll('img, iframe, object, embed, header svg, header b, main b').length,
        scripts: [...document.scripts].map(s => s.getAttribute('src')),
        text: document.body.innerText,
    })"""
    page.goto(url(site))
    ready(page)
    r = page.evaluate(injected)
    assert r["pwned"] is None and r["foreign"] == 0 and r["scripts"] == ["static/site.js"]
    assert '"><script>window.__pwned=5</script>' in r["text"]  # shown as text
    assert "(<img src=x o" in r["text"]  # the hash, shortened to 12 characters, as text
    ds = open_output(out).load()
    live = ds.topk_sample.values >= 0
    present = set(np.unique(ds.window_tokens.values[live]).tolist()) & set(range(len(HOSTILE)))
    display = {i: (w if len(w) <= 20 else w[:19] + "\u2026") for i, w in enumerate(HOSTILE)}
    display[2] = "[U+202E]evil.exe[U+\u2026"  # bidi controls made visible, then truncated
    seen = set()
    for f in range(12):
        page.goto(url(site, "feature.html", f"#{f}"))
        page.reload()
        ready(page)
        r = page.evaluate(injected)
        assert r["pwned"] is None and r["foreign"] == 0 and r["scripts"] == ["static/site.js"], (f, r)
        toks = page.eval_on_selector_all("#topk .t:not(.pad)", "ts => ts.map(t => [t.textContent, t.getAttribute('data-tip')])")
        for text, tip in toks:
            assert len(text) <= 20 and "\u202e" not in text
            for i, d in display.items():
                if text == d:
                    seen.add(i)
                    if d.endswith("\u2026"):
                        assert tip.endswith(HOSTILE[i] if i != 2 else "[U+202E]evil.exe[U+202C]")  # full text on hover
    assert present and seen == present
    # hover over a token carrying hostile text runs nothing either
    page.hover(".t:not(.pad) >> nth=0")
    page.screenshot(path=os.path.join(artifacts, "site-hostile.png"), full_page=True)
    assert page.evaluate("window.__pwned === undefined")
    assert page.errors == []


def test_served_on_loopback(plain, page):
    out, site = plain
    server, address = start_server(site.path, 0)
    try:
        assert address.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(address) as resp:
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        page.goto(address)
        ready(page)
        assert shown_features(page) == list(range(20))
        page.goto(address.replace("index.html", "feature.html#5"))
        ready(page)
        assert page.inner_text("#ftitle").startswith("Feature 5")
    finally:
        server.shutdown()
        server.server_close()
