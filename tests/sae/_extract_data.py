"""Small dyadic-rational activation stores and SAEs for the extraction tests.

Activations are multiples of 1/8 in [-2, 2], weights multiples of 1/8 in [-1, 1], biases
multiples of 1/16: every partial sum of a dot product is an exact float32 number, so every
summation order (BLAS, device, chunking) gives bit-identical latents, and ties are common.
"""

from __future__ import annotations

import heapq

import numpy as np

from hvrt_dask._seeding import generator
from hvrt_dask.sae.store import create_store, mark_complete
from hvrt_dask.sae.weights import save_sae


def make_store(path, n=96, seq=16, d_in=12, chunk=16, dtype="float32", seed=0, pad=True, vocab=50):
    rng = generator(seed, "test-store")
    acts = rng.integers(-16, 17, size=(n, seq, d_in)).astype(np.float32) / 8
    tokens = rng.integers(0, vocab, size=(n, seq)).astype(np.int32)
    mask = np.ones((n, seq), bool)
    if pad:
        lengths = rng.integers(seq // 2, seq + 1, size=n)
        mask = np.arange(seq)[None, :] < lengths[:, None]
        acts[~mask] = 7.0  # padding content must never count
    g = create_store(path, n, seq, d_in, chunk, dtype=dtype, attrs={"model": "synthetic", "layer": 0, "hook": "resid_post", "tokenizer": None})
    g["activations"][:] = acts.astype(dtype)
    g["tokens"][:] = tokens
    g["mask"][:] = mask
    g["done"][:] = True
    mark_complete(path)
    return acts, tokens, mask


def rewrite_checksums(path):
    """Act as the store's writer after a test edited its data in place: record new checksums."""
    import zarr

    g = zarr.open_group(path, mode="r+")
    g["checksum"][:] = 0
    mark_complete(path)


def make_sae(path, d_in=12, d_sae=40, arch="standard", seed=1, norm="none", apply_b_dec=True, k=4, rescale=False):
    rng = generator(seed, "test-sae", arch)
    tensors = {
        "W_enc": rng.integers(-8, 9, size=(d_in, d_sae)).astype(np.float32) / 8,
        "b_enc": rng.integers(-24, 4, size=d_sae).astype(np.float32) / 16,
        "W_dec": rng.integers(-8, 9, size=(d_sae, d_in)).astype(np.float32) / 8,
        "b_dec": rng.integers(-4, 5, size=d_in).astype(np.float32) / 16,
    }
    cfg = {"d_in": d_in, "d_sae": d_sae, "architecture": arch, "normalize_activations": norm, "apply_b_dec_to_input": apply_b_dec}
    if arch == "jumprelu":
        tensors["threshold"] = rng.integers(0, 16, size=d_sae).astype(np.float32) / 8
    if arch == "topk":
        cfg["k"] = k
        cfg["rescale_acts_by_decoder_norm"] = rescale
    save_sae(path, tensors, cfg)
    return tensors, cfg


def dense_latents(acts, tensors, cfg):
    """Direct numpy (float64) encode of ``acts [..., d_in]`` following SAELens semantics."""
    x = acts.astype(np.float64)
    norm = cfg.get("normalize_activations", "none")
    d_in = x.shape[-1]
    if norm == "constant_norm_rescale":
        n = np.linalg.norm(x, axis=-1, keepdims=True)
        x = x * np.where(n > 0, np.sqrt(d_in) / np.where(n > 0, n, 1), 0)
    elif norm == "layer_norm":
        x = x - x.mean(-1, keepdims=True)
        x = x / (x.std(-1, ddof=1, keepdims=True) + 1e-5)
    if cfg.get("apply_b_dec_to_input", True):
        x = x - tensors["b_dec"]
    pre = x @ tensors["W_enc"].astype(np.float64) + tensors["b_enc"]
    arch = cfg["architecture"]
    if arch == "standard":
        return np.maximum(pre, 0)
    if arch == "jumprelu":
        return np.where(pre > tensors["threshold"], np.maximum(pre, 0), 0)
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * np.linalg.norm(tensors["W_dec"].astype(np.float64), axis=1)
    kk = cfg["k"]
    idx = np.argsort(-pre, axis=-1, kind="stable")[..., :kk]
    out = np.zeros_like(pre)
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    return out


def sequential_reference(z, mask, k):
    """The plan's original loop: per sample, per feature, a Python min-heap of size k.

    ``z [n, seq, d_sae]`` latents, ``mask [n, seq]``. Ranking (value desc, sample asc,
    position asc); the position is the first maximum over valid tokens.
    Returns per-feature sorted lists of (value, sample, position).
    """
    n, seq, d_sae = z.shape
    heaps = [[] for _ in range(d_sae)]
    for s in range(n):
        valid = np.flatnonzero(mask[s])
        for f in range(d_sae):
            col = z[s, valid, f]
            if col.size == 0:
                continue
            m = float(col.max())
            if m <= 0:
                continue
            pos = int(valid[int(np.argmax(col))])
            key = (m, -s, -pos)  # heap top = worst example kept
            h = heaps[f]
            if len(h) < k:
                heapq.heappush(h, key)
            elif key > h[0]:
                heapq.heapreplace(h, key)
    return [[(v, -ns, -np_) for v, ns, np_ in sorted(h, reverse=True)] for h in heaps]
