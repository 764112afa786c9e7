"""What a stage adapter gets besides its config section (shared by runs and stages)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageContext:
    """The run context of one stage.

    Attributes
    ----------
    run_dir : str
        The run directory.
    seed : int
        ``run.seed`` (the engines' ``seed`` / ``random_state`` unless the section sets one).
    client : distributed.Client or None
        The run's client.
    resume : bool
        Continue the stage's own interrupted output (resumable engines only).
    overwrite : bool
        Start the stage's output over (only an output we own is ever cleared).
    echo : callable
        Prints one line.
    run_id : str, optional
        Written into the ownership markers of the outputs.
    progress : bool
        Whether engines show their own progress displays.
    """

    run_dir: str
    seed: int
    client: Any
    resume: bool
    overwrite: bool
    echo: Callable[[str], Any] = print
    run_id: str | None = None
    progress: bool = False
    info: dict[str, Any] = field(default_factory=dict)
