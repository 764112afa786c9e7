"""Output writes: examples land in exactly the chunks that hold them; everything else stays fill."""

from __future__ import annotations

import os

import numpy as np
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
