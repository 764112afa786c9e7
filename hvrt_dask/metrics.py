"""``hvrt_dask.metrics``: fidelity, privacy and utility metrics for synthetic data.

The implementation lives in :mod:`hvrt_dask.hvrt.metrics`; this module is its public path
(``from hvrt_dask.metrics import marginal_fidelity``).
"""

from hvrt_dask.hvrt.metrics import *  # noqa: F403
from hvrt_dask.hvrt.metrics import __all__  # noqa: F401
