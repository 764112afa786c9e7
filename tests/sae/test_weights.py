"""SAELens directory loader/saver: formats, legacy keys, validation errors, hash, immutability."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _extract_data import make_sae
from hvrt_dask.sae.weights import SAEError, content_hash, load_sae, save_sae


def _tensors(d_in=6, d_sae=10, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
        "b_enc": rng.normal(size=d_sae).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_dec": rng.normal(size=d_in).astype(np.float32),
    }


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_roundtrip(tmp_path, arch):
    tensors, cfg = make_sae(tmp_path / "sae", d_in=6, d_sae=10, arch=arch, k=3)
    sae = load_sae(tmp_path / "sae")
    assert (sae.architecture, sae.d_in, sae.d_sae) == (arch, 6, 10)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(getattr(sae, name), arr)
    assert sae.k == (3 if arch == "topk" else None)
    assert (sae.threshold is not None) == (arch == "jumprelu")
    assert len(sae.content_hash) == 64 and sae.content_hash == content_hash(tmp_path / "sae")
    with open(tmp_path / "sae" / "cfg.json") as f:
        assert json.load(f)["metadata"]["sae_lens_version"].startswith("6")


def test_arrays_read_only_and_file_untouched(tmp_path):
    make_sae(tmp_path / "sae")
    before = content_hash(tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    with pytest.raises(ValueError):
        sae.W_enc[0, 0] = 1.0
    assert content_hash(tmp_path / "sae") == before


def test_hash_changes_with_weights(tmp_path):
    t = _tensors()
    h1 = save_sae(tmp_path / "a", t, {"d_in": 6, "d_sae": 10})
    t["b_enc"][0] += 1
    h2 = save_sae(tmp_path / "b", t, {"d_in": 6, "d_sae": 10})
    assert h1 != h2


def test_legacy_cfg(tmp_path):
    d = tmp_path / "legacy"
    os.makedirs(d)
    save_file({k: torch.from_numpy(v) for k, v in _tensors().items()}, str(d / "sae_weights.safetensors"))
    cfg = {"d_in": 6, "d_sae": 10, "hook_point": "blocks.0.hook_resid_pre", "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 2}, "normalize_activations": True, "model_name": "gpt2"}
    (d / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(d)
    assert sae.architecture == "topk" and sae.k == 2
    assert sae.apply_b_dec_to_input is True  # legacy default
    assert sae.normalize_activations == "expected_average_only_in"
    assert any("folded" in n for n in sae.notes) and any("legacy" in n for n in sae.notes)
    cfg = {"d_in": 6, "d_sae": 10, "normalize_activations": False}
    (d / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(d).architecture == "standard" and load_sae(d).normalize_activations == "none"


def test_bf16_weights_load_as_float32(tmp_path):
    d = tmp_path / "bf"
    os.makedirs(d)
    t = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in _tensors().items()}
    save_file(t, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps({"d_in": 6, "d_sae": 10, "architecture": "standard", "sae_lens_version": "6.1"}))
    sae = load_sae(d)
    assert sae.W_enc.dtype == np.float32
    np.testing.assert_array_equal(sae.W_enc, t["W_enc"].float().numpy())


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda t, c: t.pop("W_enc"), "'W_enc'"),
        (lambda t, c: t.update(b_enc=np.zeros(11, np.float32)), "'b_enc' has shape"),
        (lambda t, c: t.update(W_dec=np.zeros((6, 10), np.float32)), "'W_dec' has shape"),
        (lambda t, c: c.update(architecture="gated"), "unknown 'architecture'"),
        (lambda t, c: c.update(architecture="jumprelu"), "'threshold'"),
        (lambda t, c: c.update(architecture="topk"), "'k'"),
        (lambda t, c: c.pop("d_sae"), "'d_sae'"),
        (lambda t, c: c.update(normalize_activations="whiten"), "normalize_activations"),
        (lambda t, c: t["b_dec"].__setitem__(0, np.nan), "NaN"),
    ],
)
def test_invalid_sae_named(tmp_path, mutate, match):
    d = tmp_path / "bad"
    os.makedirs(d)
    t, c = _tensors(), {"d_in": 6, "d_sae": 10, "architecture": "standard", "sae_lens_version": "6.0"}
    mutate(t, c)
    save_file({k: torch.from_numpy(v) for k, v in t.items()}, str(d / "sae_weights.safetensors"))
    (d / "cfg.json").write_text(json.dumps(c))
    with pytest.raises(SAEError, match=match):
        load_sae(d)


def test_missing_files(tmp_path):
    with pytest.raises(SAEError, match="does not exist"):
        load_sae(tmp_path / "nope")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(SAEError, match="cfg.json"):
        load_sae(tmp_path / "empty")
    (tmp_path / "empty" / "cfg.json").write_text("{not json")
    (tmp_path / "empty" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(SAEError, match="invalid JSON"):
        load_sae(tmp_path / "empty")
    (tmp_path / "empty" / "cfg.json").write_text(json.dumps({"d_in": 6, "d_sae": 10}))
    with pytest.raises(SAEError, match="safetensors"):
        load_sae(tmp_path / "empty")


def test_save_refuses_existing(tmp_path):
    save_sae(tmp_path / "s", _tensors(), {"d_in": 6, "d_sae": 10})
    with pytest.raises(FileExistsError):
        save_sae(tmp_path / "s", _tensors(), {"d_in": 6, "d_sae": 10})
    save_sae(tmp_path / "s", _tensors(seed=1), {"d_in": 6, "d_sae": 10}, overwrite=True)
    with pytest.raises(SAEError, match="'W_enc' has shape"):
        save_sae(tmp_path / "t", _tensors(), {"d_in": 7, "d_sae": 10})


def test_save_sae_ownership(tmp_path):
    """save_sae replaces only an SAE directory it wrote; a user directory is never touched."""
    from hvrt_dask import ownership
    from hvrt_dask.ownership import OwnershipError

    user = tmp_path / "user"
    user.mkdir()
    (user / "cfg.json").write_text("{}")  # looks like an SAE, but hvrt_dask did not write it
    for overwrite in (False, True):
        with pytest.raises(OwnershipError, match="not written by hvrt_dask"):
            save_sae(user, _tensors(), {"d_in": 6, "d_sae": 10}, overwrite=overwrite)
    assert os.listdir(user) == ["cfg.json"] and (user / "cfg.json").read_text() == "{}"
    h = save_sae(tmp_path / "s", _tensors(), {"d_in": 6, "d_sae": 10})
    assert ownership.owned_by(tmp_path / "s", "sae.weights") and ownership.read_complete(tmp_path / "s")["content_hash"] == h
    with pytest.raises(OwnershipError, match="input"):
        save_sae(tmp_path / "s" / "x", _tensors(), {"d_in": 6, "d_sae": 10}, inputs=(tmp_path / "s",))


def test_header_only_load_and_block_read(tmp_path):
    from hvrt_dask.sae.weights import read_block

    tensors, _ = make_sae(tmp_path / "sae", d_in=6, d_sae=10, arch="jumprelu")
    lazy = load_sae(tmp_path / "sae", weights=False)
    assert lazy.W_enc is None and lazy.d_sae == 10 and lazy.content_hash == content_hash(tmp_path / "sae")
    blk = read_block(lazy, 3, 7)
    np.testing.assert_array_equal(blk["W_enc"], tensors["W_enc"][:, 3:7])
    np.testing.assert_array_equal(blk["threshold"], tensors["threshold"][3:7])
    np.testing.assert_array_equal(blk["b_dec"], tensors["b_dec"])
