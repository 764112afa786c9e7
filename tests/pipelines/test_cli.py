"""The hvrt-dask command: subcommands, --set overrides, exit codes, an end-to-end stage."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipelines.cli import cli


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_help_lists_every_subcommand():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for cmd in ("expand", "reduce", "capture", "train-sae", "extract", "run", "validate", "show-config", "demo", "config"):
        assert cmd in res.output
    res = CliRunner().invoke(cli, ["config", "--help"])
    assert "init" in res.output


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "pipelines", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train-sae" in out.stdout


def test_validate_and_show_config(tmp_path):
    from _faults_helpers import make_sae, make_store

    store, sae = make_store(tmp_path / "s.zarr", n=8, chunk=4), make_sae(tmp_path / "sae_dir")
    path = write(tmp_path, f"""
        extract:
          store: {store}
          sae: {sae}
    """)
    res = CliRunner().invoke(cli, ["validate", path])
    assert res.exit_code == 0 and "OK" in res.output
    res = CliRunner().invoke(cli, ["show-config", path, "--set", "extract.top_k=50", "--address", "tcp://127.0.0.1:9999"])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown["extract"]["top_k"] == 50
    assert shown["extract"]["prefix"] == 25  # package default filled in
    assert shown["cluster"]["profile"] == "address" and shown["cluster"]["address"] == "tcp://127.0.0.1:9999"
    assert shown["run"]["seed"] == 42


@pytest.mark.parametrize("args, needle", [
    (["--set", "extract.top_k=lots"], "extract.top_k: expected int"),
    (["--set", "extract.nope=1"], "unknown key extract.nope"),
    (["--cluster", "no-such-profile"], "cluster profile 'no-such-profile'"),
])
def test_bad_values_exit_2(tmp_path, args, needle):
    path = write(tmp_path, "extract:\n  store: s\n  sae: w\n")
    res = CliRunner().invoke(cli, ["validate", path, *args])
    assert res.exit_code == 2
    assert needle in res.output


def test_missing_section_exit_2(tmp_path):
    path = write(tmp_path, "expand:\n  data: sklearn:load_wine\n  n: 10\n")
    res = CliRunner().invoke(cli, ["reduce", path])
    assert res.exit_code == 2 and "no 'reduce' section" in res.output


def test_config_init(tmp_path):
    target = tmp_path / "dask" / "hvrt.yaml"
    res = CliRunner().invoke(cli, ["config", "init", "--path", str(target)])
    assert res.exit_code == 0
    data = yaml.safe_load(target.read_text())
    assert data["hvrt"]["extract"]["top-k"] == 100
    res = CliRunner().invoke(cli, ["config", "init", "--path", str(target)])
    assert res.exit_code == 1 and "exists" in res.output
    assert CliRunner().invoke(cli, ["config", "init", "--path", str(target), "--force"]).exit_code == 0  # ours
    mine = tmp_path / "mine.yaml"
    mine.write_text("hvrt: {extract: {top-k: 7}}\n")  # a user's own file: --force does not replace it
    res = CliRunner().invoke(cli, ["config", "init", "--path", str(mine), "--force"])
    assert res.exit_code == 1 and "not written by hvrt_dask" in res.output
    assert mine.read_text() == "hvrt: {extract: {top-k: 7}}\n"


def test_expand_end_to_end_matches_library(tmp_path):
    """`hvrt-dask expand` on its own LocalCluster writes what the library call returns."""
    from hvrt_dask.hvrt import read_output
    from sklearn.datasets import load_wine

    from hvrt_dask import HVRT

    path = write(tmp_path, f"""
        run:
          dir: {tmp_path / 'run'}
          seed: 5
        expand:
          data: sklearn:load_wine
          n: 400
        cluster:
          profile: local
          n_workers: 1
          dashboard_address: ":0"
    """)
    out = subprocess.run([sys.executable, "-m", "pipelines", "expand", path], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Dask dashboard: http://127.0.0.1:" in out.stdout
    got = read_output(str(tmp_path / "run" / "expanded.zarr")).to_numpy()
    X = load_wine(as_frame=True).data
    ref = HVRT(random_state=5).fit(X).expand(400)  # clip unset in the config: the engine default
    np.testing.assert_array_equal(got, np.asarray(ref, dtype=got.dtype))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "success" and info["stages"]["expand"]["result"]["out"].endswith("expanded.zarr")
    assert f"[expand] output: {tmp_path / 'run' / 'expanded.zarr'}" in out.stdout  # the CLI says where
    # re-running the same config is a no-op (exit 0): the same command, in this process (the
    # subprocess above covered `python -m pipelines`; a second one would only repeat its imports)
    again = CliRunner().invoke(cli, ["expand", path])
    assert again.exit_code == 0 and "already complete" in again.output
