"""Scheduled runs: the README cron example sees its inputs change; reduce source rows; CSV/Parquet; threads."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hvrt_dask import ownership
from hvrt_dask.hvrt import read_output
from pipelines.cli import cli


def _table(path, seed):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.standard_normal((80, 3)), columns=["a", "b", "c"])
    if str(path).endswith(".csv"):
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return df


def _assert_rows_of(out, df):
    """The reduce output's rows are the input rows its ``source_row`` index names."""
    got = read_output(str(out))
    np.testing.assert_array_equal(got.to_numpy(), df.to_numpy()[got.index.to_numpy()])


def _config(tmp_path, data):
    cfg = tmp_path / "nightly.yaml"
    cfg.write_text(f"run:\n  performance_report: false\nreduce:\n  data: {data}\n  n: 20\n"
                   "  method: stratified\n  return_indices: true\ncluster:\n  profile: threads\n"
                   "  threads_per_worker: 2\n  dashboard_address: ':0'\n")
    return str(cfg)


def test_cron_example_twice_with_a_changed_input(tmp_path, monkeypatch):
    """`hvrt-dask run CONFIG --set run.dir=runs/nightly` each night: a changed input is recomputed."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "table.csv"
    df1 = _table(data, 1)
    cfg = _config(tmp_path, data)
    night = ["run", cfg, "--set", "run.dir=runs/nightly"]
    res = CliRunner().invoke(cli, night)
    assert res.exit_code == 0, res.output
    out = tmp_path / "runs" / "nightly" / "reduced.zarr"
    assert "[reduce] output: runs/nightly/reduced.zarr" in res.output
    assert "Dask dashboard: http://127.0.0.1:" in res.output  # bound (and linked) where the scheduler is
    _assert_rows_of(out, df1)  # source rows saved with the rows
    assert CliRunner().invoke(cli, night).output.count("already complete") == 1  # same input: nothing to do

    df2 = _table(data, 2)  # the input changes during the day
    res = CliRunner().invoke(cli, night)
    assert res.exit_code == 0 and "already complete" not in res.output, res.output
    _assert_rows_of(out, df2)
    info = json.loads((tmp_path / "runs" / "nightly" / "run.json").read_text())
    assert info["status"] == "success" and len(info["history"]) == 1
    assert list(info["stages"]["reduce"]["inputs"]) == [str(data)]

    # templated run directories (`--set run.dir=runs/$(date +%F)`): each night a fresh, complete output
    for day in ("2026-01-01", "2026-01-02"):
        res = CliRunner().invoke(cli, ["run", cfg, "--set", f"run.dir=runs/{day}"])
        assert res.exit_code == 0, res.output
        assert ownership.is_complete(tmp_path / "runs" / day / "reduced.zarr")


def test_parquet_input(tmp_path):
    data = tmp_path / "table.parquet"
    df = _table(data, 3)
    cfg = _config(tmp_path, data)
    res = CliRunner().invoke(cli, ["reduce", cfg, "--set", f"run.dir={tmp_path / 'run'}"])
    assert res.exit_code == 0, res.output
    _assert_rows_of(tmp_path / "run" / "reduced.zarr", df)
