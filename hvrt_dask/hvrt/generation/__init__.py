"""Generation strategies; importing this package registers the built-in ones.

See :mod:`hvrt_dask.hvrt.generation.base` for the prepare/generate protocol and
``GENERATION_STRATEGIES.register`` for adding your own.
"""

from hvrt_dask.hvrt.generation import bootstrap, epanechnikov  # noqa: F401
from hvrt_dask.hvrt.generation.base import (  # noqa: F401
    GENERATION_STRATEGIES,
    GenerationStrategy,
    get_generation_strategy,
)

# Written by the strategies engineer; tolerated as absent until they land.
try:
    from hvrt_dask.hvrt.generation import mvkde  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from hvrt_dask.hvrt.generation import copula  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:
    from hvrt_dask.hvrt.generation import gaussian_kde  # noqa: F401
except ImportError:  # pragma: no cover
    pass
