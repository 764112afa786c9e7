"""Output writes: examples land in exactly the chunks that hold them; everything else stays fill."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from hvrt_dask.sae.output import CHUNK_KEYS, write_examples


def _arrays(path, shape, chunks):
    g = zarr.open_group(str(path), mode="a", zarr_format=3)
    for name, dtype, fill in (("v", "float32", np.nan), ("t", "int32", -1)):
        g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, chunk_key_encoding=CHUNK_KEYS,
                       config={"write_empty_chunks": True})
    return g


def test_write_examples_matches_dense_reference_and_writes_only_touched_chunks(tmp_path):
    # 3 blocks of 12 features (chunks of 4 features x 3 ranks x 2 slots, 5-wide windows);
    # the last block is narrower (10 features), and rank 7 lies in a partial edge chunk
    shape, chunks = (34, 8, 2, 5), (4, 3, 2, 5)
    g = _arrays(tmp_path / "o.zarr", shape, chunks)
    rng = np.random.default_rng(0)
    ref_v = np.full(shape, np.nan, np.float32)
    ref_t = np.full(shape, -1, np.int32)
    for lo, width in ((0, 12), (12, 12), (24, 10)):
        n = 9 if lo else 0  # block 0: no example at all
        cells = rng.choice(width * 8 * 2, size=n, replace=False)
        f, r, s = np.unravel_index(cells, (width, 8, 2))
        v = rng.random((n, 5)).astype(np.float32)
        t = rng.integers(0, 100, (n, 5)).astype(np.int32)
        nbytes = write_examples(str(tmp_path / "o.zarr"), lo, width, ("v", "t"), (f, r, s), (v, t))
        ref_v[lo + f, r, s] = v
        ref_t[lo + f, r, s] = t
        assert (nbytes > 0) == (n > 0)
    np.testing.assert_array_equal(g["v"][:], ref_v)
    np.testing.assert_array_equal(g["t"][:], ref_t)
    # a chunk file exists exactly where a chunk holds an example
    held = {(a // 4, b // 3) for a, b in zip(*np.nonzero((ref_t >= 0).any(axis=(2, 3))))}
    files = {tuple(int(x) for x in name.split(".")[1:3]) for name in os.listdir(tmp_path / "o.zarr" / "t")
             if name.startswith("c.")}
    assert files == held and held


def test_range_layout_blocks_start_on_chunks():
    from hvrt_dask.sae.output import range_layout

    chunk, starts, total = range_layout([0, 5, 17, 3, 0])
    assert chunk == 32  # the smallest power of two holding the largest block
    assert starts.tolist() == [0, 0, 32, 64, 96] and total == 96
    chunk, starts, total = range_layout([10_000, 1], cap=4096)
    assert chunk == 4096 and starts.tolist() == [0, 12288] and total == 16384
    chunk, starts, total = range_layout([0, 0])  # no examples: no rows
    assert chunk == 1 and starts.tolist() == [0, 0] and total == 0


def test_range_examples_round_trip_against_dense_reference(tmp_path):
    """Blocks write their rows (padded to whole chunks); a feature range reads back exactly
    the rows of its features, and the dense view equals a dense reference."""
    from hvrt_dask.sae.output import (FORMAT, RANGE_ARRAYS, create_range_examples, dense_range_examples,
                                      range_layout, read_range_examples, write_range_examples)

    out = str(tmp_path / "o.zarr")
    d_sae, n_bins, m, w, block = 26, 4, 3, 5, 8  # blocks [0, 8) [8, 16) [16, 24) [24, 26): 8 does not divide 26
    g = zarr.open_group(out, mode="a", zarr_format=3)
    g.attrs.update({"format": FORMAT, "config": {"range_examples": m}})
    g.create_array("hist", shape=(d_sae, n_bins), dtype="int64", fill_value=0)
    g.create_array("window_offset", shape=(w,), dtype="int64", fill_value=0)
    for name, dt in (("range_start", "int64"), ("range_count", "int32")):
        g.create_array(name, shape=(d_sae,), chunks=(block,), dtype=dt, fill_value=0)
    rng = np.random.default_rng(1)
    ref = {k: np.full((d_sae, n_bins, m) + ((w,) if RANGE_ARRAYS[k][2] else ()), RANGE_ARRAYS[k][1], RANGE_ARRAYS[k][0])
           for k in ("range_sample", "range_value", "range_position", "range_window_tokens", "range_window_acts")}
    blocks = []
    for lo in range(0, d_sae, block):
        width = min(block, d_sae - lo)
        live = np.sort(rng.choice(width * n_bins * m, size=int(rng.integers(0, 20)), replace=False))
        blocks.append((lo, width, live))
    chunk, rows0, total = range_layout([len(b[2]) for b in blocks])
    create_range_examples(out, n_rows=total, chunk=chunk, window=w)
    for (lo, width, live), r0 in zip(blocks, rows0):
        f, b, s = np.unravel_index(live, (width, n_bins, m))
        n = len(live)
        rows = {"range_feature": f + lo, "range_bin": b, "range_slot": s, "range_sample": rng.integers(0, 99, n),
                "range_value": rng.random(n).astype(np.float32), "range_position": rng.integers(0, 9, n),
                "range_window_tokens": rng.integers(0, 50, (n, w)), "range_window_acts": rng.random((n, w)).astype(np.float32)}
        write_range_examples(out, int(r0), rows)
        count = np.bincount(f, minlength=width)
        g["range_count"][lo : lo + width] = count
        g["range_start"][lo : lo + width] = r0 + np.r_[0, np.cumsum(count)[:-1]]
        for k in ref:
            ref[k][f + lo, b, s] = rows[k]
    dense = dense_range_examples(out)
    for k, want in ref.items():
        np.testing.assert_array_equal(dense[k], want, err_msg=k)
    for lo, hi in ((0, d_sae), (3, 11), (24, 26), (5, 6)):
        got = read_range_examples(out, lo, hi)
        assert ((got["range_feature"] >= lo) & (got["range_feature"] < hi)).all()
        assert len(got["range_feature"]) == int((ref["range_sample"][lo:hi] >= 0).sum())
        key = (got["range_feature"] * n_bins + got["range_bin"]) * m + got["range_slot"]
        assert (np.diff(key) > 0).all()  # sorted by (feature, bin, slot)
    g.attrs["format"] = "hvrt_dask.sae_features/2"
    with pytest.raises(ValueError, match="sae_features/2.*re-run the extraction"):
        read_range_examples(out, 0, 4)
