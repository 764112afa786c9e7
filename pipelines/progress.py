"""Progress for the run layer: tqdm on a terminal or in Jupyter, plain lines otherwise.

``pipelines.progress`` selects the display: ``auto`` (tqdm's auto mode — a bar on a terminal,
a widget in Jupyter — and plain log lines when output is not a terminal, so cron logs hold
no ``\\r`` bars), ``plain`` or ``none``. Engines with their own displays (capture, training,
extraction: dashboard link, distributed's progress) only show them in bar mode.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from hvrt_dask import config as hconfig

MODES = ("auto", "plain", "none")


def _interactive() -> bool:
    try:
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None and "IPKernelApp" in ip.config:
            return True
    except Exception:  # IPython absent or not a kernel
        pass
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def mode() -> str:
    """``"bar"``, ``"plain"`` or ``"none"`` for this process."""
    setting = str(hconfig.get("pipelines.progress"))
    if setting == "none":
        return "none"
    if setting == "plain":
        return "plain"
    return "bar" if _interactive() else "plain"


def engines_show_progress() -> bool:
    """Whether engines should draw their own progress displays."""
    return mode() == "bar"


class Steps:
    """The steps of one stage: a tqdm bar, or one plain line per step."""

    def __init__(self, name: str, total: int, echo: Callable[[str], Any] = print):
        self.name, self.total, self.echo = name, total, echo
        self.i = 0
        self.t0 = time.perf_counter()
        self.mode = mode()
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=name, unit="step", file=sys.stderr, leave=False)

    def step(self, label: str) -> None:
        self.i += 1
        if self.bar is not None:
            if self.i > 1:
                self.bar.update(1)
            self.bar.set_postfix_str(label)
        elif self.mode == "plain":
            self.echo(f"[{self.name}] step {self.i}/{self.total}: {label} ({time.perf_counter() - self.t0:.1f}s)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
            self.bar = None
