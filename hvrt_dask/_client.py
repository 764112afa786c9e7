"""Finding the distributed client a stage should use."""

from __future__ import annotations

from typing import Any


def resolve_client(client: Any = None) -> Any:
    """Return ``client``, else the default ``distributed`` client, else ``None``.

    ``None`` means "no cluster": callers then run their tasks in the calling process.
    """
    if client is not None:
        return client
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None
