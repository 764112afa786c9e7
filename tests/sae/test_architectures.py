"""Registered SAE architectures: the topk tie rule (lower feature index) and block-wise thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvrt_dask.sae import architectures


def reference_topk(pre: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest values, ties to the lower index (a stable sort), ReLU'd."""
    idx = np.argsort(-pre, axis=-1, kind="stable")[..., :k]
    out = np.zeros_like(pre)
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    return out


def tied_pre(rows=200, width=37, seed=0):
    rng = np.random.default_rng(seed)
    # few distinct values (negative, zero, -0.0 and positive): ties at the k-th place everywhere
    vals = np.array([-2.0, -0.5, -0.0, 0.0, 0.25, 0.5, 1.5], np.float32)
    return vals[rng.integers(0, len(vals), size=(rows, width))]


def test_registry():
    assert set(architectures.REGISTRY) == {"standard", "jumprelu", "topk"}
    assert architectures.get("jumprelu").extra_tensors == ("threshold",)
    with pytest.raises(KeyError, match="supported"):
        architectures.get("gated")


def test_pack_keys_order():
    pre = torch.tensor([[-3.0, -1.0, -0.0, 0.0, 1e-30, 2.0, 2.0, float("inf")]])
    keys = architectures.pack_keys(pre, torch.arange(8)).numpy()[0]
    # value ascending along the row, and at equal value the lower index has the larger key
    assert (np.diff(keys[[0, 1, 2, 3, 4, 6, 7]]) > 0).all() and keys[5] > keys[6]


@pytest.mark.parametrize("k", [1, 3, 10, 37])
def test_topk_tie_rule_matches_stable_reference(k):
    pre = tied_pre()
    got = architectures.get("topk").activate(torch.from_numpy(pre.copy()), architectures.Whole(pre.shape[1], k))
    np.testing.assert_array_equal(got.numpy(), reference_topk(pre, k))


@pytest.mark.parametrize("block", [1, 5, 16, 37])
@pytest.mark.parametrize("k", [1, 4, 20])
def test_thresholds_merged_across_blocks(block, k):
    """The k-th key merged block by block, applied per block, equals the whole-row rule."""
    pre = tied_pre(seed=1)
    n, width = pre.shape
    arch = architectures.get("topk")
    running = torch.empty((n, 0), dtype=torch.int64)
    for lo in range(0, width, block):
        enc = architectures.Whole(width, k)
        enc.offset = lo
        keys = arch.keys(torch.from_numpy(pre[:, lo : lo + block].copy()), enc)
        running = architectures.kth_keys(keys, k, running)
    kth = running.amin(dim=-1)
    out = np.zeros_like(pre)
    for lo in range(0, width, block):
        enc = architectures.Whole(width, k)
        enc.offset, enc.width = lo, min(block, width - lo)
        out[:, lo : lo + block] = arch.activate(torch.from_numpy(pre[:, lo : lo + block].copy()), enc, token_key=kth).numpy()
    np.testing.assert_array_equal(out, reference_topk(pre, k))


def test_topk_block_without_thresholds_refused():
    enc = architectures.Whole(10, 2)
    enc.width = 5
    with pytest.raises(ValueError, match="token thresholds"):
        architectures.get("topk").activate(torch.ones(3, 5), enc)
