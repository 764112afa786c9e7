"""Shared fixtures: one real multi-process LocalCluster for the session, a sync scheduler."""

from __future__ import annotations

import os

import dask
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: no GPU
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "requires_gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster():
    """A real two-process LocalCluster bound to 127.0.0.1, shared by the whole session."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        memory_limit="4GiB",
    ) as lc:
        yield lc


@pytest.fixture
def client(cluster):
    """A Client on the session cluster, set as the default scheduler for this test only."""
    from distributed import Client

    with Client(cluster, set_as_default=True) as c:
        yield c


@pytest.fixture
def sync_scheduler():
    """Run dask collections with the single-threaded synchronous scheduler."""
    with dask.config.set(scheduler="sync"):
        yield
