"""Locks: no two holders under a stampede, other hosts' heartbeats, odd content named with its fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from pipelines import locks, runs
from pipelines.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

CONTENDER = textwrap.dedent("""
    import os, sys, time
    from pipelines import locks
    lock, inside, ready, go = sys.argv[1:5]
    open(ready, "w").close()  # imported: waiting at the barrier
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        with locks.hold(lock, "test"):
            try:
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
            except FileExistsError:
                print("TWO HOLDERS", flush=True)
                sys.exit(5)
            os.close(fd)
            time.sleep(0.05)
            os.unlink(inside)
        print("held", flush=True)
    except locks.AlreadyRunning:
        print("busy", flush=True)
""")


def test_stampede_on_a_stale_lock_never_two_holders(tmp_path):
    """Many processes start together on a lock left by a dead process, repeatedly: one holder at a time."""
    lock = tmp_path / ".lock"
    env = dict(os.environ, PYTHONPATH=ROOT)
    held_total = 0
    for trial in range(6):
        lock.write_text(json.dumps({"pid": 999999, "host": socket.gethostname(), "since": "dead"}))
        # a barrier: all six start contending within a millisecond of the go file appearing,
        # however long their imports took (no fixed head start to guess)
        ready = [tmp_path / f"ready-{trial}-{i}" for i in range(6)]
        go = tmp_path / f"go-{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(lock), str(tmp_path / "inside"), str(r), str(go)],
                                  stdout=subprocess.PIPE, text=True, env=env) for r in ready]
        deadline = time.time() + 60
        while not all(r.exists() for r in ready) and time.time() < deadline:
            assert all(p.poll() is None for p in procs), "a contender died before the barrier"
            time.sleep(0.005)
        go.touch()
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert "TWO HOLDERS" not in outs
        assert outs.count("held") >= 1, outs
        held_total += outs.count("held")
    assert held_total >= 6


def test_other_host_lock_expires_after_its_heartbeat(tmp_path, monkeypatch):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": 123, "host": "node-b", "since": "x"}))
    with pytest.raises(locks.AlreadyRunning, match="node-b"):
        with locks.hold(str(lock), "run"):
            pass
    old = time.time() - 2 * float(locks.hconfig.get("pipelines.lock-expiry"))
    os.utime(lock, (old, old))
    with locks.hold(str(lock), "run") as held:
        assert held.took_over["host"] == "node-b"
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert lock.read_text() == ""


def test_heartbeat_touches_the_lock(tmp_path):
    import dask

    lock = tmp_path / ".lock"
    with dask.config.set({"hvrt.pipelines.lock-heartbeat": 0.05}), locks.hold(str(lock), "run"):
        t0 = os.stat(lock).st_mtime
        time.sleep(0.3)
        assert os.stat(lock).st_mtime > t0


ODD = {
    "truncated": '{"pid": 12',
    "list": "[1, 2]",
    "string pid": '{"pid": "12", "host": "h"}',
    "pid 0": '{"pid": 0, "host": "h"}',
}


@pytest.mark.parametrize("what", [*ODD, "directory"])
def test_odd_lock_content_named_with_fix(tmp_path, what):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if what == "directory":
        (run_dir / ".lock").mkdir()
    else:
        (run_dir / ".lock").write_text(ODD[what])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run:\n  dir: {run_dir}\nexpand:\n  data: sklearn:load_wine\n  n: 10\n")
    res = CliRunner().invoke(cli, ["expand", str(cfg)])
    assert res.exit_code == runs.EXIT_FAILED, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
    assert str(run_dir / ".lock") in res.output and "rm -r" in res.output


@pytest.mark.parametrize("content", ['{"stages": ', "[]", '"x"', '{"stages": [1]}', "directory"])
def test_odd_run_json_named_with_fix(tmp_path, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if content == "directory":
        (run_dir / "run.json").mkdir()
    else:
        (run_dir / "run.json").write_text(content)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run:\n  dir: {run_dir}\nexpand:\n  data: sklearn:load_wine\n  n: 10\n")
    res = CliRunner().invoke(cli, ["expand", str(cfg)])
    assert res.exit_code == runs.EXIT_FAILED, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert str(run_dir / "run.json") in res.output and "mv " in res.output


def test_same_output_two_run_directories_exit_3(tmp_path):
    """A second run (other run directory) writing the same output waits for nobody: exit 3."""
    out = tmp_path / "shared.zarr"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pipelines import locks
        with locks.hold(locks.output_lock_path({str(out)!r}), "output"):
            print('locked', flush=True)
            time.sleep(3600)  # until the test kills it: no sleep decides the outcome
    """)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert holder.stdout.readline().strip() == "locked"
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"run:\n  dir: {tmp_path / 'run2'}\nexpand:\n  data: sklearn:load_wine\n  n: 10\n  out: {out}\n")
        res = CliRunner().invoke(cli, ["expand", str(cfg)])
        assert res.exit_code == runs.EXIT_RUNNING and "output" in res.output and str(holder.pid) in res.output
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
