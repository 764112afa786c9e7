"""Exactness of extraction against a sequential Python-heap reference (the plan's original loop).

Data are small dyadic rationals (see ``_extract_data``): latents are bit-identical under
any summation order and ties (equal maxima across samples, repeated maxima within a sample)
are common, so the total order (value desc, sample asc, position asc) is exercised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import numpy as np
import pytest

from _extract_data import dense_latents, make_sae, make_store, sequential_reference
from hvrt_dask.sae.extract import extract_features
from hvrt_dask.sae.extract import first_pass, windows
from hvrt_dask.sae.extract.api import FAIL_AFTER_KEY
from hvrt_dask.sae.output import is_complete, open_output
from hvrt_dask.sae.stats import histogram_edges

K, PRE, SUF = 6, 3, 2
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
VARS = ("topk_value", "topk_sample", "topk_position", "window_tokens", "window_acts", "max_activation",
        "n_active_tokens", "n_active_samples", "act_sum", "act_sumsq", "hist", "dead", "mean", "std", "density", "frequency")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    acts, tokens, mask = make_store(root / "store", n=96, seq=16, d_in=12, chunk=16)
    tensors, cfg = make_sae(root / "sae", d_in=12, d_sae=40)
    z = dense_latents(acts, tensors, cfg).astype(np.float32)
    z[~mask] = 0
    ref = sequential_reference(z, mask, K)
    # the data really has ties (otherwise the total order is not tested)
    smax = z.max(axis=1)
    n_ties = sum(len(np.unique(c[c > 0])) < (c > 0).sum() for c in smax.T)
    assert n_ties > 10
    return {"root": root, "store": str(root / "store"), "sae": str(root / "sae"), "acts": acts, "tokens": tokens,
            "mask": mask, "z": z, "ref": ref}


def check_against_reference(ds, data, exact_sums=True):
    z, mask, tokens, ref = data["z"], data["mask"], data["tokens"], data["ref"]
    n, seq, d_sae = z.shape
    vals, smp, pos = ds.topk_value.values, ds.topk_sample.values, ds.topk_position.values
    for f in range(d_sae):
        got = [(float(v), int(s), int(p)) for v, s, p in zip(vals[f], smp[f], pos[f]) if s >= 0]
        assert got == ref[f], f"feature {f}"
        assert np.isnan(vals[f][smp[f] < 0]).all()
    # statistics against numpy on the dense matrix of valid tokens
    zv = z[mask]  # [n_valid, d_sae]
    np.testing.assert_array_equal(ds.max_activation.values, zv.max(axis=0))
    np.testing.assert_array_equal(ds.n_active_tokens.values, (zv > 0).sum(axis=0))
    np.testing.assert_array_equal(ds.n_active_samples.values, (z.max(axis=1) > 0).sum(axis=0))
    same = np.testing.assert_array_equal if exact_sums else np.testing.assert_allclose  # allclose: rtol 1e-7
    same(ds.act_sum.values, zv.astype(np.float64).sum(axis=0))
    same(ds.act_sumsq.values, (zv.astype(np.float64) ** 2).sum(axis=0))
    np.testing.assert_allclose(ds.density.values, (zv > 0).sum(axis=0) / mask.sum())
    np.testing.assert_array_equal(ds.dead.values, (zv > 0).sum(axis=0) == 0)
    edges = histogram_edges(ds.sizes["bin"])
    hist = np.zeros((d_sae, ds.sizes["bin"]), np.int64)
    for f in range(d_sae):
        v = zv[:, f][zv[:, f] > 0]
        np.add.at(hist[f], np.searchsorted(edges, v, side="left"), 1)
    np.testing.assert_array_equal(ds.hist.values, hist)
    assert ds.attrs["n_valid_tokens"] == int(mask.sum())
    # context windows: token ids (pad marker -1 outside) and per-token activations
    wt, wa = ds.window_tokens.values, ds.window_acts.values
    offs = ds.window_offset.values
    for f in range(d_sae):
        for r in range(ds.sizes["rank"]):
            s = int(smp[f, r])
            if s < 0:
                assert (wt[f, r] == -1).all() and np.isnan(wa[f, r]).all()
                continue
            t = int(pos[f, r]) + offs
            inside = (t >= 0) & (t < seq)
            np.testing.assert_array_equal(wt[f, r], np.where(inside, tokens[s, np.clip(t, 0, seq - 1)], -1))
            exp = np.where(inside & mask[s, np.clip(t, 0, seq - 1)], z[s, np.clip(t, 0, seq - 1), f], np.nan)
            np.testing.assert_array_equal(wa[f, r], exp)
            assert wa[f, r][offs == 0][0] == vals[f, r]


def assert_same(a, b):
    for v in VARS:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


@pytest.fixture(scope="module")
def baseline(data):
    out = data["root"] / "baseline"
    extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, progress=False, client=None)
    ds = open_output(out).load()
    check_against_reference(ds, data)
    return ds


def test_reference_matches(baseline):
    assert baseline.attrs["complete"]


@pytest.mark.parametrize("chunk_samples,split_every", [(7, 2), (16, 3), (33, 8), (96, 2), (1, 4)])
def test_chunkings_and_fanins_identical(data, baseline, tmp_path, chunk_samples, split_every):
    r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF,
                         chunk_samples=chunk_samples, split_every=split_every, batch_size=5, progress=False)
    assert r.n_chunks == -(-96 // chunk_samples)
    assert_same(open_output(r.path).load(), baseline)


def test_float16_store_identical(data, baseline, tmp_path):
    # dyadic values with few bits are exact in float16 too
    make_store(tmp_path / "s16", n=96, seq=16, d_in=12, chunk=16, dtype="float16")
    r = extract_features(tmp_path / "s16", data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF, progress=False)
    ds = open_output(r.path).load()
    assert_same(ds, baseline)
    assert ds.attrs["store"]["dtype"] == "float16"


def test_two_workers_distributed(data, baseline, tmp_path, client):
    r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF,
                         chunk_samples=8, split_every=3, max_in_flight=3, client=client, progress=False)
    assert len(r.workers) == 2  # both workers took chunks
    assert set(r.workers) <= set(client.scheduler_info()["workers"])
    assert_same(open_output(r.path).load(), baseline)


def test_one_worker_distributed(data, baseline, tmp_path, one_worker_cluster):
    from distributed import Client

    with Client(one_worker_cluster) as c:
        r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF,
                             chunk_samples=12, split_every=2, client=c, progress=False)
    assert len(r.workers) == 1
    assert_same(open_output(r.path).load(), baseline)


def test_gpu_resource_routing(data, baseline, tmp_path):
    """With one worker advertising GPU=1 and one without, every extraction task runs on the GPU one."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0") as lc:
        spec = dict(lc.worker_spec[0])
        spec["options"] = {**spec["options"], "resources": {"GPU": 1}}
        lc.worker_spec["gpu"] = spec
        lc.sync(lc._correct_state)
        with Client(lc) as c:
            c.wait_for_workers(2)
            info = c.scheduler_info()["workers"]
            gpu = [a for a, w in info.items() if (w.get("resources") or {}).get("GPU")]
            assert len(gpu) == 1
            r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF,
                                 chunk_samples=8, max_in_flight=4, client=c, progress=False)
    assert r.workers == gpu  # recorded by every chunk partial
    assert_same(open_output(r.path).load(), baseline)


def test_resume_after_injected_failure(data, baseline, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="injected failure"), dask.config.set({FAIL_AFTER_KEY: 4}):
        extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, chunk_samples=8,
                         progress=False)
    assert not is_complete(out)
    with pytest.raises(ValueError, match="incomplete"):
        open_output(out)
    done = sorted(p for p in os.listdir(out / "partials") if p.endswith(".done"))
    assert done == [f"chunk-{i:07d}-block-00000.done" for i in range(4)]
    with pytest.raises(FileExistsError):
        extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, chunk_samples=8, progress=False)
    r = extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, chunk_samples=8,
                         progress=False, resume=True)
    assert r.n_resumed == 4
    assert_same(open_output(out).load(), baseline)
    # resuming a complete output returns it unchanged
    r2 = extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, chunk_samples=8,
                          progress=False, resume=True)
    assert r2.n_chunks == 12


def test_resume_after_killed_process(data, baseline, tmp_path):
    """A subprocess extracting chunk by chunk is SIGKILLed mid-run; the resumed output is identical."""
    out = tmp_path / "o"
    ready = tmp_path / "ready"
    # after 5 chunks the subprocess parks every further chunk task (it is killed there): the kill
    # lands mid-run whatever the machine's speed; no sleep decides the outcome
    script = textwrap.dedent(
        f"""
        import itertools, os, threading, time
        import hvrt_dask.sae.extract.first_pass as fp
        orig = fp.extract_block
        calls = itertools.count(1)
        lock = threading.Lock()
        def parked(*args):
            with lock:
                n = next(calls)
            if n > 5:
                open({str(ready)!r}, "w").close()
                time.sleep(3600)
            return orig(*args)
        fp.extract_block = parked
        from hvrt_dask.sae.extract import extract_features
        extract_features({data['store']!r}, {data['sae']!r}, {str(out)!r}, top_k={K}, prefix={PRE},
                            suffix={SUF}, chunk_samples=4, progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": ROOT})
    try:
        deadline = time.time() + 300  # generous: only a hung subprocess reaches it
        while time.time() < deadline and proc.poll() is None:
            pdir = out / "partials"
            if ready.exists() and pdir.exists() and len([p for p in os.listdir(pdir) if p.endswith(".done")]) >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the extraction ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    n_done = len([p for p in os.listdir(out / "partials") if p.endswith(".done")])
    assert 5 <= n_done < 24
    assert not is_complete(out)
    r = extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, chunk_samples=4,
                         progress=False, resume=True)
    assert r.n_resumed == n_done
    assert_same(open_output(out).load(), baseline)


def test_split_window_tasks_identical(data, baseline, tmp_path, monkeypatch):
    monkeypatch.setattr(windows, "WINDOW_TASK_EXAMPLES", 7)
    r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF, progress=False)
    assert_same(open_output(r.path).load(), baseline)


@pytest.mark.parametrize("variant", ["small_tiles", "whole_samples", "full_encode", "one_per_step"])
def test_window_pass_plans_identical(data, baseline, tmp_path, monkeypatch, variant):
    """Every pseudo-sample layout of the window pass gives the same windows."""
    from hvrt_dask.sae.encode import TorchEncoder

    ex = windows
    if variant == "small_tiles":  # tiles of 2 positions: many overlapping row ranges
        monkeypatch.setattr(ex, "WINDOW_TILES", (2,))
        monkeypatch.setattr(ex, "WINDOW_ROW_OVERHEAD", 0)
    elif variant == "whole_samples":
        monkeypatch.setattr(ex, "WINDOW_TILES", ())
    elif variant == "full_encode":  # every pseudo-sample fully encoded, then indexed
        monkeypatch.setattr(TorchEncoder, "full_encode_cheaper", lambda self, m: True)
    else:  # one pseudo-sample per device step
        monkeypatch.setattr(ex, "WINDOW_BUDGET", 1)
    r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF, progress=False)
    assert_same(open_output(r.path).load(), baseline)


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
@pytest.mark.parametrize("tiles", [None, (2,)])
def test_window_pass_other_architectures(data, tmp_path, monkeypatch, arch, tiles):
    """Windows of jumprelu (thresholds of a feature subset) and topk (token thresholds) SAEs."""
    ex = windows
    if tiles is not None:
        monkeypatch.setattr(ex, "WINDOW_TILES", tiles)
        monkeypatch.setattr(ex, "WINDOW_ROW_OVERHEAD", 0)
    tensors, cfg = make_sae(tmp_path / "sae", d_in=12, d_sae=40, arch=arch, k=4)
    # float64 numpy encode from the documented formulas (dyadic data: exact), not the torch encoder
    z = dense_latents(data["acts"], tensors, cfg).astype(np.float32)
    z[~data["mask"]] = 0
    r = extract_features(data["store"], tmp_path / "sae", tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF, progress=False)
    check_against_reference(open_output(r.path).load(), {**data, "z": z, "ref": sequential_reference(z, data["mask"], K)})


@pytest.mark.parametrize("feature_block", [1, 7, 16, 40, 1000])
def test_feature_blocks_identical(data, baseline, tmp_path, feature_block):
    """Every feature block size (7 and 16 do not divide d_sae = 40) gives the same output."""
    r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF,
                         chunk_samples=16, split_every=2, feature_block=feature_block, progress=False)
    assert_same(open_output(r.path).load(), baseline)


def test_feature_blocks_two_workers(data, baseline, tmp_path, client):
    r = extract_features(data["store"], data["sae"], tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF,
                         chunk_samples=12, split_every=3, feature_block=6, max_in_flight=3, client=client,
                         progress=False)
    assert_same(open_output(r.path).load(), baseline)


def rescaled_topk(acts, tensors, cfg):
    """numpy topk with ``rescale_acts_by_decoder_norm``: the pre-activations are exact in float32
    (dyadic data); each is multiplied once, in float32, by its decoder row norm (float64 norm
    rounded to float32, as documented); keep the k largest, ties to the lower index; ReLU."""
    x = acts.astype(np.float64) - tensors["b_dec"]
    pre = (x @ tensors["W_enc"].astype(np.float64) + tensors["b_enc"]).astype(np.float32)
    norms = np.sqrt((tensors["W_dec"].astype(np.float64) ** 2).sum(1)).astype(np.float32)
    r = pre * norms  # float32 * float32: one rounding, as on any device
    idx = np.argsort(-r, axis=-1, kind="stable")[..., : cfg["k"]]
    z = np.zeros_like(r)
    np.put_along_axis(z, idx, np.maximum(np.take_along_axis(r, idx, -1), 0), -1)
    return z


@pytest.mark.parametrize("arch,rescale", [("topk", False), ("topk", True), ("jumprelu", False)])
@pytest.mark.parametrize("feature_block", [7, 40])
def test_other_architectures_across_blocks(data, tmp_path, arch, rescale, feature_block):
    """topk thresholds merged across blocks (and jumprelu block thresholds) against the dense reference."""
    tensors, cfg = make_sae(tmp_path / "sae", d_in=12, d_sae=40, arch=arch, k=4, rescale=rescale)
    if rescale:  # decoder norms are not dyadic: exact pre (float32) times float32 norms, one rounding
        z = rescaled_topk(data["acts"], tensors, cfg)
    else:  # float64 dense encode; topk ties at the k-th place go to the lower feature index
        z = dense_latents(data["acts"], tensors, cfg).astype(np.float32)
    z[~data["mask"]] = 0
    r = extract_features(data["store"], tmp_path / "sae", tmp_path / "o", top_k=K, prefix=PRE, suffix=SUF,
                         feature_block=feature_block, chunk_samples=16, progress=False)
    ds = open_output(r.path).load()
    check_against_reference(ds, {**data, "z": z, "ref": sequential_reference(z, data["mask"], K)}, exact_sums=not rescale)
    if feature_block != 40:  # bit-identical to the one-block run
        one = extract_features(data["store"], tmp_path / "sae", tmp_path / "one", top_k=K, prefix=PRE, suffix=SUF,
                               feature_block=40, chunk_samples=16, progress=False)
        assert_same(ds, open_output(one.path).load())


def test_resume_after_injected_failure_with_blocks(data, baseline, tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError, match="injected failure"), dask.config.set({FAIL_AFTER_KEY: 3}):
        extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, chunk_samples=8,
                         feature_block=16, progress=False, max_in_flight=1)
    assert len([p for p in os.listdir(out / "partials") if p.endswith(".done")]) == 3 * 3
    r = extract_features(data["store"], data["sae"], out, top_k=K, prefix=PRE, suffix=SUF, chunk_samples=8,
                         feature_block=16, progress=False, resume=True)
    assert r.n_resumed == 3
    assert_same(open_output(out).load(), baseline)
    assert not (out / "partials").exists()  # checkpoints are removed once the output is complete
