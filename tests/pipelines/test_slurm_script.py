"""SLURM job scripts come from dask-jobqueue and honour the site's jobqueue.yaml (no SLURM here)."""

from __future__ import annotations

import shlex
import subprocess

import dask
import pytest

pytest.importorskip("dask_jobqueue")

from pipelines.clusters import render_runner_script, render_slurm_script, slurm_cluster_kwargs  # noqa: E402
from pipelines.schema import ConfigError, build_section, load_config  # noqa: E402


def profile(**kw):
    base = {"profile": "slurm", "cores": 8, "memory": "32GB", "job_processes": 2, "walltime": "02:30:00",
            "queue": "gpu", "account": "proj42", "job_extra_directives": ["--gres=gpu:1"],
            "job_script_prologue": ["module load cuda", "source .venv/bin/activate"],
            "resources": {"GPU": 1}, "log_directory": "/scratch/logs"}
    base.update(kw)
    return build_section("cluster", base, "<test>")


def directives(script):
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_worker_script_from_jobqueue():
    script = render_slurm_script(profile(), "tcp://10.1.2.3:8786")
    d = directives(script)
    assert "-p gpu" in d and "-A proj42" in d and "--cpus-per-task=8" in d and "-t 02:30:00" in d
    assert "--gres=gpu:1" in d
    assert "tcp://10.1.2.3:8786" in script and "--nworkers 2" in script and "--resources GPU=1" in script
    lines = script.splitlines()
    assert lines.index("module load cuda") < lines.index("source .venv/bin/activate")
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_site_jobqueue_yaml_is_honoured():
    """Unset values come from jobqueue.slurm; values the config sets override it."""
    site = {"jobqueue.slurm.cores": 3, "jobqueue.slurm.memory": "6GB", "jobqueue.slurm.queue": "site-q",
            "jobqueue.slurm.walltime": "09:00:00", "jobqueue.slurm.account": "site-acct"}
    with dask.config.set(site):
        p = build_section("cluster", {"profile": "slurm", "queue": "mine"}, "<t>")
        assert slurm_cluster_kwargs(p) == {"queue": "mine"}
        d = directives(render_slurm_script(p))
    assert "--cpus-per-task=3" in d and "-t 09:00:00" in d and "-A site-acct" in d
    assert "-p mine" in d and "-p site-q" not in d


def test_runner_script():
    script = render_runner_script(profile(ntasks=6), "configs/extract.yaml", ["--force"])
    d = directives(script)
    assert "--ntasks=6" in d and "--cpus-per-task=8" in d and "-t 02:30:00" in d
    last = script.splitlines()[-1]
    assert last.startswith("srun -n 6 ")
    cmd = shlex.split(last)[3:]
    assert cmd[1:5] == ["-m", "pipelines", "run", "configs/extract.yaml"]
    assert "cluster.profile=slurm-runner" in cmd and cmd[-1] == "--force"
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    with pytest.raises(ConfigError, match="ntasks"):
        render_runner_script(profile(ntasks=2), "c.yaml")


def test_cli_renders_from_shipped_profile_and_rejects_newlines(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli import cli

    res = CliRunner().invoke(cli, ["slurm-script", "configs/expand.yaml", "--cluster", "slurm"])
    assert res.exit_code == 0, res.output
    assert "#SBATCH --cpus-per-task=8" in res.output
    res = CliRunner().invoke(cli, ["slurm-script", "configs/expand.yaml", "--cluster", "slurm",
                                   "--set", "cluster.job_name=\"a\\nb\""])
    assert res.exit_code == 2 and "cluster.job_name" in res.output
    cfg = load_config("configs/expand.yaml", cluster="slurm")
    assert cfg.cluster.maximum_jobs == 8


def test_dashboard_binds_where_the_scheduler_binds():
    from pipelines.clusters import local_cluster_kwargs

    kw = local_cluster_kwargs(build_section("cluster", {"profile": "local", "host": "127.0.0.1"}, "<t>"))
    assert kw["dashboard_address"].startswith("127.0.0.1:")
    kw = local_cluster_kwargs(build_section("cluster", {"profile": "local", "processes": False}, "<t>"))
    assert kw["processes"] is False and kw["n_workers"] == 1
