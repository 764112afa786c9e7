"""Encoders of each architecture and normalisation against a direct dense numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _extract_data import dense_latents, make_sae
from hvrt_dask.sae.encode import TorchEncoder, encode_numpy, resolve_batch_size, run_batches
from hvrt_dask.sae.weights import load_sae, save_sae

CASES = [
    ("standard", "none", True, False),
    ("standard", "none", False, False),
    ("standard", "constant_norm_rescale", True, False),
    ("standard", "layer_norm", True, False),
    ("standard", "expected_average_only_in", True, False),
    ("jumprelu", "none", True, False),
    ("jumprelu", "layer_norm", False, False),
    ("topk", "none", True, False),
    ("topk", "constant_norm_rescale", True, True),
]


@pytest.mark.parametrize("arch,norm,apply_b_dec,rescale", CASES)
def test_against_dense(tmp_path, arch, norm, apply_b_dec, rescale):
    # continuous random weights/inputs (no ties at the top-k boundary)
    rng = np.random.default_rng(3)
    d_in, d_sae = 16, 48
    tensors = {
        "W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32) / 4,
        "b_enc": rng.normal(size=d_sae).astype(np.float32) / 4,
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_dec": rng.normal(size=d_in).astype(np.float32) / 4,
    }
    cfg = {"d_in": d_in, "d_sae": d_sae, "architecture": arch, "normalize_activations": norm, "apply_b_dec_to_input": apply_b_dec}
    if arch == "jumprelu":
        tensors["threshold"] = np.abs(rng.normal(size=d_sae)).astype(np.float32) / 2
    if arch == "topk":
        cfg.update(k=5, rescale_acts_by_decoder_norm=rescale)
    save_sae(tmp_path / "s", tensors, cfg)
    sae = load_sae(tmp_path / "s")
    x = (rng.normal(size=(3, 20, d_in)) * 2).astype(np.float32)
    got = encode_numpy(sae, x)
    exp = dense_latents(x, tensors, cfg)
    assert got.shape == (3, 20, d_sae) and got.dtype == np.float32
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-5)
    assert (got > 0).any() and (got == 0).any()
    if arch == "topk":
        assert ((got > 0).sum(-1) <= 5).all()
    if arch == "jumprelu":
        assert ((got == 0) | (got > tensors["threshold"])).all()


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_feature_subset_matches_full(tmp_path, arch):
    tensors, cfg = make_sae(tmp_path / "s", d_in=12, d_sae=40, arch=arch, k=4)
    enc = TorchEncoder(load_sae(tmp_path / "s"))
    rng = np.random.default_rng(0)
    x = rng.integers(-16, 17, size=(7, 5, 12)).astype(np.float32) / 8
    feats = rng.integers(0, 40, size=7)
    full = enc.encode(torch.from_numpy(x.reshape(-1, 12))).reshape(7, 5, 40).numpy()
    sub = enc.encode_features(torch.from_numpy(x), torch.from_numpy(feats)).numpy()
    np.testing.assert_array_equal(sub, full[np.arange(7), :, feats])


def test_float16_input(tmp_path):
    tensors, cfg = make_sae(tmp_path / "s", d_in=12, d_sae=40)
    sae = load_sae(tmp_path / "s")
    x = (np.random.default_rng(1).integers(-16, 17, size=(10, 12)) / 8).astype(np.float16)
    enc = TorchEncoder(sae)
    np.testing.assert_array_equal(enc.encode(torch.from_numpy(x)).numpy(), dense_latents(x, tensors, cfg).astype(np.float32))


def test_batch_size_resolution():
    dev = torch.device("cpu")
    assert resolve_batch_size(7, 128, 768, 16384, dev) == 7
    auto = resolve_batch_size("auto", 128, 768, 16384, dev)
    assert 1 <= auto <= 8192 // 128
    for bad in (0, -3, "big", 2.5, True):
        with pytest.raises((ValueError, TypeError)):
            resolve_batch_size(bad, 128, 768, 16384, dev)


def test_oom_halving_and_retry():
    seen = []

    def step(a, b):
        if b - a > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        seen.append((a, b))

    final = run_batches(20, 16, step)
    assert final == 2
    covered = sorted(i for a, b in seen for i in range(a, b))
    assert covered == list(range(20))  # every sample processed exactly once

    def always(a, b):
        raise torch.OutOfMemoryError("out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        run_batches(4, 4, always)

    def other(a, b):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        run_batches(4, 4, other)


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_sample_feature_subset_matches_full(tmp_path, arch):
    make_sae(tmp_path / "s", d_in=12, d_sae=40, arch=arch, k=4)
    enc = TorchEncoder(load_sae(tmp_path / "s"))
    rng = np.random.default_rng(2)
    x = rng.integers(-16, 17, size=(6, 9, 12)).astype(np.float32) / 8
    feats = rng.integers(0, 40, size=(6, 5))
    full = enc.encode(torch.from_numpy(x.reshape(-1, 12))).reshape(6, 9, 40).numpy()
    sub = enc.encode_sample_features(torch.from_numpy(x), torch.from_numpy(feats)).numpy()
    np.testing.assert_array_equal(sub, np.take_along_axis(full, feats[:, None, :].repeat(9, 1), 2))


def test_auto_batch_size_closed_form(monkeypatch):
    """CPU: fraction/4 of available RAM per bytes_per_sample, capped at CPU_MAX_TOKENS tokens and
    CPU_MAX_LATENTS latents, at least 1 (the documented rule, hand-computed)."""
    import types

    import psutil

    from hvrt_dask.sae import encode as E

    assert E.bytes_per_sample(10, 3, 5) == 10 * (5 * 12 + 3 * 12) == 960
    dev = torch.device("cpu")
    avail = {"bytes": 0}
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=avail["bytes"]))
    per = E.bytes_per_sample(16, 8, 32)
    avail["bytes"] = 8 * per * 7 + 5  # fraction 0.5 / 4 → 7 samples' worth
    assert E.auto_batch_size(16, 8, 32, dev) == 7
    assert E.resolve_batch_size("auto", 16, 8, 32, dev) == 7
    avail["bytes"] = 8 * per * 7 - 5
    assert E.auto_batch_size(16, 8, 32, dev) == 6
    avail["bytes"] = 2**50  # plenty of RAM: the token cap, then the latent cap
    assert E.auto_batch_size(128, 8, 32, dev) == E.CPU_MAX_TOKENS // 128
    assert E.auto_batch_size(64, 8, 2**16, dev) == E.CPU_MAX_LATENTS // (64 * 2**16) == 8
    assert E.auto_batch_size(64, 8, 2**16, dev, fraction=0.25) == 8
    avail["bytes"] = 0
    assert E.auto_batch_size(16, 8, 32, dev) == 1
