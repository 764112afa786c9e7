"""The site builder's data files against the extraction output they come from (no browser)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from _site_data import tiny_output, word_tokenizer
from hvrt_dask import ownership
from hvrt_dask.sae.output import dense_range_examples, open_output
from hvrt_dask.sae.site import KIND, build_site
from hvrt_dask.sae.site.build import feature_span
from hvrt_dask.sae.site.tokens import bucket, search_key


def read_data(site, key):
    with open(os.path.join(site, "data", *key.split("/")) + ".js", encoding="ascii") as f:
        text = f.read()
    prefix = f"HVRT.receive({json.dumps(key)},"
    assert text.startswith(prefix) and text.endswith(");\n")
    return json.loads(text[len(prefix):-3])


def sig5(x):
    return float(f"{float(x):.5g}")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tiny_output(tmp_path_factory.mktemp("site-out"), range_m=3)


@pytest.fixture(scope="module")
def site(out, tmp_path_factory):
    return build_site(out, tmp_path_factory.mktemp("site") / "s", features_per_shard=4, rows_per_file=8, order_file=5,
                      top_tokens=3)


def test_rows_and_feature_shards_match_output(out, site):
    ds = open_output(out).load()
    meta = read_data(site.path, "meta")
    assert meta["n"] == 16 and meta["has_range"] and meta["range_m"] == 3
    assert meta["bin_lower"] == [sig5(v) for v in ds.bin_lower.values]
    for f in range(16):
        rows = read_data(site.path, f"rows/{f // 8:06d}")
        i = f - rows["f0"]
        assert rows["max"][i] == sig5(ds.max_activation[f]) and rows["n_active_tokens"][i] == int(ds.n_active_tokens[f])
        shard = read_data(site.path, f"feat/0000/{f // 4:06d}")
        rec = shard["features"][f - shard["f0"]]
        assert rec["f"] == f
        h = ds.hist.values[f]
        assert rec["hist"] == [[int(b), int(h[b])] for b in np.flatnonzero(h)]
        live = ds.topk_sample.values[f] >= 0
        assert [e[0] for e in rec["top"]] == ds.topk_sample.values[f][live].tolist()
        assert [e[3] for e in rec["top"]] == ds.window_tokens.values[f][live].tolist()
        for e, acts in zip(rec["top"], ds.window_acts.values[f][live]):
            assert e[4] == [-1 if np.isnan(a) else sig5(a) for a in acts]  # -1: no activation
        rs = dense_range_examples(out, f, f + 1)["range_sample"][0]
        want = {int(b): rs[b][rs[b] >= 0].tolist() for b in np.flatnonzero((rs >= 0).any(axis=1))}
        assert {b: [e[0] for e in exs] for b, exs in rec["range"]} == want


def test_sorted_views_match_independent_sort(out, site):
    ds = open_output(out).load()
    meta = read_data(site.path, "meta")
    for key in ("max_activation", "density", "frequency"):
        v = ds[key].values.astype(np.float64)
        want = sorted(range(16), key=lambda f: (-v[f], f))
        n = meta["views"][f"all-{key}"]["n"]
        got = [i for p in range(0, n, 5) for i in read_data(site.path, f"order/all-{key}/{p // 5:06d}")]
        assert got == want
    dead = ds.dead.values
    assert meta["counts"]["dead"] == int(dead.sum())
    dense = (~dead) & (ds.density.values > meta["dense_density"])
    assert meta["counts"]["dense"] == int(dense.sum())
    assert meta["views"]["dense-feature"]["n"] == int(dense.sum())


def test_search_index_lists_features_by_top_token(out, site):
    ds = open_output(out).load()
    c = int(np.flatnonzero(ds.window_offset.values == 0)[0])
    centre = ds.window_tokens.values[:, :, c]
    live = ds.topk_sample.values >= 0
    mx = ds.max_activation.values.astype(np.float64)
    for t in (0, 7, 13):
        # top_tokens=3 of at most 4 examples: a token is listed when it is among the 3 most frequent
        expect = set()
        for f in range(16):
            toks = centre[f][live[f]].tolist()
            counts = {}
            for r, tok in enumerate(toks):
                counts.setdefault(tok, [0, r])[0] += 1
            top3 = sorted(counts, key=lambda k: (-counts[k][0], counts[k][1]))[:3]
            if t in top3:
                expect.add(f)
        got = read_data(site.path, f"search/{bucket(str(t), 256):03d}").get(str(t), [])
        assert set(got) == expect
        assert got == sorted(got, key=lambda f: (-mx[f], f))


def test_tokenizer_display_and_notice(tmp_path, caplog):
    words = [f"w{i}" for i in range(20)]
    words[1] = "##ish"  # a continuation piece in a word-level vocabulary
    path = tiny_output(tmp_path, tokenizer=word_tokenizer(tmp_path / "tok", words))
    res = build_site(path, tmp_path / "site")
    assert res.tokenizer_notice is None
    vocab = read_data(res.path, "vocab/000000")
    assert vocab["v0"] == 0 and len(vocab["entries"]) == 22  # 20 words, [UNK], [CLS]
    assert vocab["entries"][:2] == [["w0", 2], ["ish", 0]] and vocab["entries"][21] == ["[CLS]", 3]
    assert search_key("##ish") == "ish"
    # missing tokenizer: notice in the page, the data and the log
    out2 = tiny_output(tmp_path / "b", tokenizer=tmp_path / "nowhere")
    with caplog.at_level(logging.WARNING, logger="hvrt_dask.sae.site"):
        res2 = build_site(out2, tmp_path / "site2")
    assert "is not a local directory" in res2.tokenizer_notice
    assert res2.tokenizer_notice in caplog.text
    assert read_data(res2.path, "meta")["tokenizer_notice"] == res2.tokenizer_notice
    assert "tokens are shown as ids" in open(res2.index).read()
    # a tokenizer directory that fails to load says why
    bad = tmp_path / "badtok"
    bad.mkdir()
    (bad / "tokenizer_config.json").write_text("{not json")
    out3 = tiny_output(tmp_path / "c", tokenizer=bad)
    res3 = build_site(out3, tmp_path / "site3")
    assert "failed to load" in res3.tokenizer_notice


def test_feature_span_checks_without_materialising():
    assert feature_span(None, 5) == (0, 5)
    assert feature_span(range(2, 4), 5) == (2, 4)
    assert feature_span(slice(1, None), 5) == (1, 5)
    with pytest.raises(ValueError, match=r"out of range: the output has 5 features"):
        feature_span(range(10**18), 5)
    with pytest.raises(ValueError, match="step 1"):
        feature_span(range(0, 4, 2), 5)
    with pytest.raises(ValueError, match="select no feature"):
        feature_span(range(3, 3), 5)
    with pytest.raises(ValueError, match="range with step 1"):
        feature_span([1, 2], 5)


def test_tiny_sae_defaults_and_subrange(tmp_path):
    path = tiny_output(tmp_path, d_sae=3)
    res = build_site(path, tmp_path / "site")  # every default, 3 features
    assert res.n_features == 3 and read_data(res.path, "meta")["n"] == 3
    sub = build_site(path, tmp_path / "sub", features=range(1, 3))
    meta = read_data(sub.path, "meta")
    assert (meta["f0"], meta["n"]) == (1, 2)
    assert read_data(sub.path, "rows/000000")["f0"] == 1
    with pytest.raises(ValueError, match="out of range"):
        build_site(path, tmp_path / "huge", features=range(10**15))
    assert not (tmp_path / "huge").exists()


def test_ownership(out, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ownership.OwnershipError, match="not written by hvrt_dask"):
        build_site(out, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(os.listdir(foreign)) == 1
    with pytest.raises(ownership.OwnershipError, match="input"):
        build_site(out, os.path.join(out, "site"))
    # an incomplete output is refused before anything is written
    with pytest.raises(ValueError, match="incomplete"):
        build_site(tmp_path, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    # our own site is rebuilt (owner first, completion last)
    s = tmp_path / "s"
    build_site(out, s)
    assert ownership.owned_by(s, KIND) and ownership.is_complete(s)
    build_site(out, s, page_size=7)
    assert read_data(str(s), "meta")["page_size"] == 7
    with pytest.raises(ValueError, match="unknown site setting"):
        build_site(out, tmp_path / "x", page_sise=7)
    with pytest.raises(ValueError, match="features-per-shard"):
        build_site(out, tmp_path / "y", features_per_shard=0)
    with pytest.raises(ValueError, match="vocab-file"):
        build_site(out, tmp_path / "z", vocab_file=0)
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z"))  # settings checked before any write
