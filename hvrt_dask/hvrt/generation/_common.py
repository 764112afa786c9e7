"""Helpers shared by the generation strategies (pure numpy, run on the workers).

Everything here works on one partition-aligned chunk: ``Xz`` (rows grouped by partition)
plus its :class:`~hvrt_dask.hvrt._chunks.ChunkPartitions`. Per-partition statistics are
computed from the partition's own rows only (segment reductions that add rows in order),
so a partition gets bit-identical statistics whichever chunk it lands in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions

#: Floor for per-partition standard deviations in z-units (as the reference does).
STD_FLOOR = 0.01


# ---------------------------------------------------------------------------------- checks
def check_chunk(Xz: Any, parts: ChunkPartitions) -> np.ndarray:
    """Validate the ``prepare`` inputs and return ``Xz`` as a 2-D float64 array."""
    if not isinstance(parts, ChunkPartitions):
        raise TypeError(f"parts must be a ChunkPartitions, got {type(parts).__name__}")
    X = np.asarray(Xz, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"Xz must be 2-D (rows, continuous features), got shape {X.shape}")
    if X.shape[0] != parts.n_rows:
        raise ValueError(
            f"Xz has {X.shape[0]} rows but the partition table describes {parts.n_rows}"
        )
    if np.any(parts.sizes < 1):
        bad = parts.ids[parts.sizes < 1]
        raise ValueError(f"partitions {bad.tolist()} are empty; every partition needs a row")
    if not np.all(np.isfinite(X)):
        raise ValueError("Xz contains NaN or infinite values")
    return X


def check_budgets(budgets: Any, rngs: Sequence[np.random.Generator], n_parts: int) -> np.ndarray:
    """Validate ``generate`` inputs: one non-negative integer budget and one rng per partition."""
    b = np.asarray(budgets)
    if b.ndim != 1 or b.shape[0] != n_parts:
        raise ValueError(f"budgets must have shape ({n_parts},), got {b.shape}")
    if b.size and (not np.issubdtype(b.dtype, np.integer) and not np.all(b == np.floor(b))):
        raise TypeError("budgets must be integers")
    b = b.astype(np.int64)
    if np.any(b < 0):
        raise ValueError("budgets must be non-negative")
    if len(rngs) != n_parts:
        raise ValueError(f"need one random generator per partition ({n_parts}), got {len(rngs)}")
    return b


def reject_unknown_params(name: str, params: Mapping[str, Any], known: set[str]) -> None:
    """Raise ``ValueError`` naming any parameter the strategy does not understand."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"generation strategy {name!r} got unknown parameter(s) {unknown}; "
            f"known: {sorted(known)}"
        )


# ------------------------------------------------------------------------ bandwidth factors
def scott_factor(n: np.ndarray | int, d: int) -> np.ndarray:
    """scipy's Scott factor ``n ** (-1 / (d + 4))`` (no Silverman constant)."""
    return np.power(np.asarray(n, dtype=np.float64), -1.0 / (d + 4))


def silverman_factor(n: np.ndarray | int, d: int) -> np.ndarray:
    """scipy's Silverman factor ``(n (d + 2) / 4) ** (-1 / (d + 4))``."""
    return np.power(np.asarray(n, dtype=np.float64) * (d + 2) / 4.0, -1.0 / (d + 4))


# ------------------------------------------------------------------ per-partition moments
def segment_sum(A: np.ndarray, parts: ChunkPartitions) -> np.ndarray:
    """Per-partition column sums of ``A`` (rows grouped by partition), shape ``(P, ...)``.

    ``np.add.reduceat`` along axis 0 adds the rows of each segment in order, so the result
    for a partition depends only on that partition's rows.
    """
    if parts.n_parts == 0:
        return np.zeros((0, *A.shape[1:]), dtype=np.float64)
    return np.add.reduceat(A, parts.starts, axis=0)


def partition_means(X: np.ndarray, parts: ChunkPartitions) -> np.ndarray:
    """Per-partition means, shape ``(P, d)``."""
    return segment_sum(X, parts) / parts.sizes[:, None]


def partition_covariances(
    X: np.ndarray, parts: ChunkPartitions, ddof: int = 0, means: np.ndarray | None = None
) -> np.ndarray:
    """Per-partition covariance matrices, shape ``(P, d, d)``.

    Two-pass (centred) estimate, one segment reduction per feature, so memory stays
    ``O(rows × d)`` instead of the ``(rows, d, d)`` outer-product array. Partitions with
    ``n_p <= ddof`` get a zero matrix. The diagonal is clipped at 0.
    """
    P, d = parts.n_parts, X.shape[1]
    if means is None:
        means = partition_means(X, parts)
    C = np.empty((P, d, d), dtype=np.float64)
    if P == 0 or d == 0:
        return C
    Xc = X - np.repeat(means, parts.sizes, axis=0)
    for j in range(d):
        C[:, j, :] = segment_sum(Xc * Xc[:, j : j + 1], parts)
    C = 0.5 * (C + np.swapaxes(C, 1, 2))  # exact symmetry for eigh/cholesky
    denom = (parts.sizes - ddof).astype(np.float64)
    ok = denom > 0
    C[ok] /= denom[ok, None, None]
    C[~ok] = 0.0
    diag = np.einsum("pii->pi", C)
    np.maximum(diag, 0.0, out=diag)
    return C


def partition_stds(
    X: np.ndarray, parts: ChunkPartitions, means: np.ndarray | None = None
) -> np.ndarray:
    """Per-partition population standard deviations, shape ``(P, d)`` (not floored)."""
    if means is None:
        means = partition_means(X, parts)
    Xc = X - np.repeat(means, parts.sizes, axis=0)
    var = segment_sum(Xc * Xc, parts) / parts.sizes[:, None]
    return np.sqrt(np.maximum(var, 0.0))


def psd_repair(C: np.ndarray, eig_floor: float = 1e-8, jitter: float = 1e-12) -> np.ndarray:
    """Clip the eigenvalues of each matrix in ``C`` (shape ``(P, d, d)``) to ``>= eig_floor``.

    Reconstructs ``V diag(max(λ, eig_floor)) Vᵀ``, then adds ``jitter · I`` so the batch
    Cholesky always succeeds.
    """
    if C.shape[0] == 0 or C.shape[-1] == 0:
        return C.copy()
    lam, V = np.linalg.eigh(C)
    lam = np.maximum(lam, eig_floor)
    R = (V * lam[:, None, :]) @ np.swapaxes(V, 1, 2)
    R = 0.5 * (R + np.swapaxes(R, 1, 2))
    return R + jitter * np.eye(C.shape[-1])


def safe_cholesky(C: np.ndarray, usable: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Batch Cholesky of ``C`` (``(P, d, d)``); returns ``(L, ok)``.

    Matrices that are not numerically positive definite get ``ok = False`` and a zero
    factor. ``usable`` pre-masks matrices that should not be attempted.
    """
    P, d = C.shape[0], C.shape[-1]
    L = np.zeros_like(C)
    ok = np.ones(P, dtype=bool) if usable is None else np.asarray(usable, dtype=bool).copy()
    if P == 0 or d == 0 or not ok.any():
        return L, ok
    idx = np.flatnonzero(ok)
    try:
        L[idx] = np.linalg.cholesky(C[idx])
    except np.linalg.LinAlgError:  # find the offenders one by one
        for i in idx:
            try:
                L[i] = np.linalg.cholesky(C[i])
            except np.linalg.LinAlgError:
                ok[i] = False
    return L, ok


# ---------------------------------------------------------------------- small-n fallback
def shrunk_stds(stds: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per-feature standard deviations shrunk towards the partition's mean variance.

    ``s²_pj = (1 − α_p)·σ²_pj + α_p·mean_j σ²_pj`` with ``α_p = d / (n_p + d)``,
    floored at :data:`STD_FLOOR`. This is the diagonal, isotropic-target shrinkage used by the
    small-partition fallback: with few rows a per-feature variance (possibly zero) is
    unreliable, so it borrows strength from the partition's other features.

    A feature that is exactly constant over ``n_p >= 2`` rows keeps ``s_pj = 0`` (a
    constant or degenerate column stays constant rather than borrowing noise).
    """
    P, d = stds.shape
    if d == 0:
        return stds.copy()
    var = stds**2
    alpha = (d / (sizes.astype(np.float64) + d))[:, None]
    s2 = (1.0 - alpha) * var + alpha * var.mean(axis=1, keepdims=True)
    s = np.maximum(np.sqrt(s2), STD_FLOOR)
    s[(stds == 0) & (sizes[:, None] >= 2)] = 0.0
    return s


_EPAN_SLAB = 1 << 16  # values per pass: three uniforms of a slab stay in cache


def epanechnikov_unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Draws from the Epanechnikov kernel ``¾(1 − u²)`` on ``[−1, 1]`` (variance 1/5).

    The median of three uniforms on ``[0, 1]`` has density ``6x(1 − x)`` (Beta(2, 2)), so
    ``2·median − 1`` is exactly Epanechnikov. Only comparisons, no transcendental
    functions: measured 2.3× faster than the inverse CDF ``2·sin(arcsin(2p − 1)/3)`` on
    1M values. Drawn in slabs of ``_EPAN_SLAB`` values (a fixed constant, so the stream
    does not depend on anything but ``shape``).
    """
    out = np.empty(shape, dtype=np.float64)
    flat = out.reshape(-1)
    for lo in range(0, flat.size, _EPAN_SLAB):
        dst = flat[lo : lo + _EPAN_SLAB]
        a, b, c = rng.random((3, len(dst)))
        np.minimum(a, b, out=dst)
        np.maximum(a, b, out=a)
        np.minimum(a, c, out=a)
        np.maximum(dst, a, out=dst)
    out *= 2.0
    out -= 1.0
    return out


#: Multiplier that gives the Epanechnikov kernel unit variance (its raw variance is 1/5).
EPAN_UNIT_VAR = float(np.sqrt(5.0))


def fallback_noise(rng: np.random.Generator, b: int, scale: np.ndarray) -> np.ndarray:
    """Bounded fallback noise ``√5 · scale_j · u_j`` with ``u`` Epanechnikov, shape ``(b, d)``.

    Per-feature variance ``scale_j²``; support ``|noise_j| <= √5 · scale_j``.
    """
    return epanechnikov_unit(rng, (b, scale.shape[0])) * (EPAN_UNIT_VAR * scale)


# ------------------------------------------------------------------------------ sampling
def resample_rows(rng: np.random.Generator, start: int, size: int, b: int) -> np.ndarray:
    """Chunk-local indices of ``b`` base rows drawn uniformly with replacement from a partition."""
    return start + rng.integers(0, size, size=b, dtype=np.int64)


def kernel_sample(
    Xz: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    budgets: np.ndarray,
    rngs: Sequence[np.random.Generator],
    noise: Callable[[int, np.random.Generator, int], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """The base-row sampling loop shared by every "resampled row + kernel noise" strategy.

    For partition ``i`` (in chunk order) draw ``budgets[i]`` base rows uniformly with
    replacement from ``rngs[i]``, then add ``noise(i, rngs[i], b)`` (shape ``(b, d)``). Each
    partition uses only its own stream, so the output does not depend on chunk packing.
    Returns ``(Z, base)`` as the generation protocol specifies.
    """
    d = Xz.shape[1]
    b_all = np.asarray(budgets, dtype=np.int64)
    Z = np.empty((int(b_all.sum()), d), dtype=np.float64)
    base = np.empty(Z.shape[0], dtype=np.int64)
    off = 0
    for i, b in enumerate(b_all.tolist()):
        if b == 0:
            continue
        rng = rngs[i]
        idx = resample_rows(rng, int(starts[i]), int(sizes[i]), b)
        np.add(Xz[idx], noise(i, rng, b), out=Z[off : off + b])
        base[off : off + b] = idx
        off += b
    return Z, base


def empty_output(d: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((0, d), dtype=np.float64), np.empty(0, dtype=np.int64)
