"""SLURM job scripts render correctly (no SLURM here)."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from pipelines.clusters import render_runner_script, render_slurm_script, slurm_cluster_kwargs
from pipelines.schema import ConfigError, build_section, load_config


def profile(**kw):
    base = {"profile": "slurm", "cores": 8, "memory": "32GB", "job_processes": 2, "walltime": "02:30:00",
            "queue": "gpu", "account": "proj42", "job_extra_directives": ["--gres=gpu:1"],
            "job_script_prologue": ["module load cuda", "source .venv/bin/activate"],
            "resources": {"GPU": 1}, "log_directory": "/scratch/logs"}
    base.update(kw)
    return build_section("cluster", base, "<test>")


def directives(script):
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_builtin_worker_script():
    script = render_slurm_script(profile(), "tcp://10.1.2.3:8786", builtin=True)
    assert script.startswith("#!/usr/bin/env bash\n")
    d = directives(script)
    assert "-J hvrt-dask" in d and "-p gpu" in d and "-A proj42" in d and "-n 1" in d
    assert "--cpus-per-task=8" in d and "-t 02:30:00" in d and "--gres=gpu:1" in d
    assert "--mem=30518M" in d  # ceil(32e9 / 2**20) MiB, as dask-jobqueue writes it
    assert "-o /scratch/logs/hvrt-dask-%J.out" in d
    lines = script.splitlines()
    assert lines.index("module load cuda") < lines.index("source .venv/bin/activate") < len(lines) - 1
    cmd = shlex.split(lines[-1])
    assert cmd[0] == sys.executable and cmd[1:4] == ["-m", "distributed.cli.dask_worker", "tcp://10.1.2.3:8786"]
    def opt(name):
        return cmd[cmd.index(name) + 1]

    assert opt("--nthreads") == "4" and opt("--nworkers") == "2"
    assert opt("--memory-limit") == "14.90GiB"  # 32 GB over 2 processes
    assert opt("--resources") == "GPU=1" and "--nanny" in cmd
    # the script is valid bash
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_worker_command_is_accepted_by_dask_worker():
    """The rendered worker options are real `dask worker` options (its --help parses them)."""
    script = render_slurm_script(profile(), "tcp://10.1.2.3:8786", builtin=True)
    cmd = shlex.split(script.splitlines()[-1])
    help_text = subprocess.run([sys.executable, "-m", "distributed.cli.dask_worker", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for opt in (c for c in cmd if c.startswith("--")):
        assert opt in help_text, opt


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


def test_bad_profile_values():
    with pytest.raises(ConfigError, match="multiple of cluster.job_processes"):
        render_slurm_script(profile(cores=5, job_processes=2), builtin=True)


def test_jobqueue_kwargs_and_script_when_installed():
    kw = slurm_cluster_kwargs(profile())
    assert kw["cores"] == 8 and kw["processes"] == 2 and kw["queue"] == "gpu"
    assert kw["worker_extra_args"][-2:] == ["--resources", "GPU=1"]
    pytest.importorskip("dask_jobqueue")
    script = render_slurm_script(profile(), builtin=False)
    assert "#SBATCH -p gpu" in script and "--nworkers 2" in script


def test_cli_renders_from_shipped_profile(tmp_path):
    from click.testing import CliRunner

    from pipelines.cli import cli

    res = CliRunner().invoke(cli, ["slurm-script", "configs/extract.yaml", "--cluster", "slurm"])
    assert res.exit_code == 0, res.output
    assert "#SBATCH --cpus-per-task=8" in res.output
    cfg = load_config("configs/extract.yaml", cluster="slurm")
    assert cfg.cluster.maximum_jobs == 8
