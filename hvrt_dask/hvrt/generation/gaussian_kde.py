"""``gaussian_kde``: the reference's Gaussian-KDE path as a strategy (reference §4.6).

Per partition ``p`` (``n_p`` rows, ``d`` continuous z-space features) this samples what
``scipy.stats.gaussian_kde(rows, bw_method=bw).resample(b_p)`` samples: a uniformly
resampled row plus ``N(0, bw_p² Σ_p)``, with ``Σ_p`` the *unbiased* covariance.

Parameters (``params``)
-----------------------
bandwidth : float, ``"scott"`` or ``"silverman"`` (default ``"scott"``)
    A positive number is used as the factor ``bw`` directly (``0.1`` = "bootstrap plus
    correlated 10 % noise"); ``"scott"`` is ``n_p^(−1/(d+4))`` and ``"silverman"`` is
    ``(n_p (d+2)/4)^(−1/(d+4))``, as scipy defines them.
adaptive : bool (default False)
    Budget-aware bandwidth ``bw_p = n_p^(−1/(d+4)) · max(1, b_p/n_p)^(1/d)`` (``bandwidth``
    is then ignored). It depends on the budgets, so it is applied in ``generate``.

Small or singular partitions
----------------------------
The reference gives partitions with ``n_p <= d`` (or a singular ``Σ_p``) ``b_p`` copies of
the partition's *first* row plus tiny noise. Here:

* ``n_p <= d`` uses the shared small-partition fallback: base rows are resampled uniformly
  from *all* the partition's rows, and bounded Epanechnikov noise is added per feature
  with standard deviation ``bw_p · s_pj``, where ``s_pj`` is the partition's population
  std shrunk towards its mean feature variance
  (:func:`~hvrt_dask.hvrt.generation._common.shrunk_stds`). The noise is bounded:
  ``|x_j − base_j| <= √5 · bw_p · s_pj``.
* ``n_p > d`` with a singular ``Σ_p`` (smallest eigenvalue ``<= 1e-12 ×`` the largest, or a
  failed Cholesky — collinear or constant features) keeps the Gaussian kernel on the
  PSD-repaired covariance (eigenvalues clipped at ``1e-8``, plus ``1e-12·I``), so exact
  linear relations and constant columns survive up to ``~1e-4·bw_p`` noise.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.generation import _common as C
from hvrt_dask.hvrt.generation.base import GENERATION_STRATEGIES

_SINGULAR_RTOL = 1e-12


def _resolve_params(params: Mapping[str, Any]) -> tuple[float | str, bool]:
    C.reject_unknown_params(GaussianKDEStrategy.name, params, {"bandwidth", "adaptive"})
    bw = params.get("bandwidth", "scott")
    if bw is None:
        bw = "scott"
    adaptive = params.get("adaptive", False)
    if not isinstance(adaptive, (bool, np.bool_)):
        raise TypeError(f"gaussian_kde parameter 'adaptive' must be a bool, got {adaptive!r}")
    if isinstance(bw, str):
        if bw not in ("scott", "silverman"):
            raise ValueError(
                f"gaussian_kde parameter 'bandwidth' must be a positive number, 'scott' or "
                f"'silverman', got {bw!r}"
            )
        return bw, bool(adaptive)
    if isinstance(bw, (bool, np.bool_)) or not isinstance(bw, numbers.Real):
        raise TypeError(f"gaussian_kde parameter 'bandwidth' must be a number or str, got {bw!r}")
    bw = float(bw)
    if not np.isfinite(bw) or bw <= 0:
        raise ValueError(f"gaussian_kde parameter 'bandwidth' must be positive, got {bw!r}")
    return bw, bool(adaptive)


@dataclass(frozen=True)
class GaussianKDEContext:
    """Prepared state of one chunk for :class:`GaussianKDEStrategy`.

    Attributes
    ----------
    Xz : ndarray, shape (n, d)
        The chunk's continuous z-space rows.
    starts, sizes : ndarray of int64, shape (P,)
        Partition offsets and sizes inside the chunk.
    chol : ndarray, shape (P, d, d)
        Cholesky factor of the *unscaled* unbiased covariance ``Σ_p``, PSD-repaired when
        singular (zero where ``fallback``).
    factor : ndarray, shape (P,)
        Bandwidth factor ``bw_p`` (unused when ``adaptive``).
    adaptive : bool
        Compute ``bw_p`` from the budgets in ``generate``.
    fallback : ndarray of bool, shape (P,)
        Partitions with ``n_p <= d`` (the small-partition fallback).
    fallback_std : ndarray, shape (P, d)
        Shrunk per-feature std ``s_pj`` (scaled by ``bw_p`` in ``generate``).
    """

    Xz: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    chol: np.ndarray
    factor: np.ndarray
    adaptive: bool
    fallback: np.ndarray
    fallback_std: np.ndarray


def adaptive_factor(sizes: np.ndarray, budgets: np.ndarray, d: int) -> np.ndarray:
    """Budget-aware bandwidth ``n_p^(−1/(d+4)) · max(1, b_p/n_p)^(1/d)`` (Scott if ``n_p < 2``)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    ratio = np.maximum(1.0, np.asarray(budgets, dtype=np.float64) / sizes)
    bw = C.scott_factor(sizes, d) * ratio ** (1.0 / max(d, 1))
    return np.where(sizes < 2, C.scott_factor(sizes, d), bw)


class GaussianKDEStrategy:
    """Per-partition Gaussian KDE with a scipy-style bandwidth (see module docstring)."""

    name = "gaussian_kde"

    def prepare(
        self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]
    ) -> GaussianKDEContext:
        bw, adaptive = _resolve_params(params)
        X = C.check_chunk(Xz, parts)
        d = X.shape[1]
        sizes = parts.sizes
        if bw == "scott":
            factor = C.scott_factor(sizes, d)
        elif bw == "silverman":
            factor = C.silverman_factor(sizes, d)
        else:
            factor = np.full(sizes.shape[0], float(bw))
        means = C.partition_means(X, parts)
        cov = C.partition_covariances(X, parts, ddof=1, means=means)
        fallback = sizes <= d
        usable = ~fallback
        if usable.any() and d > 0:
            lam = np.linalg.eigvalsh(cov[usable])
            good = lam[:, 0] > _SINGULAR_RTOL * np.maximum(lam[:, -1], np.finfo(float).tiny)
            usable[np.flatnonzero(usable)[~good]] = False
        chol, ok = C.safe_cholesky(cov, usable=usable)
        singular = ~fallback & ~ok
        if singular.any():  # enough rows, degenerate directions: PSD-repaired kernel
            chol[singular], _ = C.safe_cholesky(C.psd_repair(cov[singular]))
        chol[fallback] = 0.0
        std = C.shrunk_stds(C.partition_stds(X, parts, means), sizes)
        return GaussianKDEContext(X, parts.starts, sizes, chol, factor, adaptive, fallback, std)

    def generate(
        self,
        context: GaussianKDEContext,
        budgets: np.ndarray,
        rngs: Sequence[np.random.Generator],
    ) -> tuple[np.ndarray, np.ndarray]:
        ctx = context
        b = C.check_budgets(budgets, rngs, ctx.sizes.shape[0])
        d = ctx.Xz.shape[1]
        factor = adaptive_factor(ctx.sizes, b, d) if ctx.adaptive else ctx.factor

        def noise(i: int, rng: np.random.Generator, n: int) -> np.ndarray:
            if ctx.fallback[i]:
                return C.fallback_noise(rng, n, factor[i] * ctx.fallback_std[i])
            return (rng.standard_normal((n, d)) @ ctx.chol[i].T) * factor[i]

        return C.kernel_sample(ctx.Xz, ctx.starts, ctx.sizes, b, rngs, noise)


gaussian_kde = GENERATION_STRATEGIES.register(GaussianKDEStrategy())
