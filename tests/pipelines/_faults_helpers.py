"""Test devices for the fault tests: slowed workers, a worker killer, tiny stores and SAEs."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from hvrt_dask._seeding import generator
from hvrt_dask.sae.store import create_store, mark_complete
from hvrt_dask.sae.weights import save_sae


class SlowTasks(WorkerPlugin):
    """Stretch every task a little so that a run lasts long enough to be interrupted."""

    name = "slow-tasks"

    def __init__(self, delay: float = 0.03):
        self.delay = delay

    def transition(self, key, start, finish, **kwargs):
        if finish == "memory":
            time.sleep(self.delay)


async def dask_setup(worker):  # used as a worker preload by the process-kill test
    await worker.plugin_add(SlowTasks(float(os.environ.get("HVRT_TEST_TASK_DELAY", "0.03"))))


class KillWorkerAfter(SchedulerPlugin):
    """SIGKILL one worker process once ``after`` tasks have finished cluster-wide."""

    name = "kill-worker-after"

    def __init__(self, pid: int, after: int):
        self.pid, self.after, self.done, self.killed_at = pid, after, 0, None

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory":
            self.done += 1
            if self.killed_at is None and self.done >= self.after:
                self.killed_at = time.time()
                os.kill(self.pid, signal.SIGKILL)


def make_store(path, n=96, seq=12, d_in=16, chunk=4, seed=0):
    g = create_store(path, n, seq, d_in, chunk, dtype="float32",
                     attrs={"model": "synthetic", "layer": 0, "hook": "resid_post", "tokenizer": None})
    rng = generator(seed, "test-store")
    g["activations"][:] = rng.standard_normal((n, seq, d_in)).astype("float32")
    g["tokens"][:] = rng.integers(0, 50, (n, seq)).astype("int32")
    mask = np.ones((n, seq), bool)
    mask[::3, -2:] = False  # some padding
    g["mask"][:] = mask
    g["done"][:] = True
    mark_complete(path)
    return str(path)


def make_sae(path, d_in=16, d_sae=24, seed=1):
    rng = generator(seed, "test-sae")
    tensors = {
        "W_enc": rng.standard_normal((d_in, d_sae)).astype("float32") / np.sqrt(d_in),
        "b_enc": (rng.standard_normal(d_sae) * 0.1).astype("float32"),
        "W_dec": rng.standard_normal((d_sae, d_in)).astype("float32"),
        "b_dec": np.zeros(d_in, "float32"),
    }
    save_sae(path, tensors, {"d_in": d_in, "d_sae": d_sae})
    return str(path)


def read_arrays(path) -> dict[str, np.ndarray]:
    """Every array of a Zarr group (recursively), or the array itself."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return {"": node[:]}
    out = {}
    for name, arr in node.arrays():
        out[name] = arr[:]
    for name, grp in node.groups():
        for k, v in read_arrays(os.path.join(str(path), name)).items():
            out[f"{name}/{k}"] = v
    return out


def assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        if k == "range_window_acts":
            # window activations are re-encoded by a restricted matmul whose float32 rounding
            # depends on torch's thread count (docs/extraction.md, exactness details): the
            # pipeline's workers and this process differ; examples and tokens are exact
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=0, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
