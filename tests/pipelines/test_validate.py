"""`validate` is the engines' validation: every value they would reject exits 2 naming file and key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.schema import load_config

from _faults_helpers import make_sae, make_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return {"store": make_store(root / "acts.zarr", n=8, chunk=4), "sae": make_sae(root / "sae"), "root": root}


def _cfg(tmp_path, raw):
    p = tmp_path / "cfg.yaml"
    p.write_text(json.dumps(raw))
    return str(p)


EXTRACT_BAD = [
    ("top_k", 0), ("prefix", -1), ("split_every", 1), ("max_in_flight", 0), ("batch_size", -3),
    ("chunk_samples", 0), ("histogram_range", [float("nan"), 4]), ("histogram_range", [-4, float("inf")]),
    ("nonfinite", "ignore"),
]


@pytest.mark.parametrize("key, value", EXTRACT_BAD, ids=[f"{k}={v}" for k, v in EXTRACT_BAD])
def test_extract_values_the_engine_rejects(tmp_path, inputs, key, value):
    raw = {"extract": {"store": inputs["store"], "sae": inputs["sae"], key: value}}
    path = _cfg(tmp_path, raw).replace("NaN", ".nan")
    text = open(path).read().replace("NaN", ".nan").replace("Infinity", ".inf")
    open(path, "w").write(text)
    res = CliRunner().invoke(cli, ["validate", path])
    assert res.exit_code == 2, res.output
    assert f"extract.{key}" in res.output and path in res.output


@pytest.mark.parametrize("stage, raw, key", [
    ("expand", {"data": "sklearn:load_wine", "n": 5, "generation_strategy": "warp"}, "expand.generation_strategy"),
    ("expand", {"data": "sklearn:load_wine", "n": 5, "model": {"n_partitons": 4}}, "expand.model"),
    ("expand", {"data": "sklearn:load_wine", "n": 5, "model": {"n_partitions": 0}}, "expand.model"),
    ("reduce", {"data": "sklearn:load_wine", "ratio": 1.5}, "reduce.ratio"),
    ("reduce", {"data": "sklearn:load_wine", "n": 5, "method": "nope"}, "reduce.method"),
    ("expand", {"data": "/no/such.csv", "n": 5}, "expand.data"),
    ("extract", {"store": "STORE", "sae": "/no/sae"}, "extract.sae"),
    ("extract", {"store": "STORE", "sae": "SAE", "_fail_after": 2}, "extract._fail_after"),
    ("capture", {"source": "kjv", "model_dir": "package:os", "layer": 0}, "capture.model_dir"),
    ("capture", {"source": "kjv", "model_dir": "/no/model", "layer": 0}, "capture.model_dir"),
    ("extract", {"store": "STORE", "sae": "SAE", "overwrite": True}, "extract.overwrite"),
])
def test_stage_values_the_engines_reject(tmp_path, inputs, stage, raw, key):
    raw = {k: (inputs["store"] if v == "STORE" else inputs["sae"] if v == "SAE" else v) for k, v in raw.items()}
    path = _cfg(tmp_path, {stage: raw})
    res = CliRunner().invoke(cli, ["validate", path])
    assert res.exit_code == 2, res.output
    assert key in res.output and path in res.output


@pytest.mark.parametrize("cluster, key", [
    ({"n_workers": -4}, "cluster.n_workers"),
    ({"profile": "slurm", "job_name": "x\nrm -rf ~"}, "cluster.job_name"),
    ({"profile": "slurm", "queue": "q\n#SBATCH --x"}, "cluster.queue"),
    ({"profile": "scheduler-file", "scheduler_file": "GARBAGE"}, "cluster.scheduler_file"),
])
def test_cluster_values(tmp_path, cluster, key):
    if cluster.get("scheduler_file") == "GARBAGE":
        (tmp_path / "sched.json").write_text("garbage{")
        cluster = {**cluster, "scheduler_file": str(tmp_path / "sched.json")}
    path = _cfg(tmp_path, {"expand": {"data": "sklearn:load_wine", "n": 5}, "cluster": cluster})
    res = CliRunner().invoke(cli, ["run", path])
    assert res.exit_code == 2, res.output
    assert key in res.output and path in res.output
    assert not (tmp_path / "runs").exists()


def test_set_is_yaml_1_2_and_paths_expand(tmp_path, monkeypatch, inputs):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NIGHT", "n1")
    path = _cfg(tmp_path, {"extract": {"store": inputs["store"], "sae": inputs["sae"]}})
    cfg = load_config(path, ["extract.top_k=010", "extract.out=2024-01-01", "run.dir=~/runs/$NIGHT"])
    assert cfg.extract.top_k == 10
    assert cfg.run.dir == str(tmp_path / "home" / "runs" / "n1")
    assert cfg.extract.out == os.path.join(cfg.run.dir, "2024-01-01")


def test_cli_reads_library_defaults(tmp_path):
    """DASK_HVRT__REDUCE__METHOD reaches the CLI as it reaches HVRT.reduce."""
    path = _cfg(tmp_path, {"reduce": {"data": "sklearn:load_wine", "n": 5}})
    code = f"from pipelines.schema import load_config; print(load_config({path!r}).reduce.method)"
    env = dict(os.environ, DASK_HVRT__REDUCE__METHOD="stratified", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "stratified"


def test_every_pipelines_key_declared_in_package_yaml():
    import re

    import yaml

    import hvrt_dask

    with open(os.path.join(os.path.dirname(hvrt_dask.__file__), "hvrt_dask.yaml")) as f:
        declared = set(yaml.safe_load(f)["hvrt"]["pipelines"])
    used = set()
    for root, _, files in os.walk("pipelines"):
        for fn in files:
            if fn.endswith(".py"):
                used |= set(re.findall(r"hconfig\.get\(\"pipelines\.([a-z-]+)\"", open(os.path.join(root, fn)).read()))
    used |= {"lock-heartbeat", "lock-expiry"}  # read through locks._setting
    assert len(used) >= 6 and used <= declared, used - declared


def test_stages_do_not_import_runs():
    import ast

    for mod in ("pipelines/stages.py", "pipelines/outputs.py", "pipelines/context.py"):
        tree = ast.parse(open(mod).read())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "pipelines.runs" not in names, mod
