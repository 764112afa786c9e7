"""Text sources for capture: files, JSONL, directories, the bundled KJV corpus, bad input."""

from __future__ import annotations

import json
import sqlite3

import pytest

from hvrt_dask.sae.corpora import kjv_db_path, load_documents


def test_plain_text_paragraphs(tmp_path):
    fn = tmp_path / "a.txt"
    fn.write_text("First line\nsame paragraph.\n\n\nSecond paragraph.\n   \nThird.\n")
    assert load_documents(fn) == ["First line same paragraph.", "Second paragraph.", "Third."]


def test_jsonl_text_field_and_custom_field(tmp_path):
    fn = tmp_path / "a.jsonl"
    fn.write_text("\n".join(json.dumps(r) for r in [{"text": "one", "id": 1}, {"text": "  "}, {"text": "two"}]) + "\n\n")
    assert load_documents(fn) == ["one", "two"]
    fn2 = tmp_path / "b.jsonl"
    fn2.write_text(json.dumps({"body": "x"}) + "\n")
    assert load_documents(fn2, text_field="body") == ["x"]
    with pytest.raises(ValueError, match="no 'text' field"):
        load_documents(fn2)


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    fn = tmp_path / "bad.jsonl"
    fn.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_documents(fn)


def test_directory_sorted_and_mixed(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "ay"}) + "\n")
    (tmp_path / "sub" / "c.txt").write_text("see")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    assert load_documents(tmp_path) == ["ay", "bee", "see"]


def test_list_source_and_max_documents():
    assert load_documents(["a", " ", "b", "c"], max_documents=2) == ["a", "b"]
    with pytest.raises(TypeError, match="document 1"):
        load_documents(["a", 3])


@pytest.mark.parametrize("bad", ["missing.txt", "no/such/dir"])
def test_missing_source(tmp_path, bad):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(tmp_path / bad)


def test_empty_sources(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(ValueError, match="empty"):
        load_documents(empty)
    with pytest.raises(ValueError, match="empty"):
        load_documents(["", "   "])
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(ValueError, match="no text files"):
        load_documents(d)


def test_kjv_chapters_match_database():
    docs = load_documents("kjv")
    con = sqlite3.connect(kjv_db_path())
    n_chapters = con.execute("SELECT COUNT(*) FROM (SELECT DISTINCT TestamentID, BookID, ChapterID FROM Bible)").fetchone()[0]
    first_two = [r[0] for r in con.execute("SELECT Passage1 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID LIMIT 2")]
    con.close()
    assert len(docs) == n_chapters
    # verse numbers ("1:1 ") are stripped, verses of a chapter joined with spaces
    assert docs[0].startswith(first_two[0].split(" ", 1)[1] + " " + first_two[1].split(" ", 1)[1])
    assert not any(d[:1].isdigit() and ":" in d[:6] for d in docs[:50])
    verses = load_documents("kjv-verses")
    assert len(verses) > len(docs) > 1000
