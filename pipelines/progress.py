"""Progress for the run layer, on the library's one display (:mod:`hvrt_dask.progress`).

``hvrt.progress`` selects it: ``auto`` (tqdm's auto mode — a bar on a terminal, a widget in
Jupyter — and plain lines when output is not a terminal, so cron logs hold no ``\\r`` bars),
``plain`` or ``none``. Engines draw their own bars only in bar mode; in plain mode the run
layer prints one line per stage step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hvrt_dask.progress import Bar, mode

__all__ = ["Steps", "engines_show_progress", "mode"]


def engines_show_progress() -> bool:
    """Whether engines should draw their own progress displays."""
    return mode() == "bar"


class Steps:
    """The steps of one stage: a bar, or one plain line per step (via the run's ``echo``)."""

    def __init__(self, name: str, total: int, echo: Callable[[str], Any] = print):
        self.bar = Bar(total, name, unit="step", echo=echo)
        self.bar.every = 0.0  # a stage has a few steps: every one is worth a line

    def step(self, label: str) -> None:
        self.bar.update(1, label)

    def close(self) -> None:
        self.bar.close()
