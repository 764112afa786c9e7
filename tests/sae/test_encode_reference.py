"""Every SAE architecture against a numpy encoder written from the documented formulas
(docs/extraction.md "Encode", /work/shared/reference/sae-extraction.md "Encode semantics"),
not from the torch encoder, on dyadic data with exact ties:

- JumpReLU: ``relu(pre)`` where ``pre > threshold`` (strict), else 0 — thresholds are set to
  values that ``pre`` takes, so ``pre == threshold > 0`` happens and must stay inactive;
- TopK: the ``k`` largest per token, ReLU'd; ties at the k-th place go to the **lower feature
  index** — pre-activations take few distinct values, so the k-th value is tied at many tokens;
- ``rescale_acts_by_decoder_norm``: decoder rows with exact norms (1/2, 1, 5/4, 2);
- ``constant_norm_rescale``: tokens scaled to norm ``sqrt(d_in)`` (inputs with power-of-two norms,
  so the scale is exact), zero tokens stay zero.

All values are small dyadic rationals, so float32 (torch) and float64 (numpy) results are
bit-identical and the comparisons are exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvrt_dask.sae.encode import TorchEncoder, encode_numpy
from hvrt_dask.sae.weights import load_sae, save_sae

D_IN, D_SAE, K = 4, 12, 3


def reference_encode(x, t, cfg):
    """Documented encode of tokens ``x [N, d_in]`` (float64): normalise, minus b_dec, affine, activate."""
    x = np.asarray(x, np.float64)
    if cfg["normalize_activations"] == "constant_norm_rescale":
        norm = np.sqrt((x * x).sum(-1, keepdims=True))
        x = np.divide(x * np.sqrt(x.shape[-1]), norm, out=np.zeros_like(x), where=norm > 0)
    if cfg["apply_b_dec_to_input"]:
        x = x - t["b_dec"]
    pre = x @ t["W_enc"].astype(np.float64) + t["b_enc"]
    arch = cfg["architecture"]
    if arch == "standard":
        return np.maximum(pre, 0.0), pre
    if arch == "jumprelu":
        return np.where(pre > t["threshold"], np.maximum(pre, 0.0), 0.0), pre
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * np.sqrt((t["W_dec"].astype(np.float64) ** 2).sum(1))
    out = np.zeros_like(pre)
    for n, row in enumerate(pre):
        # value descending, then feature index ascending: a plain Python sort of pairs
        for _, f in sorted((-v, f) for f, v in enumerate(row))[: cfg["k"]]:
            out[n, f] = max(row[f], 0.0)
    return out, pre


def dyadic_tokens(rng, n):
    """Tokens with norms 1/2, 1, 2 or 4 (one or four non-zero entries of equal size), some zero."""
    a = rng.choice([0.25, 0.5, 1.0, 2.0], size=(n, 1))
    full = rng.integers(0, 2, size=(n, 1)).astype(bool)
    sign = rng.choice([-1.0, 1.0], size=(n, D_IN))
    one = np.zeros((n, D_IN))
    one[np.arange(n), rng.integers(0, D_IN, n)] = 1.0
    x = np.where(full, 1.0, one) * sign * a
    x[rng.random(n) < 0.05] = 0.0
    return x.astype(np.float32)


def dyadic_sae(rng, arch, norm, apply_b_dec, rescale=False):
    t = {
        "W_enc": rng.integers(-4, 5, size=(D_IN, D_SAE)).astype(np.float32) / 4,
        "b_enc": rng.integers(-4, 5, size=D_SAE).astype(np.float32) / 8,
        "b_dec": rng.integers(-2, 3, size=D_IN).astype(np.float32) / 4,
    }
    # decoder rows with exact norms: multiples of (1, 0, 0, 0) or (3/4, 1, 0, 0) (norm 5/4)
    base = np.array([[1.0, 0, 0, 0], [0.75, 1.0, 0, 0], [0, 0, 0.5, 0], [0, 2.0, 0, 0]], np.float32)
    t["W_dec"] = base[rng.integers(0, 4, D_SAE)]
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "architecture": arch, "normalize_activations": norm,
           "apply_b_dec_to_input": apply_b_dec}
    if arch == "topk":
        cfg.update(k=K, rescale_acts_by_decoder_norm=rescale)
    return t, cfg


CASES = [(a, r, n, b) for a, r in [("standard", False), ("jumprelu", False), ("topk", False), ("topk", True)]
         for n in ("none", "constant_norm_rescale") for b in (True, False)]


@pytest.mark.parametrize("case", range(len(CASES)), ids=["-".join(map(str, c)) for c in CASES])
def test_encoder_equals_documented_formula_at_ties(tmp_path, case):
    arch, rescale, norm, apply_b_dec = CASES[case]
    rng = np.random.default_rng(case)
    t, cfg = dyadic_sae(rng, arch, norm, apply_b_dec, rescale)
    x = dyadic_tokens(rng, 400)
    if arch == "jumprelu":
        # thresholds taken from the positive pre-activations: exact ties pre == threshold > 0
        _, pre = reference_encode(x, {**t, "threshold": np.zeros(D_SAE, np.float32)},
                                  {**cfg, "architecture": "standard"})
        t["threshold"] = np.array([np.median(np.unique(c[c > 0])) if (c > 0).any() else 0.5 for c in pre.T],
                                  np.float32)
        t["threshold"] = np.array([c[c > 0][np.argmin(np.abs(c[c > 0] - th))] if (c > 0).any() else th
                                   for c, th in zip(pre.T, t["threshold"])], np.float32)
    save_sae(tmp_path / "s", t, cfg)
    want, pre = reference_encode(x, t, cfg)
    got = encode_numpy(load_sae(tmp_path / "s"), x)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    # the data really sit on the edges the rules decide
    if arch == "jumprelu":
        tied = (pre == t["threshold"]) & (pre > 0)
        assert tied.sum() >= D_SAE and (got[tied] == 0).all()
        assert (got > 0).sum() > 50
    if arch == "topk":
        s = -np.sort(-pre, axis=1)
        tied_kth = (s[:, K - 1] == s[:, K]) & (s[:, K - 1] > 0)
        assert tied_kth.sum() > 5
        assert ((got > 0).sum(1) <= K).all() and ((got > 0).sum(1) == K).any()
    if norm == "constant_norm_rescale":
        zero = ~x.any(1)
        assert zero.any()


@pytest.mark.parametrize("block", [(0, 5), (5, 12), (3, 4)])
@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
def test_feature_block_encoder_is_a_slice_of_the_reference(tmp_path, arch, block):
    """A block encoder (extraction's per-block tasks) gives the reference's columns ``[lo, hi)``."""
    rng = np.random.default_rng(7)
    t, cfg = dyadic_sae(rng, arch, "none", True)
    if arch == "jumprelu":
        t["threshold"] = rng.integers(0, 5, size=D_SAE).astype(np.float32) / 8  # ties with pre
    save_sae(tmp_path / "s", t, cfg)
    x = dyadic_tokens(rng, 300)
    want, _ = reference_encode(x, t, cfg)
    lo, hi = block
    enc = TorchEncoder(load_sae(tmp_path / "s"), "cpu", block=block)
    with torch.no_grad():
        got = enc.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want[:, lo:hi].astype(np.float32))


def test_reference_tie_rule_is_lower_index():
    """The reference itself: a hand-computed token with a three-way tie at the k-th value."""
    t = {"W_enc": np.eye(4, 6, dtype=np.float32), "b_enc": np.array([0, 0, 0, 0, 0.5, 0], np.float32),
         "b_dec": np.zeros(4, np.float32), "W_dec": np.ones((6, 4), np.float32)}
    cfg = {"architecture": "topk", "k": 3, "normalize_activations": "none", "apply_b_dec_to_input": True}
    z, _ = reference_encode(np.array([[0.5, 1.0, 0.5, 0.5]]), t, cfg)
    # pre = [.5, 1, .5, .5, .5, 0]: 1 (feature 1), then the tie at .5 keeps features 0 and 2
    np.testing.assert_array_equal(z[0], [0.5, 1.0, 0.5, 0, 0, 0])
