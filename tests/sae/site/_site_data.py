"""Tiny extraction outputs for the site tests (real extraction on dyadic data, with range examples).

:func:`expected_range_examples` computes the range-example variables (names and layout of
docs/site.md) from the dense latents and the store's tokens; :func:`tiny_output` checks the
extraction's own against them.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
import zarr

from _extract_data import dense_latents, make_sae, make_store
from hvrt_dask.sae import range_examples as rx
from hvrt_dask.sae.extract import extract_features
from hvrt_dask.sae.output import dense_range_examples


def tiny_output(root, *, d_sae=16, n=30, seq=10, top_k=4, prefix=2, suffix=3, vocab=20, tokenizer=None, range_m=None):
    acts, tokens, mask = make_store(root / "store", n=n, seq=seq, d_in=12, chunk=10, vocab=vocab)
    if tokenizer is not None:
        zarr.open_group(root / "store", mode="r+").attrs["tokenizer"] = str(tokenizer)
    tensors, cfg = make_sae(root / "sae", d_in=12, d_sae=d_sae)
    r = extract_features(root / "store", root / "sae", root / "out", top_k=top_k, prefix=prefix, suffix=suffix,
                         range_examples=range_m or 0, seed=0, progress=False)
    if range_m:  # the extraction wrote them: check them against the dense reference
        z = dense_latents(acts, tensors, cfg).astype(np.float32)
        z[~mask] = 0
        got = dense_range_examples(r.path)  # read back through the sparse layout
        for name, want in expected_range_examples(r.path, z, tokens, mask, range_m).items():
            np.testing.assert_array_equal(got[name], want, err_msg=name)
    return r.path


def expected_range_examples(out, z, tokens, mask, m, seed=0):
    """The range-example variables (feature, bin, range_slot[, window]) an extraction must write,
    computed here from the dense latents and the store's tokens."""
    ds = xr.open_zarr(out)
    edges = ds.bin_upper.values[:-1].astype(np.float32)
    offs = ds.window_offset.values
    zm = np.where(mask[:, :, None], z, -np.inf)
    smax = np.maximum(zm.max(axis=1), 0).astype(np.float32)
    sarg = zm.argmax(axis=1).astype(np.int32)
    fin = rx.finalize(rx.chunk_partial(smax, sarg, np.arange(z.shape[0]), edges, m, seed))
    s, p = fin["range_sample"], fin["range_position"]
    live = s >= 0
    q = p[..., None] + offs  # [F, B, m, W]
    inside = live[..., None] & (q >= 0) & (q < z.shape[1])
    ss = np.where(live, s, 0)[..., None].repeat(offs.size, -1)
    qq = np.clip(q, 0, z.shape[1] - 1)
    wt = np.where(inside, tokens[ss, qq], -1).astype(np.int32)
    f = np.arange(z.shape[2])[:, None, None, None]
    wa = np.where(inside & mask[ss, qq], z[ss, qq, f], np.nan).astype(np.float32)
    return {**fin, "range_window_tokens": wt, "range_window_acts": wa}


def set_attrs(out, **attrs):
    """Overwrite top-level attributes of a finished output (e.g. hostile ``sae``/``store`` dicts)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        zarr.open_group(out, mode="r+").attrs.update(attrs)
        zarr.consolidate_metadata(out)


def word_tokenizer(path, words):
    """A local WordLevel tokenizer whose id ``i`` is ``words[i]`` (plus ``[UNK]`` and ``[CLS]``)."""
    import tokenizers
    import transformers

    vocab = {w: i for i, w in enumerate(words)}
    vocab["[UNK]"] = len(words)
    vocab["[CLS]"] = len(words) + 1
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]")
    fast.save_pretrained(str(path))
    return path
