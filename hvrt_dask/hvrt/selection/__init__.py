"""Selection strategies for ``HVRT.reduce`` and their registry.

Built in: ``stratified``, ``centroid_fps`` (alias ``fps``), ``medoid_fps``,
``variance_ordered``; each module registers its strategy when imported. Register your own
object implementing :class:`~hvrt_dask.hvrt.selection.base.SelectionStrategy` the same way:
``SELECTION_STRATEGIES.register(obj, "alias")``.
"""

from __future__ import annotations

from hvrt_dask.hvrt.selection.base import (
    SELECTION_STRATEGIES,
    SelectionStrategy,
    get_selection_strategy,
)
from hvrt_dask.hvrt.selection.fps import (
    CentroidFPSStrategy,
    FPSContext,
    MedoidFPSStrategy,
    centroid_fps,
    medoid_fps,
)
from hvrt_dask.hvrt.selection.stratified import StratifiedContext, StratifiedStrategy, stratified
from hvrt_dask.hvrt.selection.variance_ordered import (
    VarianceOrderedContext,
    VarianceOrderedStrategy,
    variance_ordered,
)

__all__ = [
    "SELECTION_STRATEGIES",
    "SelectionStrategy",
    "get_selection_strategy",
    "StratifiedStrategy",
    "StratifiedContext",
    "CentroidFPSStrategy",
    "MedoidFPSStrategy",
    "FPSContext",
    "VarianceOrderedStrategy",
    "VarianceOrderedContext",
    "stratified",
    "centroid_fps",
    "medoid_fps",
    "variance_ordered",
]
