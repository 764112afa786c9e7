"""Every bad input of the issue: a clear error before anything is written, or (mid-run) a
failure that leaves finished partials intact for resume."""

from __future__ import annotations

import json
import os
import shutil

import dask
import numpy as np
import pytest
import zarr

from _extract_data import make_sae, make_store, rewrite_checksums
from hvrt_dask.ownership import OwnershipError
from hvrt_dask.sae.extract import ChunkReadError, NonFiniteActivationError, NonFiniteStatisticError, extract_features
from hvrt_dask.sae.extract.api import FAIL_AFTER_KEY
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


def fail_after(n):
    return dask.config.set({FAIL_AFTER_KEY: n})


def done_markers(env):
    return sorted(p for p in os.listdir(env / "out" / "partials") if p.endswith(".done"))


def test_d_in_mismatch(env):
    make_sae(env / "sae8", d_in=8, d_sae=16)
    with pytest.raises(SAEError, match="d_in=8.*d_in=12"):
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
    # a directory hvrt_dask did not write is never touched, whatever the flags
    for kw in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(OwnershipError, match="not written by hvrt_dask"):
            run(env, **kw)
        assert (env / "out" / "keep.txt").read_text() == "user data"
        assert sorted(os.listdir(env / "out")) == ["keep.txt"]
    # our own output: refused without a flag, replaced with overwrite=True
    run(env, out=env / "mine")
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        run(env, out=env / "mine")
    r = run(env, out=env / "mine", overwrite=True)
    assert is_complete(r.path)


def test_output_of_another_kind_refused(env):
    from hvrt_dask import ownership

    ownership.claim(env / "other", "hvrt.expand")
    (env / "other" / "data.bin").write_bytes(b"x")
    with pytest.raises(OwnershipError, match="'hvrt.expand'"):
        run(env, out=env / "other", overwrite=True)
    assert (env / "other" / "data.bin").exists()


def test_resume_with_other_config_refused(env):
    with pytest.raises(RuntimeError), fail_after(2):
        run(env)
    with pytest.raises(ValueError, match="'top_k' differs"):
        run(env, resume=True, top_k=4)
    make_sae(env / "sae2", d_in=12, d_sae=16, seed=9)
    with pytest.raises(ValueError, match="the SAE changed"):
        run(env, resume=True, sae=env / "sae2")


def test_resume_refused_for_partials_of_another_layout(env):
    """An interrupted run whose partials were written in an older file layout is refused by
    name, never read as if it were the current one (and its partials stay untouched)."""
    import json

    from hvrt_dask.sae.extract import checkpoint as ckpt

    with pytest.raises(RuntimeError), fail_after(2):
        run(env)
    fn = env / "out" / ckpt.PARTIALS / ckpt.RUN_FILE
    info = json.loads(fn.read_text())
    del info["partials_format"]  # as written before the layout was recorded
    fn.write_text(json.dumps(info))
    before = sorted(os.listdir(env / "out" / ckpt.PARTIALS))
    with pytest.raises(ValueError, match="'partials_format' differs"):
        run(env, resume=True)
    assert sorted(os.listdir(env / "out" / ckpt.PARTIALS)) == before
    assert not is_complete(env / "out")


def test_resume_refused_after_store_rewritten(env):
    """Same path, same shape, different data: the checkpoints are not reused."""
    with pytest.raises(RuntimeError), fail_after(2):
        run(env)
    shutil.rmtree(env / "store")
    make_store(env / "store", n=40, seq=8, d_in=12, chunk=8, seed=5)
    with pytest.raises(ValueError, match="activation store changed"):
        run(env, resume=True)
    assert not is_complete(env / "out")


def test_complete_output_not_reported_after_store_recaptured(env):
    run(env)
    shutil.rmtree(env / "store")
    make_store(env / "store", n=48, seq=8, d_in=12, chunk=8)  # re-captured with more samples
    with pytest.raises(ValueError, match="different .*n_samples"):
        run(env, resume=True)
    r = run(env, overwrite=True)  # our own output: recomputed
    assert open_output(r.path).attrs["n_samples"] == 48


def test_complete_output_resumes_unchanged(env):
    r1 = run(env)
    r2 = run(env, resume=True)
    assert (r2.n_chunks, r2.batch_size, r2.workers) == (r1.n_chunks, r1.batch_size, r1.workers)


def test_nonfinite_names_sample_and_chunk(env):
    g = zarr.open_group(env / "store", mode="r+")
    a = g["activations"][24:32]
    a[3, 2, 5] = np.nan  # sample 27, position 2 (a valid token: lengths >= seq/2)
    g["activations"][24:32] = a
    rewrite_checksums(env / "store")
    with pytest.raises(NonFiniteActivationError, match=r"chunk 3: sample 27, position 2"):
        run(env, max_in_flight=1)
    # mid-run failure: finished chunks are checkpointed, the output is not complete
    assert done_markers(env) == [f"chunk-{i:07d}-block-00000.done" for i in range(3)]
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
    rewrite_checksums(env / "store")
    r = run(env)
    assert is_complete(r.path)


def test_corrupt_chunk_named(env):
    with pytest.raises(RuntimeError), fail_after(1):
        run(env, max_in_flight=1)
    chunk_file = env / "store" / "activations" / "c" / "2" / "0" / "0"
    assert chunk_file.exists()
    chunk_file.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ChunkReadError, match=r"chunk 2 \(samples 16\.\.23\)"):
        run(env, resume=True, max_in_flight=1)
    done = done_markers(env)
    assert "chunk-0000000-block-00000.done" in done and "chunk-0000002-block-00000.done" not in done
    assert not is_complete(env / "out")


def test_corrupt_tokens_chunk_named(env):
    (env / "store" / "tokens" / "c" / "1" / "0").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ChunkReadError, match=r"chunk 1 \(samples 8\.\.15\)"):
        run(env, max_in_flight=1)
    assert not is_complete(env / "out")


def test_output_overlapping_inputs_refused(env):
    os.symlink(env / "store", env / "link")
    for out in (env / "store", env / "store" / "sub", env / "sae", env / "link", env / "link" / "x"):
        with pytest.raises(OwnershipError, match="input"):
            run(env, out=out, overwrite=True)
    os.makedirs(env / "outer")
    os.symlink(env / "sae", env / "outer" / "sae")
    with pytest.raises(OwnershipError, match="input"):  # the output would contain the SAE
        run(env, sae=env / "outer" / "sae", out=env / "outer", overwrite=True)
    assert (env / "store" / "zarr.json").exists() and (env / "sae" / "cfg.json").exists()
    assert sorted(os.listdir(env)) == ["link", "outer", "sae", "store"]


def test_deleted_chunk_file_is_an_error(env):
    os.remove(env / "store" / "activations" / "c" / "3" / "0" / "0")
    with pytest.raises(ChunkReadError, match=r"chunk 3 \(samples 24\.\.31\).*checksum"):
        run(env, max_in_flight=1)
    assert not is_complete(env / "out")


def test_zero_samples(env):
    from hvrt_dask.sae.store import create_store, mark_complete

    create_store(env / "empty", 0, 8, 12, 8, dtype="float32")
    mark_complete(env / "empty")
    with pytest.raises(StoreError, match="0 samples"):
        run(env, store=env / "empty")
    assert_nothing_written(env)


@pytest.mark.parametrize("edit,match", [
    (lambda g: g.attrs.__delitem__("format"), "'format' is None"),
    (lambda g: g.attrs.__setitem__("format", "hvrt_dask.activations/9"), "'format'"),
    (lambda g: g.attrs.__setitem__("complete", "false"), "'complete' is 'false'"),
    (lambda g: g.attrs.__setitem__("complete", 1), "'complete' is 1"),
])
def test_store_attributes_enforced(env, edit, match):
    edit(zarr.open_group(env / "store", mode="r+"))
    with pytest.raises(StoreError, match=match):
        run(env)
    assert_nothing_written(env)


@pytest.mark.parametrize("dtype", ["float32", "int64", "int16"])
def test_token_dtype_enforced(env, dtype):
    g = zarr.open_group(env / "store", mode="r+")
    tokens = g["tokens"][:]
    del g["tokens"]
    g.create_array("tokens", shape=tokens.shape, chunks=(8, 8), dtype=dtype)
    g["tokens"][:] = tokens.astype(dtype)
    with pytest.raises(StoreError, match=f"'tokens' has dtype {dtype}"):
        run(env)
    assert_nothing_written(env)


def test_done_marker_enforced(env):
    g = zarr.open_group(env / "store", mode="r+")
    g["done"][2] = False
    with pytest.raises(StoreError, match="chunk 2 is not marked done"):
        run(env)
    assert_nothing_written(env)


@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_sae_tensor_dtype_enforced(env, dtype):
    from safetensors.numpy import load_file, save_file

    fn = env / "sae" / "sae_weights.safetensors"
    t = load_file(fn)
    t["W_enc"] = t["W_enc"].astype(dtype)
    save_file(t, fn)
    with pytest.raises(SAEError, match="'W_enc' has non-float dtype"):
        run(env)
    assert_nothing_written(env)


def test_overflowing_statistics_named(env):
    """Finite activations near the float32 limit overflow the sums: an error naming the feature."""
    from safetensors.numpy import load_file, save_file

    fn = env / "sae" / "sae_weights.safetensors"
    t = load_file(fn)
    t["W_enc"] = (t["W_enc"] * np.float32(1e38)).astype(np.float32)  # finite weights, latents overflow
    t["b_enc"] = np.zeros_like(t["b_enc"])
    t["b_dec"] = np.zeros_like(t["b_dec"])
    save_file(t, fn)
    with pytest.raises(NonFiniteStatisticError, match=r"feature \d+: statistic"):
        run(env)
    assert not is_complete(env / "out")


def test_checkpoint_removal_refuses_what_is_not_ours(tmp_path):
    """The checkpoint clean-up deletes nothing in a folder without our marker, nor through a
    ``partials`` symlink that leads out of our output."""
    from hvrt_dask import ownership
    from hvrt_dask.sae.extract import checkpoint as ckpt
    from hvrt_dask.sae.extract.api import KIND

    user = tmp_path / "user"
    (user / ckpt.PARTIALS).mkdir(parents=True)
    (user / ckpt.PARTIALS / "chunk-0000000-block-00000.npz").write_bytes(b"user data")
    with pytest.raises(OwnershipError):
        ckpt.remove_partials(str(user), KIND)
    mine = tmp_path / "mine"
    ownership.claim(mine, KIND)
    os.symlink(user / ckpt.PARTIALS, mine / ckpt.PARTIALS)
    with pytest.raises(OwnershipError):
        ckpt.remove_partials(str(mine), KIND)
    assert (user / ckpt.PARTIALS / "chunk-0000000-block-00000.npz").read_bytes() == b"user data"
