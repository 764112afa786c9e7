"""The selection-strategy protocol (``reduce``).

``prepare(Xz, parts, params) -> context``
    Once per chunk, on the workers. ``Xz`` holds *all* z-space columns of the chunk's rows
    (continuous and z-scored categorical codes), grouped by partition as ``parts`` says.
    Cached on the fitted model.

``select(context, budgets, rngs) -> indices``
    Chunk-local row indices, ``budgets[i]`` of them from partition ``i`` (``budgets[i] <=
    parts.sizes[i]``), grouped by partition in chunk order. Random strategies draw only from
    ``rngs[i]`` for partition ``i``. The driver maps the indices to global row numbers.

Register a custom strategy with ``SELECTION_STRATEGIES.register(MyStrategy(), "alias")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt._registry import Registry


@runtime_checkable
class SelectionStrategy(Protocol):
    """Protocol every selection strategy implements (see module docstring)."""

    name: str

    def prepare(self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]) -> Any: ...

    def select(
        self, context: Any, budgets: np.ndarray, rngs: Sequence[np.random.Generator]
    ) -> np.ndarray: ...


SELECTION_STRATEGIES: Registry[SelectionStrategy] = Registry("selection strategy")


def get_selection_strategy(name_or_obj: str | SelectionStrategy) -> SelectionStrategy:
    """Resolve a registered selection strategy by name (objects pass through)."""
    return SELECTION_STRATEGIES.get(name_or_obj)
