"""``python -m pipelines``: the ``hvrt-dask`` command."""

from __future__ import annotations

# The guard matters: LocalCluster workers are spawned processes that re-import __main__.
if __name__ == "__main__":
    from pipelines.cli import main

    main()
