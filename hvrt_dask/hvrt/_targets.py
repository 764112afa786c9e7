"""The five partition targets (reference §2.3) and the optional ``y`` blend (§2.4).

A target is the scalar the partition tree regresses on. Each family fixes three things: the
per-feature scaler (standard or robust), the tree criterion, and the x-component computed
from the z-scored rows. All functions are pure numpy on one block of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

MAD_CONST = 1.4826
_EPS_PAIR = 1e-10


def _pairwise(Z: np.ndarray) -> np.ndarray:
    """Σ_{i<j} of per-pair standardised products z_i·z_j, re-standardised to unit variance.

    Pairs with population sd ≤ 1e-10 are dropped. The final re-standardisation matches the
    compiled peer; it does not change tree splits (both criteria are scale-equivariant) and
    only matters for the ``y`` blend.
    """
    n, d = Z.shape
    t = np.zeros(n, dtype=np.float64)
    p = np.empty(n, dtype=np.float64)
    for i in range(d - 1):
        for j in range(i + 1, d):
            np.multiply(Z[:, i], Z[:, j], out=p)
            sd = p.std()
            if sd > _EPS_PAIR:
                t += (p - p.mean()) / sd
    sd = t.std()
    return (t - t.mean()) / sd if sd > _EPS_PAIR else t


def _row_sum(Z: np.ndarray) -> np.ndarray:
    return Z.sum(axis=1)


def _pyramid(Z: np.ndarray) -> np.ndarray:
    """A = |Σ_j z_j| − Σ_j |z_j| (≤ 0; −2 × the minority-sign total)."""
    return np.abs(Z.sum(axis=1)) - np.abs(Z).sum(axis=1)


@dataclass(frozen=True)
class TargetSpec:
    """One partition-target family."""

    name: str
    robust: bool  # median / 1.4826·MAD scaler (HART family) instead of mean / std
    criterion: str  # scikit-learn tree criterion
    x_component: Callable[[np.ndarray], np.ndarray]


TARGETS: dict[str, TargetSpec] = {
    "hvrt": TargetSpec("hvrt", False, "squared_error", _pairwise),
    "fast_hvrt": TargetSpec("fast_hvrt", False, "squared_error", _row_sum),
    "hart": TargetSpec("hart", True, "absolute_error", _pairwise),
    "fast_hart": TargetSpec("fast_hart", True, "absolute_error", _row_sum),
    "pyramid_hart": TargetSpec("pyramid_hart", True, "absolute_error", _pyramid),
}

Y_WEIGHT_MODES = ("fixed", "adaptive", "linear", "adaptive_linear")


def get_target(name: str) -> TargetSpec:
    """Resolve a target family by name (``ValueError`` listing the known names)."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known: {sorted(TARGETS)}") from None


def location_scale(X: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-column centre and scale; a zero scale becomes 1 (reference §2.2)."""
    if robust:
        center = np.median(X, axis=0)
        scale = MAD_CONST * np.median(np.abs(X - center), axis=0)
    else:
        center = X.mean(axis=0)
        scale = X.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return center, scale


def _standardise(v: np.ndarray, robust: bool) -> np.ndarray:
    c, s = location_scale(v[:, None], robust)
    return (v - c[0]) / s[0]


def y_signal(y: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(y_c, e)``: the standardised y-extremeness signal and the raw extremeness."""
    yp = _standardise(np.asarray(y, dtype=np.float64), robust)
    e = np.abs(yp - np.median(yp))
    return _standardise(e, robust), e


def blend(x: np.ndarray, y: np.ndarray | None, weight: float, mode: str, robust: bool) -> np.ndarray:
    """Blend the x-component with the y signal (reference §2.4)."""
    if mode not in Y_WEIGHT_MODES:
        raise ValueError(f"y_weight_mode must be one of {Y_WEIGHT_MODES}, got {mode!r}")
    if y is None or weight == 0:
        return x
    yc, e = y_signal(y, robust)
    w = float(weight)
    if mode in ("adaptive", "adaptive_linear"):
        sx, sy = x.std(), yc.std()
        corr = 0.0 if sx == 0 or sy == 0 else float(np.corrcoef(x, yc)[0, 1])
        w = w * (1.0 - abs(corr))
    if mode in ("linear", "adaptive_linear"):
        emax = e.max()
        wi = w * e / emax if emax > 0 else np.zeros_like(e)
        return (1.0 - wi) * x + wi * yc
    return (1.0 - w) * x + w * yc


def compute_target(
    Z: np.ndarray,
    target: str,
    y: np.ndarray | None = None,
    y_weight: float = 0.0,
    y_weight_mode: str = "fixed",
) -> np.ndarray:
    """The tree's regression target for z-scored rows ``Z`` (all ``X_z`` columns)."""
    spec = get_target(target)
    return blend(spec.x_component(Z), y, y_weight, y_weight_mode, spec.robust)
