"""Independent, literal re-implementation of the reference's budget rules (§3), for tests."""

import numpy as np


def spec_budgets(sizes, total, mean_abs_z, variance_weighted, floor, clip=True):
    """Reference §3 written as literally as possible (unit steps, first index on ties)."""
    sizes = [int(s) for s in sizes]
    if variance_weighted is True:
        raw = [max(float(m), 1e-10) for m in mean_abs_z]
    elif variance_weighted == "size_aware":
        raw = [s * max(float(m), 1e-10) for s, m in zip(sizes, mean_abs_z)]
    else:
        raw = [float(s) for s in sizes]
    w = [r / sum(raw) for r in raw]
    b = [max(floor, int(np.floor(wi * total))) for wi in w]
    while sum(b) > total:
        j = max(range(len(b)), key=lambda i: (b[i], -i))
        b[j] -= 1
    while sum(b) < total:
        j = min(range(len(b)), key=lambda i: (b[i], i))
        b[j] += 1
    if not clip:  # expand: no clipping to partition sizes
        return np.array(b)
    b = [min(bi, si) for bi, si in zip(b, sizes)]
    target = min(total, sum(sizes))
    while sum(b) < target:
        j = max(range(len(b)), key=lambda i: (sizes[i] - b[i], -i))
        b[j] += 1
    return np.array(b)
