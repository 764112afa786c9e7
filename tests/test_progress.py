"""One progress display: tqdm bars when watched, plain rate-limited lines otherwise, or nothing."""

from __future__ import annotations

import io
import sys

import dask
import pytest

from hvrt_dask import progress


def _lines(monkeypatch, setting, n=5, interval=0.0, enabled=True):
    got = []
    with dask.config.set({"hvrt.progress": setting, "hvrt.progress-interval": interval}):
        bar = progress.Bar(n, "work", unit="chunk", enabled=enabled, echo=got.append)
        for i in range(n):
            bar.update(1, f"item {i}")
        bar.close()
    return got, bar


def test_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a tty, not a kernel
    got, bar = _lines(monkeypatch, "auto")
    assert bar.mode == "plain"
    assert got == [f"work: {i + 1}/5 chunk ({line.split('(')[1].split(')')[0]}) item {i}" for i, line in enumerate(got)]
    assert not any("\r" in line for line in got)
    assert sys.stderr.getvalue() == ""  # plain lines go to echo only


def test_plain_lines_are_rate_limited_but_the_last_is_kept(monkeypatch):
    got, _ = _lines(monkeypatch, "plain", n=50, interval=3600)
    assert len(got) == 2 and got[0].startswith("work: 1/50") and got[-1].startswith("work: 50/50")


def test_none_and_disabled_are_silent(monkeypatch):
    assert _lines(monkeypatch, "none")[0] == []
    assert _lines(monkeypatch, "plain", enabled=False)[0] == []


def test_bar_mode_uses_tqdm_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    got, bar = _lines(monkeypatch, "auto", n=3)
    assert bar.mode == "bar" and got == []
    assert "work:" in err.getvalue() and "/3 [" in err.getvalue()  # tqdm drew its bar


def test_unknown_setting_is_refused():
    with dask.config.set({"hvrt.progress": "fancy"}), pytest.raises(ValueError, match="hvrt.progress"):
        progress.mode()
