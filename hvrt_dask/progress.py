"""One progress display for every engine and stage: tqdm bars where a person watches, plain lines otherwise.

``hvrt.progress`` (package YAML; ``DASK_HVRT__PROGRESS``) selects the display:

``auto``
    tqdm's auto mode (a bar on a terminal, a widget in Jupyter) when someone is watching;
    plain lines when output is not a terminal, so cron and batch logs hold no ``\\r`` bars.
``plain``
    plain lines, at most one per ``hvrt.progress-interval`` seconds, plus the last one.
``none``
    nothing.

Engines take ``progress=True/False`` (False: silent whatever the mode).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from hvrt_dask import config

MODES = ("auto", "plain", "none")


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None and "IPKernelApp" in ip.config:
            return True
    except Exception:  # IPython absent or not a kernel: decided by the terminal
        pass
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def mode() -> str:
    """``"bar"``, ``"plain"`` or ``"none"`` for this process (see module docstring)."""
    setting = str(config.get("progress"))
    if setting not in MODES:
        raise ValueError(f"hvrt.progress must be one of {MODES}, got {setting!r}")
    if setting in ("none", "plain"):
        return setting
    return "bar" if _interactive() else "plain"


class Bar:
    """Progress of ``total`` units of work.

    Parameters
    ----------
    total : int
    desc : str
        Shown before the bar and at the start of each plain line.
    unit : str
    enabled : bool
        False: no display at all (the engines' ``progress=False``).
    echo : callable, optional
        Where plain lines go (default: stderr).
    """

    def __init__(self, total: int, desc: str, unit: str = "it", enabled: bool = True,
                 echo: Callable[[str], Any] | None = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self.mode = mode() if enabled else "none"
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.every = float(config.get("progress-interval"))
        self.t0 = time.perf_counter()
        self.last = -float("inf")
        self.postfix = ""
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, leave=False)

    def update(self, n: int = 1, postfix: str = "") -> None:
        """Advance by ``n`` units; ``postfix`` is shown next to the bar / in the plain line."""
        self.n += n
        self.postfix = postfix
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(n)
        elif self.mode == "plain":
            now = time.perf_counter()
            if now - self.last >= self.every or self.n >= self.total:
                self.last = now
                self.echo(self.line())

    def line(self) -> str:
        """The plain-line form: ``desc: n/total unit (elapsed) postfix``."""
        el = time.perf_counter() - self.t0
        tail = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {self.n}/{self.total} {self.unit} ({el:.1f}s){tail}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
