"""``HVRT.reduce``: representative subset selection as ``map_blocks`` over partition chunks."""

from __future__ import annotations

from typing import Any


class ReduceMixin:
    """Adds :meth:`reduce` to the fitted HVRT estimator (work in progress)."""

    def reduce(
        self,
        n: int | None = None,
        ratio: float | None = None,
        method: Any = "fps",
        variance_weighted: bool | str = True,
        return_indices: bool = False,
        X: Any = None,
        output: Any = None,
        min_samples_per_partition: int | None = None,
    ) -> Any:
        """Select a representative subset of the training rows (see docs/reduce.md)."""
        raise NotImplementedError("reduce() is being implemented")
