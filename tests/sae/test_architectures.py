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


def test_unknown_architecture_lists_the_supported_ones():
    with pytest.raises(KeyError, match=r"unknown SAE architecture 'gated' \(supported: standard, jumprelu, topk\)"):
        architectures.get("gated")


def test_topk_subset_message():
    enc = architectures.Whole(10, 2)
    enc.width = 5
    with pytest.raises(ValueError, match=r"^a topk activation of a feature subset needs the token thresholds \(kth_keys\)$"):
        architectures.get("topk").activate(torch.ones(3, 5), enc)


@pytest.mark.parametrize("rescale", [False, True])
def test_topk_on_gathered_feature_subsets(rescale):
    """The window pass's form: per sample a few block-local features ``cols [B, 1, m]`` of a block
    at ``offset``, pre-activations ``[B, T, m]``, token thresholds ``[B, T]`` of the whole SAE;
    each gathered column equals the whole-row reference (ties to the lower global index)."""
    B, T, width, k, lo, hi, m = 6, 5, 24, 4, 8, 20, 3
    pre = tied_pre(rows=B * T, width=width, seed=2)
    norms = np.array([0.5, 1.0, 2.0, 1.5], np.float32)[np.arange(width) % 4] if rescale else None
    ranked = pre * norms if rescale else pre
    want = reference_topk(ranked, k).reshape(B, T, width)
    arch = architectures.get("topk")
    whole = architectures.Whole(width, k, dec_norm=None if norms is None else torch.from_numpy(norms))
    token_key = architectures.kth_keys(arch.keys(arch.rescale(torch.from_numpy(pre.copy()), whole), whole), k)
    enc = architectures.Whole(width, k)
    enc.offset, enc.width = lo, hi - lo
    enc.dec_norm = None if norms is None else torch.from_numpy(norms[lo:hi].copy())
    rng = np.random.default_rng(0)
    cols = np.stack([rng.choice(hi - lo, m, replace=False) for _ in range(B)])  # block-local
    block = pre.reshape(B, T, width)[:, :, lo:hi]
    gathered = np.take_along_axis(block, cols[:, None, :], axis=2).copy()
    got = arch.activate(torch.from_numpy(gathered), enc, torch.from_numpy(cols)[:, None, :],
                        token_key.reshape(B, T)).numpy()
    np.testing.assert_array_equal(got, np.take_along_axis(want[:, :, lo:hi], cols[:, None, :], axis=2))
    assert (got > 0).any()


@pytest.mark.parametrize("name", ["standard", "jumprelu", "topk"])
def test_activation_with_autograd_matches_and_passes_gradients(name):
    """Training path (pre requires grad: no in-place mask): same latents, gradient = the kept mask."""
    pre = tied_pre(rows=40, width=12, seed=3)
    arch = architectures.get(name)
    enc = architectures.Whole(12, 3, threshold=torch.full((12,), 0.25))
    want = arch.activate(torch.from_numpy(pre.copy()), enc).numpy()
    x = torch.from_numpy(pre.copy()).requires_grad_(True)
    z = arch.activate(x * 1.0, enc)
    np.testing.assert_array_equal(z.detach().numpy(), want)
    z.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), (want > 0).astype(np.float32))


def test_keys_and_kth_keys_over_any_leading_shape():
    """``kth_keys`` works on ``[..., features]`` (and merges ``[..., <=k]`` running keys), so a
    ``[B, T, F]`` batch (here T = 2 < k) gives the same thresholds as its ``[B * T, F]`` rows."""
    pre = tied_pre(rows=24, width=10, seed=4)
    arch, whole = architectures.get("topk"), architectures.Whole(10, 3)
    keys = arch.keys(torch.from_numpy(pre.copy()), whole)
    keys3 = arch.keys(torch.from_numpy(pre.reshape(12, 2, 10).copy()), whole)
    np.testing.assert_array_equal(keys3.numpy(), keys.reshape(12, 2, 10).numpy())
    flat = architectures.kth_keys(keys, 3)
    np.testing.assert_array_equal(architectures.kth_keys(keys3, 3).numpy(), flat.reshape(12, 2).numpy())
    run2 = architectures.kth_keys(keys[:, 5:], 3, architectures.kth_keys(keys[:, :5], 3, torch.empty((24, 0), dtype=torch.int64)))
    run3 = architectures.kth_keys(keys3[..., 5:], 3,
                                  architectures.kth_keys(keys3[..., :5], 3, torch.empty((12, 2, 0), dtype=torch.int64)))
    assert run3.shape == (12, 2, 3)
    np.testing.assert_array_equal(np.sort(run3.reshape(24, 3).numpy(), -1), np.sort(run2.numpy(), -1))
    np.testing.assert_array_equal(run2.amin(-1).numpy(), flat.numpy())
