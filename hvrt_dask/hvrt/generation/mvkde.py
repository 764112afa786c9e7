"""``multivariate_kde``: a full-covariance Gaussian kernel per partition (reference §4.4).

For a partition ``p`` with ``n_p`` rows in ``d`` continuous z-space features:

* ``Σ_p`` is the biased (population) covariance of its rows, diagonal clipped at 0;
* the kernel covariance is ``h_p² Σ_p`` with Scott's factor ``h_p = n_p^(−1/(d+4))``;
* it is made positive definite by clipping eigenvalues at ``1e-8`` and adding ``1e-12·I``,
  and factored once (batch Cholesky) in ``prepare``;
* a synthetic row is a uniformly resampled row of ``p`` plus ``L_p ε``, ``ε ~ N(0, I)``,
  so the generated covariance is ``(1 + h_p²) Σ_p``.

Partitions with ``n_p <= d`` (their covariance has rank ``< d``) use the shared
small-partition fallback instead: the resampled row plus bounded Epanechnikov noise with
per-feature standard deviation ``h_p · s_pj`` (``s_pj`` the shrunk per-feature std, see
:func:`~hvrt_dask.hvrt.generation._common.shrunk_stds`).

Generation loops over the chunk's partitions, so memory is ``O(b_p · d)`` per step rather
than the ``(N, d, d)`` gather of per-row factors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.generation import _common as C
from hvrt_dask.hvrt.generation.base import GENERATION_STRATEGIES


@dataclass(frozen=True)
class MultivariateKDEContext:
    """Prepared state of one chunk for :class:`MultivariateKDEStrategy`.

    Attributes
    ----------
    Xz : ndarray, shape (n, d)
        The chunk's continuous z-space rows (base rows are resampled from it).
    starts, sizes : ndarray of int64, shape (P,)
        Partition offsets and sizes inside the chunk.
    chol : ndarray, shape (P, d, d)
        Cholesky factor of ``h_p² Σ_p`` (PSD-repaired); zero where ``fallback``.
    fallback : ndarray of bool, shape (P,)
        Partitions that use the small-partition fallback.
    fallback_scale : ndarray, shape (P, d)
        Per-feature noise std ``h_p · s_pj`` of the fallback (only read where ``fallback``).
    """

    Xz: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    chol: np.ndarray
    fallback: np.ndarray
    fallback_scale: np.ndarray


class MultivariateKDEStrategy:
    """Gaussian kernel with the partition's full (Scott-scaled) covariance.

    Takes no parameters (other keys in ``params`` are ignored). See the module docstring.
    """

    name = "multivariate_kde"

    def prepare(
        self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]
    ) -> MultivariateKDEContext:
        X = C.check_chunk(Xz, parts)
        d = X.shape[1]
        sizes = parts.sizes
        h = C.scott_factor(sizes, d)
        means = C.partition_means(X, parts)
        cov = C.partition_covariances(X, parts, ddof=0, means=means)
        fallback = sizes <= d
        kernel = C.psd_repair(cov * (h**2)[:, None, None])
        chol, ok = C.safe_cholesky(kernel, usable=~fallback)
        fallback = fallback | ~ok
        chol[fallback] = 0.0
        scale = h[:, None] * C.shrunk_stds(C.partition_stds(X, parts, means), sizes)
        return MultivariateKDEContext(X, parts.starts, sizes, chol, fallback, scale)

    def generate(
        self,
        context: MultivariateKDEContext,
        budgets: np.ndarray,
        rngs: Sequence[np.random.Generator],
    ) -> tuple[np.ndarray, np.ndarray]:
        ctx = context
        b = C.check_budgets(budgets, rngs, ctx.sizes.shape[0])
        d = ctx.Xz.shape[1]

        def noise(i: int, rng: np.random.Generator, n: int) -> np.ndarray:
            if ctx.fallback[i]:
                return C.fallback_noise(rng, n, ctx.fallback_scale[i])
            return rng.standard_normal((n, d)) @ ctx.chol[i].T

        return C.kernel_sample(ctx.Xz, ctx.starts, ctx.sizes, b, rngs, noise)


multivariate_kde = GENERATION_STRATEGIES.register(MultivariateKDEStrategy())
