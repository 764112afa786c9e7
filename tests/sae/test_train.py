"""The small SAE trainer on a learnable synthetic store (known sparse dictionary)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from hvrt_dask._seeding import generator
from hvrt_dask.sae.store import StoreError, create_store, mark_complete
from hvrt_dask.sae.train import train_sae

D_IN, N_TRUE, SEQ, N = 16, 24, 16, 96


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    """x = sparse non-negative codes @ unit dictionary + offset; padding filled with junk (masked)."""
    path = tmp_path_factory.mktemp("train") / "synth.zarr"
    rng = generator(0, "test-train")
    dictionary = rng.normal(size=(N_TRUE, D_IN))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    codes = np.where(rng.random((N, SEQ, N_TRUE)) < 3 / N_TRUE, rng.uniform(0.5, 3.0, (N, SEQ, N_TRUE)), 0.0)
    acts = codes @ dictionary + 0.3
    lengths = rng.integers(SEQ // 2, SEQ + 1, N)
    mask = np.arange(SEQ)[None, :] < lengths[:, None]
    acts[~mask] = 1e4  # must never reach the trainer
    g = create_store(path, N, SEQ, D_IN, chunk_samples=16, dtype="float32", attrs={"model": "synthetic", "layer": 0, "hook": "resid_post"})
    g["activations"][:] = acts.astype(np.float32)
    g["tokens"][:] = np.where(mask, 1, 0).astype(np.int32)
    g["mask"][:] = mask
    g["done"][:] = True
    mark_complete(path)
    return path


def _raw_fve(sae_dir, x):
    """Independent FVE of the saved SAE on raw tokens (numpy, float64)."""
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(sae_dir, "sae_weights.safetensors")).items()}
    cfg = json.load(open(os.path.join(sae_dir, "cfg.json")))
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        kth = -np.sort(-pre, axis=1)[:, cfg["k"] - 1 : cfg["k"]]
        pre = np.where(pre >= kth, pre, 0.0)
    f = np.maximum(pre, 0)
    xh = f @ w["W_dec"] + w["b_dec"]
    return 1 - ((xh - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), (f > 0).sum(1).mean()


def _valid_tokens(path):
    import zarr

    g = zarr.open_group(str(path), mode="r")
    return g["activations"][:][g["mask"][:]].astype(np.float64)


def test_standard_learns_and_is_saelens(tmp_path, synth_store):
    rec = train_sae(synth_store, tmp_path / "sae", d_sae=64, steps=300, batch_tokens=256, lr=3e-3,
                    l1_coefficient=0.5, seed=1, holdout_fraction=0.1, log_every=10, progress=False)
    first, last = rec["log"][0], rec["log"][-1]
    assert last["mse"] < 0.2 * first["mse"]  # loss decreased
    assert rec["fve"] > 0.85, rec["fve"]
    assert 0 < rec["l0"] < 64
    cfg = json.load(open(tmp_path / "sae" / "cfg.json"))
    assert cfg["architecture"] == "standard" and cfg["d_in"] == D_IN and cfg["d_sae"] == 64
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert w["W_enc"].shape == (D_IN, 64) and w["W_dec"].shape == (64, D_IN) and w["b_dec"].shape == (D_IN,)
    # the input scale is folded into the weights: raw-space FVE (all valid tokens) is high too
    fve_all, _ = _raw_fve(tmp_path / "sae", _valid_tokens(synth_store))
    assert fve_all > 0.85
    rec_json = json.load(open(tmp_path / "sae" / "training.json"))
    assert rec_json["fve"] == pytest.approx(rec["fve"]) and "l0" in rec_json
    try:
        from hvrt_dask.sae.weights import load_sae
    except ImportError:
        return
    sae = load_sae(tmp_path / "sae")
    assert (sae.architecture, sae.d_in, sae.d_sae) == ("standard", D_IN, 64)
    np.testing.assert_array_equal(sae.W_enc, w["W_enc"])


def test_topk(tmp_path, synth_store):
    rec = train_sae(synth_store, tmp_path / "tk", d_sae=48, architecture="topk", k=4, steps=250, batch_tokens=256,
                    lr=3e-3, seed=2, progress=False)
    assert rec["l0"] <= 4 + 1e-9
    fve, l0 = _raw_fve(tmp_path / "tk", _valid_tokens(synth_store))
    assert fve > 0.8 and rec["fve"] > 0.8
    assert l0 <= 4
    cfg = json.load(open(tmp_path / "tk" / "cfg.json"))
    assert cfg["architecture"] == "topk" and cfg["k"] == 4
    w = load_file(str(tmp_path / "tk" / "sae_weights.safetensors"))
    # unit decoder rows in training space: equal norms after folding the scale
    norms = np.linalg.norm(w["W_dec"], axis=1)
    np.testing.assert_allclose(norms, norms[0], rtol=1e-4)


def test_deterministic_by_seed(tmp_path, synth_store):
    kw = dict(d_sae=32, steps=20, batch_tokens=128, progress=False)
    train_sae(synth_store, tmp_path / "a", seed=5, **kw)
    train_sae(synth_store, tmp_path / "b", seed=5, **kw)
    train_sae(synth_store, tmp_path / "c", seed=6, **kw)
    a, b, c = (load_file(str(tmp_path / n / "sae_weights.safetensors")) for n in "abc")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["W_enc"], c["W_enc"])


def test_bad_input(tmp_path, synth_store):
    with pytest.raises(ValueError, match="needs k"):
        train_sae(synth_store, tmp_path / "x", architecture="topk", steps=1)
    with pytest.raises(ValueError, match="architecture must be one of"):
        train_sae(synth_store, tmp_path / "x", architecture="gated", steps=1)
    with pytest.raises(ValueError, match="only used by architecture 'topk'"):
        train_sae(synth_store, tmp_path / "x", k=3, steps=1)
    with pytest.raises(ValueError, match="positive"):
        train_sae(synth_store, tmp_path / "x", d_sae=0, steps=1)
    with pytest.raises(StoreError, match="does not exist"):
        train_sae(tmp_path / "nostore", tmp_path / "x", steps=1)
    inc = tmp_path / "inc.zarr"
    create_store(inc, 4, 4, D_IN, 2, "float32")
    with pytest.raises(StoreError, match="incomplete"):
        train_sae(inc, tmp_path / "x", steps=1)
    assert not (tmp_path / "x").exists()
    train_sae(synth_store, tmp_path / "y", d_sae=8, steps=2, batch_tokens=64, progress=False)
    with pytest.raises(FileExistsError):
        train_sae(synth_store, tmp_path / "y", d_sae=8, steps=2, batch_tokens=64, progress=False)
