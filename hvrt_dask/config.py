"""Package defaults in the ``hvrt`` namespace of :mod:`dask.config`.

The defaults live in ``hvrt_dask.yaml`` next to this module and are registered with
:func:`dask.config.update_defaults` at import time, so that YAML files in
``~/.config/dask/``, ``DASK_HVRT__…`` environment variables and ``dask.config.set`` all
override them in the usual dask order. Nothing is written to the user's home directory.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_FN = os.path.join(os.path.dirname(__file__), "hvrt_dask.yaml")

with open(_FN) as _f:
    DEFAULTS: dict[str, Any] = yaml.safe_load(_f)

dask.config.update_defaults(DEFAULTS)


def get(key: str, default: Any = None) -> Any:
    """Return the resolved value of ``hvrt.<key>``.

    Parameters
    ----------
    key : str
        Dotted key below the ``hvrt`` namespace, e.g. ``"tree.sample-size"``.
    default : Any, optional
        Returned when the key is not set anywhere.
    """
    return dask.config.get(f"hvrt.{key}", default=default)
