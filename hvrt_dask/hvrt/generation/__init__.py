"""Generation strategies; importing this package registers the built-in ones.

See :mod:`hvrt_dask.hvrt.generation.base` for the prepare/generate protocol. Each built-in
module registers its strategy with ``GENERATION_STRATEGIES.register(...)`` when imported;
register your own the same way (``hvrt_dask.hvrt.GENERATION_STRATEGIES.register(obj)``).
"""

from hvrt_dask.hvrt.generation import bootstrap, copula, epanechnikov, gaussian_kde, mvkde  # noqa: F401
from hvrt_dask.hvrt.generation.base import (
    GENERATION_STRATEGIES,
    GenerationStrategy,
    get_generation_strategy,
)

__all__ = ["GENERATION_STRATEGIES", "GenerationStrategy", "get_generation_strategy"]
