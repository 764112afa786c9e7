"""Selection strategies for ``HVRT.reduce`` and their registry.

Built in: ``stratified``, ``centroid_fps`` (alias ``fps``), ``medoid_fps``,
``variance_ordered``. Register your own object implementing
:class:`~hvrt_dask.hvrt.selection.base.SelectionStrategy` with
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

for _s, _aliases in (
    (stratified, ()),
    (centroid_fps, ("fps",)),
    (medoid_fps, ()),
    (variance_ordered, ()),
):
    if _s.name not in SELECTION_STRATEGIES:
        SELECTION_STRATEGIES.register(_s, *_aliases)

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
