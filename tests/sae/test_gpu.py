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
