"""Config validation: unknown keys, wrong types and missing values name the key and the file."""

from __future__ import annotations

import textwrap

import pytest

from pipelines.schema import ConfigError, apply_overrides, dump, load_config, parse_override


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_valid_config_resolves_defaults(tmp_path):
    path = write(tmp_path, """
        expand:
          data: sklearn:load_wine
          n: 100
    """)
    cfg = load_config(path)
    assert cfg.stages == ["expand"]
    assert cfg.expand.n == 100 and cfg.expand.variance_weighted is False
    assert cfg.cluster.profile == "local"
    assert cfg.run.seed == 42
    assert cfg.run.dir.endswith("cfg")  # default run dir from the file stem


@pytest.mark.parametrize(
    "text, needle",
    [
        ("expand:\n  data: a\n  n: 10\n  bogus: 1\n", "unknown key expand.bogus"),
        ("expand:\n  data: a\n  n: ten\n", "expand.n: expected int, got str 'ten'"),
        ("expand:\n  data: a\n", "missing required value expand.n"),
        ("extract:\n  store: s\n  top_k: 5\n", "missing required value extract.sae"),
        ("extract:\n  store: s\n  sae: x\n  top_k: 2.5\n", "extract.top_k: expected int"),
        ("nonsense:\n  a: 1\n", "unknown section 'nonsense'"),
        ("reduce:\n  data: a\n", "exactly one of reduce.n and reduce.ratio"),
        ("run:\n  stages: [expand]\n", "no 'expand' section"),
        ("run:\n  stages: [explode]\n", "unknown stage 'explode'"),
        ("cluster:\n  profile: moon\n", "cluster.profile: expected one of"),
        ("cluster:\n  profile: address\n", "missing required value cluster.address"),
        ("expand:\n  data: a\n  n: 10\n  clip: 'yes'\n", "expand.clip: expected bool"),
        ("- a\n- b\n", "must be a mapping"),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert needle in msg
    assert path in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = write(tmp_path, "expand: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_typed_and_validated(tmp_path):
    path = write(tmp_path, """
        extract:
          store: s
          sae: w
    """)
    cfg = load_config(path, ["extract.top_k=50", "run.seed=7", "cluster.n_workers=3", "extract.batch_size=256"])
    assert cfg.extract.top_k == 50 and isinstance(cfg.extract.top_k, int)
    assert cfg.run.seed == 7 and cfg.cluster.n_workers == 3 and cfg.extract.batch_size == 256
    with pytest.raises(ConfigError, match="unknown key extract.topk"):
        load_config(path, ["extract.topk=5"])
    with pytest.raises(ConfigError, match="extract.top_k: expected int"):
        load_config(path, ["extract.top_k=many"])
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        parse_override("extract.top_k")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


def test_extract_defaults_follow_dask_config(tmp_path, monkeypatch):
    import dask

    path = write(tmp_path, "extract:\n  store: s\n  sae: w\n")
    with dask.config.set({"hvrt.extract.top-k": 17}):
        assert load_config(path).extract.top_k == 17
    assert load_config(path).extract.top_k == dask.config.get("hvrt.extract.top-k")


def test_env_var_overrides_package_default(tmp_path):
    """DASK_HVRT__... environment variables override package defaults (fresh interpreter)."""
    import os
    import subprocess
    import sys

    path = write(tmp_path, "extract:\n  store: s\n  sae: w\n")
    code = f"from pipelines.schema import load_config; print(load_config({path!r}).extract.top_k)"
    env = dict(os.environ, DASK_HVRT__EXTRACT__TOP_K="33")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "33"


def test_engine_parameters_accepted_via_signature(tmp_path):
    """capture accepts any keyword of capture_activations; others are unknown keys."""
    pytest.importorskip("hvrt_dask.sae.capture")
    path = write(tmp_path, """
        capture:
          source: kjv
          model_dir: m
          layer: 1
          chunk_samples: 8
    """)
    cfg = load_config(path)
    assert cfg.capture.extra == {"chunk_samples": 8}
    assert "chunk_samples: 8" in dump(cfg)
    bad = write(tmp_path, "capture:\n  source: kjv\n  model_dir: m\n  layer: 1\n  warp_speed: 9\n", "bad.yaml")
    with pytest.raises(ConfigError, match="unknown key capture.warp_speed"):
        load_config(bad)
    runner = write(tmp_path, "capture:\n  source: kjv\n  model_dir: m\n  layer: 1\n  client: x\n", "r.yaml")
    with pytest.raises(ConfigError, match="set by the runner"):
        load_config(runner)


def test_cluster_profile_files(tmp_path):
    path = write(tmp_path, "expand:\n  data: a\n  n: 5\n")
    for name in ("local", "address", "slurm", "gpu"):
        cfg = load_config(path, cluster=name)
        assert cfg.cluster.profile == name
    cfg = load_config(path, ["cluster.address=tcp://10.0.0.1:8786"], cluster="address")
    assert cfg.cluster.address == "tcp://10.0.0.1:8786"
    with pytest.raises(ConfigError, match="cluster profile 'nowhere'"):
        load_config(path, cluster="nowhere")


def test_shipped_configs_validate():
    import glob

    files = sorted(glob.glob("configs/*.yaml"))
    assert {"configs/expand.yaml", "configs/reduce.yaml", "configs/extract.yaml"} <= set(files)
    for f in files:
        load_config(f)
