"""Frozen task parameters of an extraction: what every task of a run shares, and its units of work."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunSpec:
    """Parameters shared by every task of one extraction run (small; travels with each task).

    Attributes
    ----------
    store, sae_path, sae_hash : str
        Activation store and SAE directory (absolute) and the SAE's content hash.
    architecture : str
        The SAE architecture (``topk`` runs a threshold pass first).
    d_sae : int
    device : str or None
        Torch device of the tasks (None: CUDA when the worker has one).
    top_k, prefix, suffix : int
    batch_size : int or "auto"
    edges : tuple of float
        Inner histogram edges (float32 values).
    nonfinite : {"raise", "mask"}
    partials_dir, out : str
        Checkpoint folder and output store.
    range_m : int
        Examples per (feature, histogram bin) across the activation range
        (:mod:`hvrt_dask.sae.range_examples`); 0 disables them.
    seed : int
        The extraction's seed (keys the range examples' hash).
    """

    store: str
    sae_path: str
    sae_hash: str
    architecture: str
    d_sae: int
    device: str | None
    top_k: int
    prefix: int
    suffix: int
    batch_size: int | str
    edges: tuple[float, ...]
    nonfinite: str
    partials_dir: str
    out: str
    range_m: int = 0
    seed: int = 0

    @property
    def window(self) -> int:
        """Positions per context window."""
        return self.prefix + 1 + self.suffix


@dataclass(frozen=True)
class Chunk:
    """Samples ``[start, stop)`` of the store: one sample chunk of the run (``cid``)."""

    cid: int
    start: int
    stop: int

    @property
    def n(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Block:
    """Features ``[lo, hi)`` of the SAE: one feature block of the run (``j``)."""

    j: int
    lo: int
    hi: int

    @property
    def width(self) -> int:
        return self.hi - self.lo


def plan_chunks(n_samples: int, chunk_samples: int) -> list[Chunk]:
    """The run's sample chunks."""
    return [Chunk(i, a, min(a + chunk_samples, n_samples)) for i, a in enumerate(range(0, n_samples, chunk_samples))]


def plan_blocks(d_sae: int, feature_block: int) -> list[Block]:
    """The run's feature blocks (the last one may be narrower)."""
    return [Block(j, lo, min(lo + feature_block, d_sae)) for j, lo in enumerate(range(0, d_sae, feature_block))]
