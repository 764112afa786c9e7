"""The activation store's writer side: ownership, per-chunk checksums, completion rules."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from _extract_data import make_store
from hvrt_dask import ownership
from hvrt_dask.ownership import OwnershipError
from hvrt_dask.sae.store import (ChunkReadError, StoreError, chunk_checksum, create_store, mark_complete, open_store,
                                 read_chunk, write_chunk)


def test_checksums_recorded_and_verified(tmp_path):
    acts, tokens, mask = make_store(tmp_path / "s", n=20, seq=4, d_in=3, chunk=8)
    st = open_store(tmp_path / "s")
    assert ownership.owned_by(tmp_path / "s", "sae.activations") and ownership.is_complete(tmp_path / "s")
    for i in range(st.n_chunks):
        a, b = st.chunk_bounds(i)
        assert int(st.checksums[i]) == chunk_checksum(acts[a:b], tokens[a:b], mask[a:b])
        got = read_chunk(st, i)
        np.testing.assert_array_equal(got[0], acts[a:b])
    fp = st.fingerprint(0, 8)
    g = zarr.open_group(tmp_path / "s", mode="r+")
    g["tokens"][0, 0] = g["tokens"][0, 0] + 1  # rewritten behind the writer's back
    with pytest.raises(ChunkReadError, match=r"chunk 0 \(samples 0\.\.7\).*checksum"):
        read_chunk(open_store(tmp_path / "s"), 0)
    assert open_store(tmp_path / "s").fingerprint(0, 8) == fp  # metadata only: the checksum decides


def test_write_chunk_checksum_and_completion(tmp_path):
    g = create_store(tmp_path / "s", 10, 3, 2, 4, dtype="float16")
    rng = np.random.default_rng(0)
    for i, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        x = rng.normal(size=(b - a, 3, 2)).astype(np.float32)
        c = write_chunk(g, i, x, np.arange((b - a) * 3, dtype=np.int32).reshape(b - a, 3), np.ones((b - a, 3), bool))
        assert c == chunk_checksum(x.astype(np.float16), np.arange((b - a) * 3, dtype=np.int32).reshape(b - a, 3),
                                   np.ones((b - a, 3), bool))
        g["checksum"][i] = np.uint64(c)
        if i < 2:
            g["done"][i] = True
    with pytest.raises(StoreError, match="chunk 2 is not done"):
        mark_complete(tmp_path / "s")
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    assert not ownership.is_complete(tmp_path / "s")
    g["done"][2] = True
    mark_complete(tmp_path / "s")
    assert open_store(tmp_path / "s").attrs["complete"] is True


def test_create_store_ownership(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OwnershipError, match="not written by hvrt_dask"):
            create_store(user, 4, 2, 2, 2, overwrite=overwrite)
    assert os.listdir(user) == ["notes.txt"]
    make_store(tmp_path / "s", n=8, seq=4, d_in=3, chunk=4)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        create_store(tmp_path / "s", 4, 2, 2, 2)
    create_store(tmp_path / "s", 4, 2, 2, 2, overwrite=True)  # our own store: replaced
    assert not ownership.is_complete(tmp_path / "s")
    with pytest.raises(StoreError, match="incomplete"):
        open_store(tmp_path / "s")
    with pytest.raises(OwnershipError, match="input"):
        create_store(tmp_path / "s" / "inner", 4, 2, 2, 2, inputs=(tmp_path / "s",))


def test_store_format_1_refused(tmp_path):
    make_store(tmp_path / "s", n=8, seq=4, d_in=3, chunk=4)
    zarr.open_group(tmp_path / "s", mode="r+").attrs["format"] = "hvrt_dask.activations/1"
    with pytest.raises(StoreError, match="version 1 stores lack per-chunk checksums"):
        open_store(tmp_path / "s")
