"""Config validation at its boundaries: bool is not an int (nor an int a bool), zero, negatives,
NaN and infinity — each refused naming the key, each neighbour just inside accepted."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from pipelines.cli import cli
from pipelines.schema import ConfigError, build_section, from_dict

WINE = "sklearn:load_wine"


def section(name, **raw):
    return build_section(name, raw, "cfg.yaml")


@pytest.mark.parametrize("name, raw, key", [
    ("expand", {"data": WINE, "n": True}, "expand.n"),
    ("expand", {"data": WINE, "n": False}, "expand.n"),
    ("expand", {"data": WINE, "n": 2.0}, "expand.n"),
    ("expand", {"data": WINE, "n": "5"}, "expand.n"),
    ("expand", {"data": WINE, "n": 5, "adaptive_bandwidth": 1}, "expand.adaptive_bandwidth"),
    ("expand", {"data": WINE, "n": 5, "clip": 0}, "expand.clip"),
    ("reduce", {"data": WINE, "n": True}, "reduce.n"),
    ("reduce", {"data": WINE, "ratio": True}, "reduce.ratio"),
    ("run", {"seed": True}, "run.seed"),
    ("run", {"seed": 1.0}, "run.seed"),
    ("run", {"performance_report": 1}, "run.performance_report"),
    ("extract", {"top_k": True}, "extract.top_k"),
    ("extract", {"prefix": False}, "extract.prefix"),
    ("cluster", {"n_workers": True}, "cluster.n_workers"),
    ("cluster", {"processes": 1}, "cluster.processes"),
    ("capture", {"source": "kjv", "model_dir": "m", "layer": True}, "capture.layer"),
    ("train_sae", {"d_sae": True}, "train_sae.d_sae"),
    ("html", {"features": True}, "html.features"),
])
def test_wrong_type_named(name, raw, key):
    with pytest.raises(ConfigError, match=rf"cfg\.yaml: {key}: expected .*, got (bool|float|str|int) "):
        section(name, **raw)


def test_bool_inside_a_list_of_ints_named():
    with pytest.raises(ConfigError, match=r"jsonl\.features: expected int or list\[int\] or null, got list \[1, True\]"):
        section("jsonl", path="x.jsonl", features=[1, True])


def test_right_types_accepted():
    assert section("expand", data=WINE, n=1).n == 1
    assert section("reduce", data=WINE, ratio=1).ratio == 1  # an int is a fine float
    assert section("run", seed=0, performance_report=False).seed == 0
    assert section("cluster", n_workers=None).n_workers is None
    assert section("jsonl", path="x", features=[0, 2]).features == [0, 2]
    assert section("html", features=3).features == 3


@pytest.mark.parametrize("n, ok", [(-1, False), (0, False), (1, True)])
def test_expand_n_must_be_positive(n, ok):
    if ok:
        assert section("expand", data=WINE, n=n).n == n
    else:
        with pytest.raises(ConfigError, match=rf"expand\.n must be positive, got {n}"):
            section("expand", data=WINE, n=n)


@pytest.mark.parametrize("raw, ok", [({"n": 3}, True), ({"ratio": 0.5}, True), ({}, False), ({"n": 3, "ratio": 0.5}, False)])
def test_reduce_exactly_one_of_n_and_ratio(raw, ok):
    if ok:
        section("reduce", data=WINE, **raw)
    else:
        with pytest.raises(ConfigError, match="exactly one of reduce.n and reduce.ratio"):
            section("reduce", data=WINE, **raw)


def test_unknown_stage_and_section_shape():
    with pytest.raises(ConfigError, match="run.stages: unknown stage 'expnd'"):
        section("run", stages=["expand", "expnd"])
    with pytest.raises(ConfigError, match="section 'expand' must be a mapping, got list"):
        build_section("expand", [1], "cfg.yaml")
    with pytest.raises(ConfigError, match="unknown key expand.nn"):
        section("expand", data=WINE, n=3, nn=4)
    with pytest.raises(ConfigError, match="missing required value expand.n"):
        section("expand", data=WINE)
    with pytest.raises(ConfigError, match="missing required value cluster.address"):
        section("cluster", profile="address")
    with pytest.raises(ConfigError, match="missing required value cluster.scheduler_file"):
        section("cluster", profile="scheduler-file")
    assert section("cluster", profile="address", address="tcp://127.0.0.1:1").address == "tcp://127.0.0.1:1"


def _validate(tmp_path, raw):
    path = tmp_path / "cfg.yaml"
    text = json.dumps(raw).replace("NaN", ".nan").replace("-Infinity", "-.inf").replace("Infinity", ".inf")
    path.write_text(text)
    return str(path), CliRunner().invoke(cli, ["validate", str(path)])


@pytest.mark.parametrize("stage, raw, key", [
    ("reduce", {"data": WINE, "ratio": 0.0}, "reduce.ratio"),
    ("reduce", {"data": WINE, "ratio": -0.5}, "reduce.ratio"),
    ("reduce", {"data": WINE, "ratio": math.nan}, "reduce.ratio"),
    ("reduce", {"data": WINE, "ratio": math.inf}, "reduce.ratio"),
    ("reduce", {"data": WINE, "n": 0}, "reduce.n"),
    ("reduce", {"data": WINE, "n": -3}, "reduce.n"),
    ("expand", {"data": WINE, "n": 5, "bandwidth": math.nan}, "expand.bandwidth"),
    ("expand", {"data": WINE, "n": 5, "bandwidth": -1.0}, "expand.bandwidth"),
    ("expand", {"data": WINE, "n": 5, "bandwidth": 0.0}, "expand.bandwidth"),
    ("expand", {"data": WINE, "n": 5, "bandwidth": math.inf}, "expand.bandwidth"),
    ("run", {"seed": -1}, "run.seed"),
])
def test_values_refused_before_running(tmp_path, stage, raw, key):
    sections = {stage: raw} if stage != "run" else {"run": raw, "expand": {"data": WINE, "n": 5}}
    path, res = _validate(tmp_path, sections)
    assert res.exit_code == 2, res.output
    assert key in res.output and path in res.output


def test_boundary_neighbours_validate(tmp_path):
    path, res = _validate(tmp_path, {"run": {"seed": 0}, "expand": {"data": WINE, "n": 1, "bandwidth": 0.5},
                                     "reduce": {"data": WINE, "ratio": 1.0}})
    assert res.exit_code == 0, res.output


def test_yaml_bools_and_ints(tmp_path):
    """YAML 1.2: ``yes`` stays a string (so it is no bool), ``0x10`` is no int."""
    p = tmp_path / "c.yaml"
    p.write_text("expand:\n  data: sklearn:load_wine\n  n: 5\n  adaptive_bandwidth: yes\n")
    with pytest.raises(ConfigError, match="expand.adaptive_bandwidth: expected bool, got str 'yes'"):
        from pipelines.schema import load_config

        load_config(str(p))
    cfg = from_dict({"expand": {"data": WINE, "n": 5, "adaptive_bandwidth": True}})
    assert cfg.expand.adaptive_bandwidth is True
