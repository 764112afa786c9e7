"""The generation-strategy protocol.

A generation strategy turns the rows of one partition-aligned chunk into synthetic rows,
in two steps that both run on the workers:

``prepare(Xz, parts, params) -> context``
    Once per chunk (``map_blocks`` over the grouped training data). ``Xz`` holds the chunk's
    *continuous* columns in z-space, rows grouped by partition as described by ``parts``
    (:class:`~hvrt_dask.hvrt._chunks.ChunkPartitions`). ``params`` is a read-only mapping of
    the strategy's options (e.g. ``{"bandwidth": 0.1}``) and is part of the cache key.
    The context is cached on the fitted model, so a second ``expand()`` skips this step.

``generate(context, budgets, rngs) -> (Z, base)``
    ``budgets[i]`` rows for partition ``i`` of the chunk, drawn **only** from ``rngs[i]``
    (the partition's own stream, keyed by seed, call and partition id, so output does not
    depend on chunking). Returns ``Z`` of shape ``(budgets.sum(), d_cont)`` in z-space, rows
    grouped by partition in chunk order, and ``base`` of shape ``(budgets.sum(),)``: the
    chunk-local index of the training row each synthetic row was built around, or ``-1``
    where the strategy has no base row (the driver then draws one uniformly from the
    partition to attach the categorical tuple).

Register a custom strategy with ``GENERATION_STRATEGIES.register(MyStrategy())``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt._registry import Registry


@runtime_checkable
class GenerationStrategy(Protocol):
    """Protocol every generation strategy implements (see module docstring)."""

    name: str

    def prepare(self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]) -> Any: ...

    def generate(
        self, context: Any, budgets: np.ndarray, rngs: Sequence[np.random.Generator]
    ) -> tuple[np.ndarray, np.ndarray]: ...


GENERATION_STRATEGIES: Registry[GenerationStrategy] = Registry("generation strategy")


def get_generation_strategy(name_or_obj: str | GenerationStrategy) -> GenerationStrategy:
    """Resolve a registered generation strategy by name (objects pass through)."""
    return GENERATION_STRATEGIES.get(name_or_obj)
