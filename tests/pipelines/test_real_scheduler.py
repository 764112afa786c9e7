"""A config run against a real `dask scheduler` + two `dask worker` processes on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.cli_cluster

def test_config_runs_on_real_scheduler(tmp_path, real_cluster):
    from hvrt_dask.hvrt import read_output
    from sklearn.datasets import load_breast_cancer

    from hvrt_dask import HVRT

    address, sched_file = real_cluster
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(textwrap.dedent(f"""
        run:
          dir: {tmp_path / 'run'}
          seed: 3
        expand:
          data: sklearn:load_breast_cancer
          n: 1000
        reduce:
          data: sklearn:load_breast_cancer
          n: 100
    """))
    out = subprocess.run([sys.executable, "-m", "pipelines", "run", str(cfg), "--address", address],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Dask dashboard: http://127.0.0.1:" in out.stdout
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["cluster"]["profile"] == "address" and info["cluster"]["scheduler"] == address
    assert info["cluster"]["n_workers"] == 2
    assert [info["stages"][s]["status"] for s in ("expand", "reduce")] == ["success", "success"]
    X = load_breast_cancer(as_frame=True).data
    est = HVRT(random_state=3).fit(X)
    got_e = read_output(str(tmp_path / "run" / "expanded.zarr")).to_numpy()
    got_r = read_output(str(tmp_path / "run" / "reduced.zarr")).to_numpy()
    np.testing.assert_array_equal(got_e, np.asarray(est.expand(1000), dtype=got_e.dtype))  # clip unset: engine default
    np.testing.assert_array_equal(got_r, np.asarray(est.reduce(n=100), dtype=got_r.dtype))

    # the same config through the scheduler file finds the run finished (the same command, in
    # this process: the subprocess above covered `python -m pipelines`)
    from click.testing import CliRunner

    from pipelines.cli import cli

    again = CliRunner().invoke(cli, ["run", str(cfg), "--scheduler-file", sched_file])
    assert again.exit_code == 0 and "already complete" in again.output
