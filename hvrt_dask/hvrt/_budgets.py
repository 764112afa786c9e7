"""Budget allocation over partitions (reference §3), shared by ``expand`` and ``reduce``.

All functions are pure numpy on per-partition arrays (a few thousand entries at most), so
they run on the client.
"""

from __future__ import annotations

import numpy as np


def partition_weights(
    sizes: np.ndarray,
    mean_abs_z: np.ndarray | None = None,
    variance_weighted: bool | str = False,
) -> np.ndarray:
    """Return normalised partition weights.

    Parameters
    ----------
    sizes : ndarray of int, shape (P,)
        Partition sizes ``n_p``.
    mean_abs_z : ndarray of float, shape (P,), optional
        Per-partition mean of the row score ``m_i = mean_j |z_ij|``; required when
        ``variance_weighted`` is not False.
    variance_weighted : bool or {"size_aware"}
        ``False``: ``w_p ∝ n_p``. ``True``: the reference rule ``w_p ∝ max(mean m_i, 1e-10)``,
        independent of size. ``"size_aware"``: ``w_p ∝ n_p · max(mean m_i, 1e-10)``, a
        Neyman-like allocation that keeps small tail leaves from being oversampled.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if variance_weighted is False or variance_weighted is None:
        w = sizes / sizes.sum()
        return w
    if mean_abs_z is None:
        raise ValueError("variance weighting needs the per-partition mean |z|")
    m = np.maximum(np.asarray(mean_abs_z, dtype=np.float64), 1e-10)
    if variance_weighted is True:
        w = m
    elif variance_weighted == "size_aware":
        w = sizes * m
    else:
        raise ValueError(
            f"variance_weighted must be False, True or 'size_aware', got {variance_weighted!r}"
        )
    return w / w.sum()


def allocate_budgets(weights: np.ndarray, total: int, floor: int = 0) -> np.ndarray:
    """Integerise ``weights * total`` as the reference does.

    ``b_p = max(floor, floor(w_p * total))``; while the sum exceeds ``total`` the current
    arg-max is decremented by one; while it falls short the current arg-min is incremented
    (first index on ties in both loops). The loops are replaced by an equivalent closed form
    where possible, but the result is identical to the unit-step procedure.
    """
    w = np.asarray(weights, dtype=np.float64)
    total = int(total)
    b = np.maximum(int(floor), np.floor(w * total).astype(np.int64))
    diff = int(b.sum()) - total
    # The number of unit steps is at most P (+ the floor excess), so the plain loops are cheap.
    while diff > 0:
        b[int(np.argmax(b))] -= 1
        diff -= 1
    while diff < 0:
        b[int(np.argmin(b))] += 1
        diff += 1
    return b


def clip_and_redistribute(budgets: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """Reduce-only step: clip budgets to partition sizes, then hand the shortfall back.

    Each unit of shortfall goes to the partition with the largest remaining capacity
    ``n_p - b_p`` (first index on ties), so that ``sum(b) == min(total, sum(n_p))``.
    """
    b = np.minimum(np.asarray(budgets, dtype=np.int64), np.asarray(sizes, dtype=np.int64))
    sizes = np.asarray(sizes, dtype=np.int64)
    target = min(int(total), int(sizes.sum()))
    short = target - int(b.sum())
    while short > 0:
        cap = sizes - b
        j = int(np.argmax(cap))
        b[j] += 1
        short -= 1
    return b


def expand_budgets(
    sizes: np.ndarray,
    n: int,
    mean_abs_z: np.ndarray | None = None,
    variance_weighted: bool | str = False,
) -> np.ndarray:
    """Per-partition generation budgets for ``expand(n)`` (floor 0)."""
    w = partition_weights(sizes, mean_abs_z, variance_weighted)
    return allocate_budgets(w, n, floor=0)


def reduce_budgets(
    sizes: np.ndarray,
    n: int,
    mean_abs_z: np.ndarray | None = None,
    variance_weighted: bool | str = True,
    min_samples_per_partition: int = 5,
) -> np.ndarray:
    """Per-partition selection budgets for ``reduce(n)``: floor, integerise, clip, redistribute."""
    w = partition_weights(sizes, mean_abs_z, variance_weighted)
    b = allocate_budgets(w, n, floor=min_samples_per_partition)
    return clip_and_redistribute(b, sizes, n)
