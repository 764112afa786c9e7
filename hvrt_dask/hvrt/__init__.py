"""HVRT on Dask: partition tree, partition-aligned chunks, expand() and reduce().

The public API for strategy authors and for reading outputs back:

- :class:`ChunkPartitions` — the per-chunk partition table a strategy's ``prepare`` gets;
- :data:`GENERATION_STRATEGIES` / :class:`GenerationStrategy` and
  :data:`SELECTION_STRATEGIES` / :class:`SelectionStrategy` — the registries and protocols;
- :func:`read_output` — an ``expand``/``reduce`` output (Zarr or Parquet) as a DataFrame;
- the estimators ``HVRT``, ``FastHVRT``, ``HART``, ``FastHART``, ``PyramidHART``.
"""

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.estimator import HART, HVRT, FastHART, FastHVRT, PyramidHART
from hvrt_dask.hvrt.generation import GENERATION_STRATEGIES, GenerationStrategy, get_generation_strategy
from hvrt_dask.hvrt.output import read_output
from hvrt_dask.hvrt.selection import SELECTION_STRATEGIES, SelectionStrategy, get_selection_strategy

__all__ = [
    "ChunkPartitions",
    "GENERATION_STRATEGIES",
    "GenerationStrategy",
    "get_generation_strategy",
    "SELECTION_STRATEGIES",
    "SelectionStrategy",
    "get_selection_strategy",
    "read_output",
    "HVRT",
    "FastHVRT",
    "HART",
    "FastHART",
    "PyramidHART",
]
