"""hvrt_dask: HVRT synthetic-data expansion/reduction and exact SAE feature extraction on Dask."""

from __future__ import annotations

from hvrt_dask import config  # noqa: F401  (registers dask.config defaults)

__version__ = "0.1.0"

# Public names are imported lazily so that ``import hvrt_dask`` stays cheap (no torch import).
_LAZY = {
    "HVRT": "hvrt_dask.hvrt.estimator",
    "FastHVRT": "hvrt_dask.hvrt.estimator",
    "HART": "hvrt_dask.hvrt.estimator",
    "FastHART": "hvrt_dask.hvrt.estimator",
    "PyramidHART": "hvrt_dask.hvrt.estimator",
    "metrics": "hvrt_dask.metrics",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(_LAZY[name])
        return mod if name == "metrics" else getattr(mod, name)
    raise AttributeError(f"module 'hvrt_dask' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
