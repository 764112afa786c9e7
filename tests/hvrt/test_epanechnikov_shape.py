"""``epanechnikov`` with ``shape="covariance"`` (the default's kernel): moments vs closed form.

The reference is computed here with numpy from the partition's rows: the shrunk covariance
``S = (1 − α) Σ + α diag(Σ)`` (``α = d / (n + d)``), the participation ratio
``d_eff = tr(S)² / tr(S²)``, ``h = scale · n^(−1/(d_eff + 4))`` and its Cholesky factor.
"""

from __future__ import annotations

import numpy as np
import pytest

from hvrt_dask.hvrt._chunks import ChunkPartitions
from hvrt_dask.hvrt.generation.epanechnikov import EpanechnikovStrategy, effective_dimension


def _rngs(k, seed=0):
    return [np.random.default_rng([seed, i]) for i in range(k)]


def _chunk(sizes=(400, 300), d=4, seed=3):
    rng = np.random.default_rng(seed)
    blocks = []
    for n in sizes:
        A = rng.normal(size=(d, d))
        blocks.append(rng.multivariate_normal(rng.normal(size=d), A @ A.T + 0.1 * np.eye(d), size=n))
    return np.concatenate(blocks), ChunkPartitions.from_sizes(np.arange(len(sizes)) + 7, np.asarray(sizes))


def _reference(Zp, scale):
    n, d = Zp.shape
    sigma = np.cov(Zp, rowvar=False, bias=True)
    alpha = d / (n + d)
    S = (1 - alpha) * sigma + alpha * np.diag(np.diag(sigma))
    d_eff = np.trace(S) ** 2 / np.trace(S @ S)
    h = scale * n ** (-1.0 / (d_eff + 4))
    return sigma, h * h * S


def test_effective_dimension_is_participation_ratio():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 5))
    lam = np.linalg.eigvalsh(A @ A.T)
    v = rng.normal(size=(5, 1))
    got = effective_dimension(np.stack([np.eye(5), v @ v.T, A @ A.T, np.zeros((5, 5))]))
    np.testing.assert_allclose(got, [5.0, 1.0, lam.sum() ** 2 / (lam**2).sum(), 1.0], rtol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_covariance_kernel_noise_follows_the_partition_covariance(scale):
    Z, parts = _chunk()
    s = EpanechnikovStrategy()
    ctx = s.prepare(Z, parts, {"shape": "covariance", "bandwidth_scale": scale})
    b = np.array([300_000, 300_000])
    out, base = s.generate(ctx, b, _rngs(2))
    for i, sl in enumerate(parts.slices()):
        rows = slice(i * b[0], (i + 1) * b[0])
        assert np.all((base[rows] >= sl.start) & (base[rows] < sl.stop))
        _, K = _reference(Z[sl], scale)
        noise = out[rows] - Z[base[rows]]
        # kernel covariance K/5 (Epanechnikov unit variance 1/5), correlations included
        np.testing.assert_allclose(np.cov(noise, rowvar=False, bias=True), K / 5, atol=0.01 * np.abs(K).max())
        # bounded support in the kernel's own coordinates: u = L⁻¹ noise in [−1, 1]
        u = np.linalg.solve(np.linalg.cholesky(K), noise.T)
        assert np.abs(u).max() <= 1.0 + 1e-9
        np.testing.assert_allclose(u.var(axis=1), 0.2, rtol=0.01)


def test_covariance_kernel_variance_preserving_keeps_each_partition_variance():
    Z, parts = _chunk()
    s = EpanechnikovStrategy()
    ctx = s.prepare(Z, parts, {"shape": "covariance", "bandwidth_scale": 1.5, "variance_preserving": True})
    b = np.array([300_000, 300_000])
    out, _ = s.generate(ctx, b, _rngs(2))
    for i, sl in enumerate(parts.slices()):
        o = out[i * b[0] : (i + 1) * b[0]]
        sigma, K = _reference(Z[sl], 1.5)
        c = np.sqrt(np.diag(sigma) / (np.diag(sigma) + np.diag(K) / 5))
        np.testing.assert_allclose(o.var(axis=0), np.diag(sigma), rtol=0.012)  # variances kept
        np.testing.assert_allclose(o.mean(axis=0), Z[sl].mean(axis=0), atol=0.01 * np.sqrt(sigma.diagonal().max()))
        expected = c[:, None] * (sigma + K / 5) * c[None, :]  # closed-form output covariance
        np.testing.assert_allclose(np.cov(o, rowvar=False, bias=True), expected, atol=0.015 * sigma.diagonal().max())


def test_covariance_shape_independent_of_chunk_grouping_and_tiny_partitions_do_not_copy():
    Z, parts = _chunk(sizes=(50, 2, 40), d=3, seed=9)
    s = EpanechnikovStrategy()
    params = {"shape": "covariance", "bandwidth_scale": 1.5, "variance_preserving": True}
    b = np.array([100, 200, 80])
    rngs = _rngs(3, seed=4)
    out, base = s.generate(s.prepare(Z, parts, params), b, rngs)
    sub = ChunkPartitions.from_sizes(parts.ids[1:2], parts.sizes[1:2])  # the tiny partition alone
    alone, base1 = s.generate(s.prepare(Z[50:52], sub, params), b[1:2], _rngs(3, seed=4)[1:2])
    np.testing.assert_array_equal(alone, out[100:300])
    np.testing.assert_array_equal(base1 + 50, base[100:300])
    assert np.isfinite(out).all() and np.unique(alone, axis=0).shape[0] == 200
    assert np.abs(alone[:, None, :] - Z[None, 50:52]).max(axis=2).min() > 0  # n_p = 2 ≤ d: no copies


def test_unknown_shape_is_refused():
    Z, parts = _chunk()
    with pytest.raises(ValueError, match="shape"):
        EpanechnikovStrategy().prepare(Z, parts, {"shape": "diagonal"})
