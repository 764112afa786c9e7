"""Every bad input of the issue: a clear error before anything is written, or (mid-run) a
failure that leaves finished partials intact for resume."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr

from _extract_data import make_sae, make_store
from hvrt_dask.sae.extract import ChunkReadError, NonFiniteActivationError, extract_features
from hvrt_dask.sae.output import is_complete, open_output
from hvrt_dask.sae.store import StoreError
from hvrt_dask.sae.weights import SAEError


@pytest.fixture
def env(tmp_path):
    make_store(tmp_path / "store", n=40, seq=8, d_in=12, chunk=8)
    make_sae(tmp_path / "sae", d_in=12, d_sae=16)
    return tmp_path


def run(env, **kw):
    args = {"store": env / "store", "sae": env / "sae", "out": env / "out"}
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return extract_features(args["store"], args["sae"], args["out"], top_k=kw.pop("top_k", 3), progress=False, **kw)


def assert_nothing_written(env):
    assert not os.path.exists(env / "out")


def test_d_in_mismatch(env):
    make_sae(env / "sae8", d_in=8, d_sae=16)
    with pytest.raises(ValueError, match="d_in=8.*d_in=12"):
        run(env, sae=env / "sae8")
    assert_nothing_written(env)


def test_missing_and_misshapen_tensors(env):
    from safetensors.numpy import load_file, save_file

    fn = env / "sae" / "sae_weights.safetensors"
    t = load_file(fn)
    save_file({k: v for k, v in t.items() if k != "b_enc"}, fn)
    with pytest.raises(SAEError, match="'b_enc'"):
        run(env)
    t["W_enc"] = t["W_enc"][:, :5].copy()
    save_file(t, fn)
    with pytest.raises(SAEError, match="'W_enc' has shape"):
        run(env)
    assert_nothing_written(env)


def test_unknown_architecture(env):
    fn = env / "sae" / "cfg.json"
    cfg = json.loads(fn.read_text())
    cfg["architecture"] = "matching_pursuit"
    fn.write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="unknown 'architecture'"):
        run(env)
    assert_nothing_written(env)


@pytest.mark.parametrize("name", ["activations", "tokens"])
def test_store_missing_array(env, name):
    shutil.rmtree(env / "store" / name)
    with pytest.raises(StoreError, match=name):
        run(env)
    assert_nothing_written(env)


def test_store_mismatched_shapes(env):
    g = zarr.open_group(env / "store", mode="r+")
    del g["tokens"]
    g.create_array("tokens", shape=(40, 9), chunks=(8, 9), dtype="int32")
    with pytest.raises(StoreError, match="'tokens' shape"):
        run(env)
    assert_nothing_written(env)


def test_incomplete_store(env):
    zarr.open_group(env / "store", mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        run(env)
    assert_nothing_written(env)


@pytest.mark.parametrize("kw,match", [
    ({"top_k": 0}, "top_k"), ({"top_k": -2}, "top_k"), ({"prefix": -1}, "prefix"), ({"suffix": -3}, "suffix"),
    ({"split_every": 1}, "split_every"), ({"max_in_flight": 0}, "max_in_flight"), ({"batch_size": 0}, "batch_size"),
    ({"nonfinite": "ignore"}, "nonfinite"), ({"chunk_samples": 0}, "chunk_samples"),
])
def test_bad_parameters(env, kw, match):
    with pytest.raises(ValueError, match=match):
        run(env, **kw)
    assert_nothing_written(env)


def test_bad_parameter_types(env):
    with pytest.raises(TypeError, match="top_k"):
        run(env, top_k=2.5)
    with pytest.raises(TypeError, match="batch_size"):
        run(env, batch_size="huge")
    assert_nothing_written(env)


def test_output_exists(env):
    os.makedirs(env / "out")
    (env / "out" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        run(env)
    assert (env / "out" / "keep.txt").read_text() == "user data"
    with pytest.raises(ValueError, match="holds no extraction run"):
        run(env, resume=True)
    run(env, overwrite=True)
    assert is_complete(env / "out") and not (env / "out" / "keep.txt").exists()


def test_resume_with_other_config_refused(env):
    with pytest.raises(RuntimeError):
        run(env, _fail_after=2)
    with pytest.raises(ValueError, match="'top_k' differs"):
        run(env, resume=True, top_k=4)
    make_sae(env / "sae2", d_in=12, d_sae=16, seed=9)
    with pytest.raises(ValueError, match="'sae_hash' differs"):
        run(env, resume=True, sae=env / "sae2")


def test_nonfinite_names_sample_and_chunk(env):
    g = zarr.open_group(env / "store", mode="r+")
    a = g["activations"][24:32]
    a[3, 2, 5] = np.nan  # sample 27, position 2 (a valid token: lengths >= seq/2)
    g["activations"][24:32] = a
    with pytest.raises(NonFiniteActivationError, match=r"chunk 3: sample 27, position 2"):
        run(env, max_in_flight=1)
    # mid-run failure: finished chunks are checkpointed, the output is not complete
    done = sorted(p for p in os.listdir(env / "out" / "partials") if p.endswith(".done"))
    assert done == [f"chunk-{i:07d}.done" for i in range(3)]
    assert not is_complete(env / "out")
    # "mask" treats such tokens as padding
    r = run(env, nonfinite="mask", overwrite=True)
    ds = open_output(r.path)
    assert ds.attrs["config"]["n_nonfinite_masked"] == 1
    assert np.isfinite(ds.act_sum.values).all()


def test_nonfinite_at_padding_is_ignored(env):
    g = zarr.open_group(env / "store", mode="r+")
    mask = g["mask"][:]
    s, t = np.argwhere(~mask)[0]
    a = g["activations"][:]
    a[s, t, 0] = np.inf
    g["activations"][:] = a
    r = run(env)
    assert is_complete(r.path)


def test_corrupt_chunk_named(env):
    with pytest.raises(RuntimeError):
        run(env, _fail_after=1, max_in_flight=1)
    chunk_file = env / "store" / "activations" / "c" / "2" / "0" / "0"
    assert chunk_file.exists()
    chunk_file.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ChunkReadError, match=r"chunk 2 \(samples 16\.\.23\)"):
        run(env, resume=True, max_in_flight=1)
    done = sorted(p for p in os.listdir(env / "out" / "partials") if p.endswith(".done"))
    assert "chunk-0000000.done" in done and "chunk-0000002.done" not in done
    assert not is_complete(env / "out")


def test_corrupt_tokens_chunk_named(env):
    (env / "store" / "tokens" / "c" / "1" / "0").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ChunkReadError, match=r"chunk 1 \(samples 8\.\.15\)"):
        run(env, max_in_flight=1)
    assert not is_complete(env / "out")


def test_output_overlapping_inputs_refused(env):
    for out in (env / "store", env / "store" / "sub", env / "sae"):
        with pytest.raises(ValueError, match="overlaps"):
            run(env, out=out, overwrite=True)
    assert (env / "store" / "zarr.json").exists() and (env / "sae" / "cfg.json").exists()
