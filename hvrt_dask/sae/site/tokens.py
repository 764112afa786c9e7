"""Tokens as people read them, and safe to show.

:class:`TokenTable` maps a token id to its display entry ``[text, flags]`` or
``[text, flags, full]``:

* decoded with the activation store's tokenizer (``transformers.AutoTokenizer``, offline);
  WordPiece continuation pieces (``##oth``) lose their ``##`` and join the previous piece,
  other word-level pieces get a separating space (flag ``WORD_START``); byte-level BPE and
  SentencePiece pieces carry their own leading space;
* special tokens (``[CLS]``, ``<|endoftext|>``) are flagged ``SPECIAL`` (shown dimmed);
* whitespace is visible: newline ``↵``, tab ``⇥``, carriage return ``␍``, a token made only of
  spaces as ``·`` per space;
* bidirectional controls (U+202A–U+202E, U+2066–U+2069, U+200E/U+200F, U+061C) and other
  control characters are replaced by a visible ``[U+XXXX]``, so they cannot reorder what
  follows (the page also isolates every token with ``unicode-bidi: isolate``);
* text longer than ``max_chars`` is truncated with ``…`` (flag ``TRUNCATED``; the full text
  is the third element, shown on hover).

Without a tokenizer the ids are shown as ``[id]``; :func:`load_tokenizer` says why (the site
shows that notice on every page and logs it).
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from typing import Any

log = logging.getLogger("hvrt_dask.sae.site")

SPECIAL = 1
WORD_START = 2
TRUNCATED = 4

_BIDI = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C))
_VISIBLE = {"\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}


def visible_text(raw: str) -> str:
    """``raw`` with whitespace made visible and bidi/control characters replaced by ``[U+XXXX]``."""
    if raw and raw.strip(" ") == "":
        return "\u00b7" * len(raw)
    out = []
    for ch in raw:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"[U+{ord(ch):04X}]")
        else:
            out.append(ch)
    return "".join(out)


def entry(raw: str, flags: int, max_chars: int) -> list:
    """The display entry of one token: ``[text, flags]`` or ``[text, flags | TRUNCATED, full]``."""
    text = visible_text(raw)
    if len(text) > max_chars:
        return [text[: max(1, max_chars - 1)] + "\u2026", flags | TRUNCATED, text]
    return [text, flags]


def load_tokenizer(name: str | None) -> tuple[Any, str | None]:
    """The store's tokenizer and a notice (None when it loaded).

    The notice says why token ids are shown instead of text: no tokenizer named by the
    store, a name that is not a local directory, or the loader's error. It is logged as a
    warning; there is no silent fallback.
    """
    if not name:
        notice = "The activation store names no tokenizer: tokens are shown as ids."
    elif not os.path.isdir(str(name)):
        notice = f"The store's tokenizer {str(name)!r} is not a local directory: tokens are shown as ids."
    else:
        try:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(name), local_files_only=True), None
        except Exception as exc:  # any loader failure becomes the page's notice, never silent
            notice = f"The store's tokenizer {str(name)!r} failed to load ({type(exc).__name__}: {exc}): tokens are shown as ids."
    log.warning("%s", notice)
    return None, notice


def _model_kind(tok) -> str:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        return "slow"
    return type(backend.model).__name__  # WordPiece, WordLevel, BPE, Unigram


class TokenTable:
    """Cached id → display entry for one tokenizer (or ids when ``tokenizer`` is None).

    Parameters
    ----------
    tokenizer : transformers tokenizer or None
    max_chars : int
        Display length before truncation.
    """

    def __init__(self, tokenizer: Any, max_chars: int):
        self.tok = tokenizer
        self.max_chars = int(max_chars)
        self._cache: dict[int, list] = {}
        self._json: dict[int, str] = {}
        if tokenizer is not None:
            self.kind = _model_kind(tokenizer)
            self.special = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", ()) or ())
        else:
            self.kind, self.special = "ids", frozenset()

    def __call__(self, tid: int) -> list:
        tid = int(tid)
        e = self._cache.get(tid)
        if e is None:
            e = self._cache[tid] = self._make(tid)
        return e

    def json(self, tid: int) -> str:
        """The entry of ``tid`` as ASCII JSON text (cached)."""
        j = self._json.get(tid)
        if j is None:
            j = self._json[tid] = json.dumps(self(tid), ensure_ascii=True, separators=(",", ":"))
        return j

    def raw(self, tid: int) -> str:
        """The decoded text of one id (before visibility/truncation), for search keys."""
        return self._text(int(tid))[0]

    def _text(self, tid: int) -> tuple[str, int]:
        if self.tok is None:
            return f"[{tid}]", WORD_START
        if tid in self.special:
            return str(self.tok.convert_ids_to_tokens(tid)), SPECIAL | WORD_START
        if self.kind == "slow":
            return self.tok.decode([tid]), 0
        piece = self.tok.convert_ids_to_tokens(tid)
        if piece is None:
            return f"[{tid}]", WORD_START
        if self.kind in ("WordPiece", "WordLevel"):
            if piece.startswith("##"):
                return piece[2:], 0
            return piece, WORD_START
        if "\u2581" in piece:  # SentencePiece word boundary
            return piece.replace("\u2581", " "), 0
        return self.tok.convert_tokens_to_string([piece]), 0

    def _make(self, tid: int) -> list:
        text, flags = self._text(tid)
        return entry(text, flags, self.max_chars)


def search_key(text: str) -> str:
    """The normalised form searched by the index: no ``##``/``▁``/surrounding whitespace, case-folded."""
    t = text.strip()
    if t.startswith("##"):
        t = t[2:]
    return t.replace("\u2581", "").strip().casefold()


def bucket(key: str, n_buckets: int) -> int:
    """FNV-1a (32 bit) over the UTF-16 code units of ``key``, mod ``n_buckets`` (same in site.js)."""
    h = 0x811C9DC5
    b = key.encode("utf-16-le")
    for i in range(0, len(b), 2):
        h ^= b[i] | (b[i + 1] << 8)
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h % n_buckets
