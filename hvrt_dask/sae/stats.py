"""Per-feature activation statistics: per-chunk partials and their exact merge.

Per feature, over *valid* tokens (padding never counts):

``max``               largest activation (float32)
``n_active_tokens``   tokens with activation > 0 (int64)
``n_active_samples``  samples whose maximum is > 0 (int64)
``sum``, ``sumsq``    float64 sums of activations and of their squares
``hist``              counts of nonzero activations per bin (int64, ``[d_sae, n_bins]``)

plus the scalars ``n_valid_tokens`` and ``n_samples``.

Histogram bins are fixed before the pass, from the configuration only (never from the data):
``n_bins`` bins with ``n_bins - 1`` inner edges log-spaced over ``10**lo .. 10**hi``
(``extract.histogram-range``, default ``[-4, 4]``), as float32. Bin 0 is ``(0, 10**lo]``,
bin ``i`` is ``(edge[i-1], edge[i]]``, the last bin is ``(10**hi, inf)``. The same edges serve
every feature, so histograms of different features and runs are comparable; comparisons are
exact float32 comparisons, so the bin of a value does not depend on the device.

Counts, maxima and histograms merge exactly. Float64 sums are reduced over a fixed tree
(order set by chunk ids, not arrival), so they are reproducible for a given chunking and
fan-in; across chunkings they agree to float64 rounding (bit-identical when the activations
are small dyadic rationals, as in the exactness tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SUM_KEYS = ("n_active_tokens", "n_active_samples", "sum", "sumsq", "hist", "n_valid_tokens", "n_samples")


def histogram_edges(n_bins: int, log10_range: tuple[float, float] = (-4.0, 4.0)) -> np.ndarray:
    """The ``n_bins - 1`` inner bin edges (float32, ascending)."""
    lo, hi = float(log10_range[0]), float(log10_range[1])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"histogram range must be two finite log10 bounds, got {log10_range}")
    if n_bins < 2:
        raise ValueError(f"histogram bins must be >= 2, got {n_bins}")
    if not hi > lo:
        raise ValueError(f"histogram range must be increasing, got {log10_range}")
    return np.logspace(lo, hi, n_bins - 1).astype(np.float32)


def bin_bounds(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bound of every bin (``0`` and ``inf`` at the ends)."""
    lower = np.r_[np.float32(0), edges].astype(np.float32)
    upper = np.r_[edges, np.float32(np.inf)].astype(np.float32)
    return lower, upper


class StatsAccumulator:
    """Accumulates statistics of latent blocks on the device.

    Parameters
    ----------
    d_sae : int
    edges : numpy.ndarray
        Inner histogram edges from :func:`histogram_edges`.
    device : torch.device
    """

    #: Tokens per float64 block (bounds the temporary float64 copy).
    BLOCK = 2048

    def __init__(self, d_sae: int, edges: np.ndarray, device: torch.device):
        self.d_sae = d_sae
        self.n_bins = len(edges) + 1
        self.device = device
        self.edges = torch.tensor(edges, dtype=torch.float32, device=device)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.hist = torch.zeros(d_sae * self.n_bins, dtype=torch.int64, device=device)
        self.n_valid_tokens = 0

    def delta(
        self, features: torch.Tensor, values: torch.Tensor, dense: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sums, sums of squares and histogram of one block, not yet committed (so an
        out-of-memory retry never double counts).

        ``features``/``values`` are the block's nonzero latents (padding already dropped).
        On CPU the float64 sums come from them (``bincount`` is sequential, hence
        deterministic); on other devices, where scattered float adds are atomic and their
        order varies, they come from ``dense`` (the block's latents, padded rows zeroed).
        """
        bins = torch.bucketize(values, self.edges)
        h = torch.bincount(features * self.n_bins + bins, minlength=self.d_sae * self.n_bins)
        if dense is None:
            v64 = values.to(torch.float64)
            s = torch.bincount(features, weights=v64, minlength=self.d_sae)
            ss = torch.bincount(features, weights=v64 * v64, minlength=self.d_sae)
        else:
            s = torch.zeros_like(self.sum)
            ss = torch.zeros_like(self.sumsq)
            for a in range(0, dense.shape[0], self.BLOCK):
                b64 = dense[a : a + self.BLOCK].to(torch.float64)
                s += b64.sum(0)
                ss += (b64 * b64).sum(0)
        return s, ss, h

    def add(self, delta: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n_valid: int) -> None:
        """Commit a :meth:`delta` and the number of valid tokens it covered."""
        self.sum += delta[0]
        self.sumsq += delta[1]
        self.hist += delta[2]
        self.n_valid_tokens += int(n_valid)

    def update(self, z: torch.Tensor, n_valid: int) -> None:
        """Add a dense block ``z [N, d_sae]`` (float32, >= 0, padded rows zeroed)."""
        idx = z.reshape(-1).nonzero().squeeze(1)
        feats = idx % self.d_sae
        dense = None if self.device.type == "cpu" else z
        self.add(self.delta(feats, z.reshape(-1)[idx], dense), n_valid)

    def result(self, sample_max: np.ndarray) -> dict[str, np.ndarray]:
        """The partial (numpy) given this chunk's per-sample maxima ``[S, d_sae]``."""
        hist = self.hist.view(self.d_sae, self.n_bins).cpu().numpy()
        s = sample_max.shape[0]
        return {
            "max": sample_max.max(axis=0) if s else np.zeros(self.d_sae, np.float32),
            "n_active_tokens": hist.sum(axis=1),
            "n_active_samples": (sample_max > 0).sum(axis=0).astype(np.int64),
            "sum": self.sum.cpu().numpy(),
            "sumsq": self.sumsq.cpu().numpy(),
            "hist": hist,
            "n_valid_tokens": np.int64(self.n_valid_tokens),
            "n_samples": np.int64(s),
        }


def combine(partials: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Merge statistics partials (in the given order)."""
    out = {"max": np.maximum.reduce([p["max"] for p in partials])}
    for key in SUM_KEYS:
        acc = partials[0][key].copy() if np.ndim(partials[0][key]) else partials[0][key]
        for p in partials[1:]:
            acc = acc + p[key]
        out[key] = acc
    return out


def aggregate(partial: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Derived statistics: density, frequency, mean and std over active tokens, dead features."""
    n_tok = int(partial["n_valid_tokens"])
    n_smp = int(partial["n_samples"])
    act = partial["n_active_tokens"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(act > 0, partial["sum"] / act, np.nan)
        var = np.where(act > 0, partial["sumsq"] / act - mean * mean, np.nan)
    out = dict(partial)
    out["density"] = act / n_tok if n_tok else np.zeros_like(act, dtype=np.float64)
    out["frequency"] = partial["n_active_samples"] / n_smp if n_smp else np.zeros_like(act, dtype=np.float64)
    out["mean"] = mean
    out["std"] = np.sqrt(np.maximum(var, 0.0))
    out["dead"] = act == 0
    return out
