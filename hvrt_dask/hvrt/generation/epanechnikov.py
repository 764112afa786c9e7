"""``epanechnikov``: product Epanechnikov kernel around resampled training rows (§4.2).

For a synthetic row of partition p: pick a base row uniformly (with replacement) from p,
then add ``h_p · σ_pj · u_j`` per feature, u drawn from K(u) = ¾(1 − u²) on [−1, 1].
``σ_pj`` is the partition's population std floored at 0.01 z-units and
``h_p = n_p^(−1/(d+4))`` (Scott's factor). Per-feature variance is inflated by
``1 + h_p²/5``; support is bounded around each base row.

Tiny partitions (``n_p ≤ d``) do not copy rows: their per-feature stds are shrunk towards
the partition's mean variance (:func:`~hvrt_dask.hvrt.generation._common.shrunk_stds`, the
same small-partition policy as the KDE strategies), so they still spread sensibly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.generation import _common as C
from hvrt_dask.hvrt.generation.base import GENERATION_STRATEGIES


def kernel_stds(Z: np.ndarray, parts: ChunkPartitions) -> np.ndarray:
    """Per-partition population std, shape (P, d), floored; tiny partitions shrunk."""
    stds = C.partition_stds(Z, parts)
    tiny = parts.sizes <= Z.shape[1]
    if tiny.any():
        stds[tiny] = C.shrunk_stds(stds[tiny], parts.sizes[tiny])
    return np.maximum(stds, C.STD_FLOOR)


@dataclass(frozen=True)
class KernelContext:
    """Prepared state of one chunk for the product-kernel strategies."""

    Z: np.ndarray  # continuous z-columns of the chunk (by reference)
    parts: ChunkPartitions
    scale: np.ndarray  # (P, d): bandwidth × per-feature std
    # Variance-preserving shrinkage (optional): rows become mean + shrink ⊙ (row − mean).
    mean: np.ndarray | None = None  # (P, d)
    shrink: np.ndarray | None = None  # (P, d)

    def sample(self, budgets: np.ndarray, rngs: Sequence[np.random.Generator], unit) -> tuple[np.ndarray, np.ndarray]:
        """Resampled rows plus ``scale ⊙ unit(rng, (b, d))`` noise, per partition."""
        d = self.Z.shape[1]

        def noise(i: int, rng: np.random.Generator, b: int) -> np.ndarray:
            eps = unit(rng, (b, d))
            eps *= self.scale[i]
            return eps

        Z, base = C.kernel_sample(self.Z, self.parts.starts, self.parts.sizes, budgets, rngs, noise)
        if self.shrink is not None:
            lab = np.repeat(np.arange(len(budgets)), np.asarray(budgets, dtype=np.int64))
            mu = self.mean[lab]
            Z -= mu
            Z *= self.shrink[lab]
            Z += mu
        return Z, base


def _scale(params: Mapping[str, Any]) -> float:
    s = params.get("bandwidth_scale", 1.0)
    if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating)) or not np.isfinite(s) or s <= 0:
        raise ValueError(f"bandwidth_scale must be a positive number, got {s!r}")
    return float(s)


class EpanechnikovStrategy:
    """Product Epanechnikov kernel, Scott bandwidth per partition (see module docstring)."""

    name = "epanechnikov"

    def prepare(self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]) -> KernelContext:
        C.reject_unknown_params(self.name, params, {"bandwidth_scale", "variance_preserving"})
        h = C.scott_factor(np.maximum(parts.sizes, 1), Xz.shape[1]) * _scale(params)
        stds = kernel_stds(Xz, parts)
        scale = h[:, None] * stds
        if not params.get("variance_preserving", False):
            return KernelContext(Xz, parts, scale)
        # Smoothed bootstrap with shrinkage: the kernel adds variance (scale²/5 per feature,
        # the Epanechnikov unit has variance 1/5); shrinking towards the partition mean by
        # sqrt(σ² / (σ² + scale²/5)) gives back each partition's own variance.
        raw = C.partition_stds(Xz, parts)
        shrink = np.sqrt(raw**2 / np.maximum(raw**2 + scale**2 / 5.0, 1e-300))
        return KernelContext(Xz, parts, scale, C.partition_means(Xz, parts), np.where(raw > 0, shrink, 1.0))

    def generate(self, context, budgets, rngs):
        return context.sample(budgets, rngs, C.epanechnikov_unit)


epanechnikov = GENERATION_STRATEGIES.register(EpanechnikovStrategy())
