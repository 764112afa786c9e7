"""Worker side: a bounded cache of feature-block encoders, and the worker plugin.

A worker never loads the whole SAE: each block encoder holds only its block's slice of the
weights, read from the safetensors file (:func:`hvrt_dask.sae.weights.read_block`). The
cache keeps the ``extract.cached-blocks`` most recently used blocks per process, so worker
memory is bounded by the block size, not by ``d_sae``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from hvrt_dask import config
from hvrt_dask.sae.weights import SAEError, load_sae, read_block

_SAES: dict[tuple[str, str], object] = {}
_ENCODERS: OrderedDict = OrderedDict()
_LOCK = threading.Lock()


def get_sae(sae_path: str, sae_hash: str):
    """The SAE's configuration (no weights), once per process; a changed file is an error."""
    key = (os.path.abspath(sae_path), sae_hash)
    with _LOCK:
        sae = _SAES.get(key)
        if sae is None:
            sae = load_sae(sae_path, weights=False)
            if sae.content_hash != sae_hash:
                raise SAEError(f"SAE {sae_path!r} changed during the run (hash {sae.content_hash[:12]} != {sae_hash[:12]})")
            _SAES[key] = sae
    return sae


def get_encoder(sae_path: str, sae_hash: str, device: str | None, lo: int, hi: int):
    """The worker's :class:`~hvrt_dask.sae.encode.TorchEncoder` of features ``[lo, hi)``."""
    from hvrt_dask.sae.encode import TorchEncoder, resolve_device

    dev = str(resolve_device(device))
    key = (os.path.abspath(sae_path), sae_hash, dev, int(lo), int(hi))
    with _LOCK:
        enc = _ENCODERS.get(key)
        if enc is not None:
            _ENCODERS.move_to_end(key)
            return enc
    sae = get_sae(sae_path, sae_hash)
    enc = TorchEncoder(sae, dev, block=(lo, hi), tensors=read_block(sae, lo, hi))
    limit = max(1, int(config.get("extract.cached-blocks", 2)))
    with _LOCK:
        _ENCODERS[key] = enc
        while len(_ENCODERS) > limit:
            _ENCODERS.popitem(last=False)
    return enc


def worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a hard dependency
    WorkerPlugin = object  # type: ignore[misc,assignment]


class SAEWorkerPlugin(WorkerPlugin):
    """Sets torch's intra-op thread count of extraction workers deliberately.

    Nanny workers start with ``OMP_NUM_THREADS=1``; ``torch_threads`` maps a host to the
    thread count for workers on it (``None``: leave torch alone).
    """

    def __init__(self, sae_hash: str, torch_threads: dict[str, int] | None):
        self.torch_threads = torch_threads or {}
        self.name = f"hvrt-sae-{sae_hash[:16]}"

    def setup(self, worker) -> None:
        import torch

        host = worker.address.rsplit(":", 1)[0]
        n = self.torch_threads.get(host)
        if n:
            torch.set_num_threads(int(n))


def torch_threads(client, setting) -> dict[str, int] | None:
    """Intra-op torch threads per host: ``"auto"`` = cores of the host / worker processes on it."""
    from hvrt_dask.sae.extract.executor import scheduler_workers

    if client is None or setting in (None, "none"):
        return None
    workers = scheduler_workers(client)
    hosts: dict[str, int] = {}
    for addr in workers:
        h = addr.split("://")[-1].rsplit(":", 1)[0]
        hosts[h] = hosts.get(h, 0) + 1
    out = {}
    for addr in workers:
        h_full = addr.rsplit(":", 1)[0]
        h = addr.split("://")[-1].rsplit(":", 1)[0]
        out[h_full] = int(setting) if setting != "auto" else max(1, (os.cpu_count() or 1) // hosts[h])
    return out
