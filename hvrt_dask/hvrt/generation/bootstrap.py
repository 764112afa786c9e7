"""``bootstrap_noise``: a resampled training row plus 10 % Gaussian noise (§4.3).

x = base + 0.1 · σ_p ⊙ ε, ε ~ N(0, I), base drawn uniformly from the partition. The
fastest strategy and effectively a near-copy generator (see the reference's fidelity notes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.generation.base import GENERATION_STRATEGIES
from hvrt_dask.hvrt.generation.epanechnikov import KernelContext, kernel_stds

NOISE_SCALE = 0.1


def _gauss(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.standard_normal(shape)


class BootstrapNoiseStrategy:
    """Bootstrap plus ``0.1·σ_p`` Gaussian noise per feature."""

    name = "bootstrap_noise"

    def prepare(self, Xz: np.ndarray, parts: ChunkPartitions, params: Mapping[str, Any]) -> KernelContext:
        h = float(params.get("noise_scale", NOISE_SCALE))
        return KernelContext(Xz, parts, h * kernel_stds(Xz, parts))

    def generate(self, context, budgets, rngs):
        return context.sample(budgets, rngs, _gauss)


bootstrap_noise = GENERATION_STRATEGIES.register(BootstrapNoiseStrategy(), "bootstrap")
