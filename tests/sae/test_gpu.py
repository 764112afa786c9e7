"""GPU extraction (skipped cleanly without CUDA): identical to CPU, OOM back-off on device."""

from __future__ import annotations

import numpy as np
import pytest

from _extract_data import make_sae, make_store

pytestmark = pytest.mark.requires_gpu

VARS = ("topk_value", "topk_sample", "topk_position", "window_tokens", "window_acts", "max_activation",
        "n_active_tokens", "n_active_samples", "act_sum", "act_sumsq", "hist")


@pytest.mark.parametrize("arch", ["standard", "jumprelu"])
def test_cuda_matches_cpu(tmp_path, arch):
    import torch

    from hvrt_dask.sae.extract import extract_features
    from hvrt_dask.sae.output import open_output

    assert torch.cuda.is_available()
    make_store(tmp_path / "s", n=64, seq=16, d_in=12, chunk=16, dtype="float16")
    make_sae(tmp_path / "sae", d_in=12, d_sae=48, arch=arch)
    kw = {"top_k": 5, "prefix": 3, "suffix": 3, "progress": False}
    cpu = extract_features(tmp_path / "s", tmp_path / "sae", tmp_path / "cpu", device="cpu", **kw)
    gpu = extract_features(tmp_path / "s", tmp_path / "sae", tmp_path / "gpu", device="cuda", **kw)
    a, b = open_output(cpu.path).load(), open_output(gpu.path).load()
    for v in VARS:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


def test_auto_batch_size_from_device_memory():
    import torch

    from hvrt_dask.sae.encode import auto_batch_size

    n = auto_batch_size(128, 768, 16384, torch.device("cuda"))
    free, _ = torch.cuda.mem_get_info()
    assert 1 <= n and n * 128 * 16384 * 4 < free


def test_gpu_worker_routing_on_real_gpu(tmp_path):
    from distributed import Client, LocalCluster

    from hvrt_dask.sae.extract import extract_features

    make_store(tmp_path / "s", n=32, seq=8, d_in=12, chunk=8)
    make_sae(tmp_path / "sae", d_in=12, d_sae=16)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0",
                      resources={"GPU": 1}) as lc, Client(lc) as c:
        r = extract_features(tmp_path / "s", tmp_path / "sae", tmp_path / "o", top_k=3, client=c, progress=False)
        devices = c.run(lambda: __import__("torch").cuda.is_available())
    assert all(devices.values()) and len(r.workers) == 1


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("feature_block", [7, 48])
def test_cuda_feature_blocks_match_cpu(tmp_path, arch, feature_block):
    """The feature-blocked path on the device (7 does not divide d_sae = 48) equals the CPU run."""
    from hvrt_dask.sae.extract import extract_features
    from hvrt_dask.sae.output import open_output

    make_store(tmp_path / "s", n=64, seq=16, d_in=12, chunk=16, dtype="float16")
    make_sae(tmp_path / "sae", d_in=12, d_sae=48, arch=arch, k=5)
    kw = {"top_k": 5, "prefix": 3, "suffix": 3, "progress": False}
    cpu = extract_features(tmp_path / "s", tmp_path / "sae", tmp_path / "cpu", device="cpu", feature_block=48, **kw)
    gpu = extract_features(tmp_path / "s", tmp_path / "sae", tmp_path / "gpu", device="cuda",
                           feature_block=feature_block, **kw)
    a, b = open_output(cpu.path).load(), open_output(gpu.path).load()
    for v in VARS:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)


@pytest.mark.parametrize("k", [1, 4, 20])
def test_topk_tie_rule_on_device(k):
    """Ties at the k-th place go to the lower feature index on the device as on the CPU."""
    import torch

    from hvrt_dask.sae import architectures

    rng = np.random.default_rng(0)
    vals = np.array([-2.0, -0.5, 0.0, 0.25, 0.5, 1.5], np.float32)
    pre = vals[rng.integers(0, len(vals), size=(300, 64))]
    idx = np.argsort(-pre, axis=-1, kind="stable")[..., :k]
    ref = np.zeros_like(pre)
    np.put_along_axis(ref, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    arch = architectures.get("topk")
    got = arch.activate(torch.from_numpy(pre.copy()).cuda(), architectures.Whole(64, k)).cpu().numpy()
    np.testing.assert_array_equal(got, ref)
    # merged across blocks of 9 on the device
    running = torch.empty((300, 0), dtype=torch.int64, device="cuda")
    for lo in range(0, 64, 9):
        enc = architectures.Whole(64, k)
        enc.offset = lo
        running = architectures.kth_keys(arch.keys(torch.from_numpy(pre[:, lo:lo + 9].copy()).cuda(), enc), k, running)
    kth = running.amin(dim=-1)
    out = np.concatenate([
        arch.activate(torch.from_numpy(pre[:, lo:lo + 9].copy()).cuda(),
                      _block(lo, min(9, 64 - lo), k), token_key=kth).cpu().numpy()
        for lo in range(0, 64, 9)], axis=1)
    np.testing.assert_array_equal(out, ref)


def _block(lo, width, k):
    from hvrt_dask.sae import architectures

    enc = architectures.Whole(64, k)
    enc.offset, enc.width = lo, width
    return enc
