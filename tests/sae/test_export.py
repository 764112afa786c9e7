"""JSON Lines and HTML exports (token strings via a local tokenizer, ids without one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from _extract_data import make_sae, make_store
from hvrt_dask.sae.export import export_html, export_jsonl, feature_records
from hvrt_dask.sae.extract import extract_features
from hvrt_dask.sae.output import dense_range_examples, open_output


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    make_store(root / "store", n=30, seq=10, d_in=12, chunk=10, vocab=20)
    make_sae(root / "sae", d_in=12, d_sae=16)
    r = extract_features(root / "store", root / "sae", root / "out", top_k=4, prefix=2, suffix=3, progress=False)
    return root, r


def test_jsonl_matches_dataset(result, tmp_path):
    root, r = result
    n = export_jsonl(r.path, tmp_path / "f.jsonl")
    ds = open_output(r.path).load()
    lines = (tmp_path / "f.jsonl").read_text().splitlines()
    assert n == len(lines) - 1 == 16
    head = json.loads(lines[0])
    assert head["record"] == "header" and head["n_features"] == 16
    assert head["histogram"]["lower"] == ds.bin_lower.values.tolist()
    assert head["window_offsets"] == [-2, -1, 0, 1, 2, 3]
    assert head["sae"]["content_hash"] == ds.attrs["sae"]["content_hash"] and head["store"]["path"] == ds.attrs["store"]["path"]
    assert "No tokenizer" in head["tokenizer_notice"] or "names no tokenizer" in head["tokenizer_notice"]
    for line in lines[1:]:
        rec = json.loads(line)
        assert rec["record"] == "feature" and "lower" not in line  # shared metadata only in the header
        f = rec["feature"]
        assert rec["max_activation"] == float(ds.max_activation[f])
        assert rec["n_active_tokens"] == int(ds.n_active_tokens[f])
        assert rec["histogram"] == ds.hist.values[f].tolist()
        assert len(rec["examples"]) == int((ds.topk_sample.values[f] >= 0).sum())
        for ex in rec["examples"]:
            assert ex["sample"] == int(ds.topk_sample[f, ex["rank"]])
            assert ex["tokens"] == ds.window_tokens.values[f, ex["rank"]].tolist()
            assert ex["token_strings"] is None  # no tokenizer named by the store
            assert len(ex["acts"]) == 6 and ex["acts"][2] == ex["value"]
        # range examples: every live (bin, slot) of the feature, in order, as the dense view has it
        dense = dense_range_examples(r.path, f, f + 1)
        bins, slots = np.nonzero(dense["range_sample"][0] >= 0)
        assert [(e["bin"], e["slot"]) for e in rec["range_examples"]] == list(zip(bins.tolist(), slots.tolist()))
        for e, b, s in zip(rec["range_examples"], bins, slots):
            assert e["sample"] == int(dense["range_sample"][0, b, s]) and e["value"] == float(dense["range_value"][0, b, s])
            assert e["tokens"] == dense["range_window_tokens"][0, b, s].tolist()
            assert e["acts"] == [None if np.isnan(a) else float(a) for a in dense["range_window_acts"][0, b, s]]
    assert sum(len(json.loads(x)["range_examples"]) for x in lines[1:]) > 0


def test_jsonl_huge_range_and_failed_export_leave_no_file(result, tmp_path, monkeypatch):
    root, r = result
    with pytest.raises(ValueError, match="out of range"):
        export_jsonl(r.path, tmp_path / "huge.jsonl", features=range(10**15))  # bounds checked, not materialised
    assert not (tmp_path / "huge.jsonl").exists()
    assert export_jsonl(r.path, tmp_path / "sub.jsonl", features=range(14, 16)) == 2
    # a failure mid-stream (here: a non-finite statistic JSON cannot carry) leaves no file at all
    import hvrt_dask.sae.export as ex

    real = ex.feature_records

    def failing(*a, **k):
        for i, rec in enumerate(real(*a, **k)):
            if i == 5:
                rec["max_activation"] = float("inf")
            yield rec

    monkeypatch.setattr(ex, "feature_records", failing)
    with pytest.raises(ValueError, match="Out of range float"):
        export_jsonl(r.path, tmp_path / "bad.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".sub.jsonl.hvrt_dask-owner.json", "sub.jsonl"])
    # a file hvrt_dask did not write is never replaced
    (tmp_path / "mine.jsonl").write_text("user data\n")
    monkeypatch.setattr(ex, "feature_records", real)
    with pytest.raises(ValueError, match="not written by hvrt_dask"):
        export_jsonl(r.path, tmp_path / "mine.jsonl")
    assert (tmp_path / "mine.jsonl").read_text() == "user data\n"


def test_html_tiny_sae_and_escaping(result, tmp_path):
    root, r = result
    page = open(export_html(r.path, tmp_path / "all.html")).read()  # default on an SAE with 16 < 50 features
    assert page.count("<h2") == 16
    assert "Content-Security-Policy" in page
    # hostile attributes of a third-party output are escaped, bidi controls made visible
    import shutil
    import warnings

    copy = tmp_path / "copy.zarr"
    shutil.copytree(r.path, copy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        g = zarr.open_group(copy, mode="r+")
        g.attrs.update({"sae": {"path": "<script>x()</script>", "content_hash": "<img src=x onerror=y()>"},
                        "store": {"path": "/t/\u202eexe.txt", "tokenizer": None}})
        zarr.consolidate_metadata(copy)
    page = open(export_html(copy, tmp_path / "h.html", features=[0])).read()
    assert "<script>" not in page and "<img" not in page and "\u202e" not in page
    assert "&lt;script&gt;x()&lt;/script&gt;" in page and "&lt;img src=x" in page and "[U+202E]exe.txt" in page


def test_html_with_ids(result, tmp_path):
    root, r = result
    page = open(export_html(r.path, tmp_path / "p.html", features=range(3, 6))).read()
    assert page.count("<h2") == 3 and "Feature 3" in page and "Feature 6" not in page
    # each feature's section shows the output's values: its maximum and every top example
    # (rank, sample, position, value) with the example's own token outlined at that value
    from hvrt_dask.sae.output import open_output

    ds = open_output(r.path).load()
    sections = page.split("<h2 id='f")[1:]
    for f, sec in zip(range(3, 6), sections):
        assert sec.startswith(f"{f}'>Feature {f}")
        assert f"max {float(ds.max_activation.values[f]):.4g} · density {float(ds.density.values[f]):.3g}" in sec
        live = [r_ for r_ in range(ds.sizes["rank"]) if ds.topk_sample.values[f, r_] >= 0]
        assert sec.count("<div class='ex'>") == min(len(live), 10) > 0
        for r_ in live[:10]:
            v = float(ds.topk_value.values[f, r_])
            s_, p_ = int(ds.topk_sample.values[f, r_]), int(ds.topk_position.values[f, r_])
            ex = sec.split(f"#{r_} s{s_} p{p_} {v:.4g}</span>")[1].split("</div>")[0]
            assert f"class='t prime' style='background:rgba(255,120,0,{v / float(ds.max_activation.values[f]):.3f})' " \
                   f"title='id {int(ds.window_tokens.values[f, r_, list(ds.window_offset.values).index(0)])} · act {v:.4g}'" in ex
    assert "rgba(255,120,0," in page and "[" in page  # ids shown in brackets
    with pytest.raises(ValueError, match="out of range"):
        export_html(r.path, tmp_path / "q.html", features=[99])


def test_tokenizer_decoding(result, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    root, r = result
    vocab = {f"w{i}": i for i in range(20)}
    vocab["[UNK]"] = 20
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(str(tmp_path / "tok"))
    zarr.open_group(root / "store", mode="r+").attrs["tokenizer"] = str(tmp_path / "tok")
    out2 = tmp_path / "out2"
    extract_features(root / "store", root / "sae", out2, top_k=4, prefix=2, suffix=3, progress=False)
    recs = list(feature_records(out2, features=[0, 1, 2]))
    ex = next(e for rec in recs for e in rec["examples"])
    assert ex["token_strings"] == [None if t < 0 else f"w{t}" for t in ex["tokens"]]
    page = open(export_html(out2, tmp_path / "p.html", features=[0, 1, 2])).read()
    assert ">w" in page
    assert np.isfinite([rec["max_activation"] for rec in recs]).all()


def test_failed_export_leaves_no_file(result, tmp_path, monkeypatch):
    """An export that fails midway leaves neither a truncated file nor a temporary one."""
    import hvrt_dask.sae.export as ex

    root, r = result
    real = ex.feature_records

    def failing(*a, **k):
        for i, rec in enumerate(real(*a, **k)):
            if i == 3:
                raise RuntimeError("disk full")
            yield rec

    monkeypatch.setattr(ex, "feature_records", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        export_jsonl(r.path, tmp_path / "f.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_export_never_overwrites_user_file(result, tmp_path):
    from hvrt_dask.ownership import OwnershipError

    root, r = result
    (tmp_path / "f.jsonl").write_text("user notes")
    with pytest.raises(OwnershipError):
        export_jsonl(r.path, tmp_path / "f.jsonl")
    assert (tmp_path / "f.jsonl").read_text() == "user notes"
    export_jsonl(r.path, tmp_path / "g.jsonl")
    assert export_jsonl(r.path, tmp_path / "g.jsonl") == 16  # our own export is replaced
