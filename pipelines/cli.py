"""The ``hvrt-dask`` command (also ``python -m pipelines``).

Exit codes: 0 success (or already complete), 1 failure, 2 bad config / usage (also an
output that would touch data hvrt_dask did not write), 3 already running (another live
process holds the run directory's or an output's lock), 128 + signal number when
interrupted by SIGINT/SIGTERM (130/143).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import click

from pipelines import runs
from pipelines.schema import STAGES, ConfigError, dump, load_config


def _echo(msg: str) -> None:
    click.echo(msg, err=False)
    sys.stdout.flush()


def _config_options(f):
    """--set / --cluster / --address / --scheduler-file (shared by every config command)."""
    f = click.option("--scheduler-file", "scheduler_file", default=None, type=click.Path(),
                     help="Connect to the scheduler of this scheduler file.")(f)
    f = click.option("--address", default=None, help="Connect to an existing scheduler (tcp://host:port).")(f)
    f = click.option("--cluster", "cluster", default=None,
                     help="Cluster profile: a name under configs/cluster/ (local, threads, address, slurm, gpu) or a YAML path.")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                     help="Override a config value, parsed as YAML 1.2, e.g. --set extract.top_k=50 (repeatable).")(f)
    return f


def _run_options(f):
    f = click.option("--force", is_flag=True,
                     help="Redo finished stages; their outputs start over (only outputs hvrt_dask wrote are ever cleared).")(f)
    f = click.option("--resume/--no-resume", default=True, show_default=True,
                     help="Continue an interrupted run from the engines' done-markers.")(f)
    return f


def _load(config: str, overrides, cluster, address, scheduler_file):
    overrides = list(overrides)
    if address:
        overrides = ["cluster.profile=address", f"cluster.address={address}", *overrides]
    if scheduler_file:
        overrides = ["cluster.profile=scheduler-file", f"cluster.scheduler_file={scheduler_file}", *overrides]
    return load_config(config, overrides, cluster=cluster)


def _config_errors(f):
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(runs.EXIT_BAD_CONFIG)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hvrt-dask")
def cli() -> None:
    """hvrt_dask pipelines: HVRT expand/reduce and SAE capture/train/extract on Dask."""


def _stage_command(stage: str, help_text: str):
    cmd_name = stage.replace("_", "-")

    @cli.command(cmd_name, help=help_text)
    @click.argument("config", type=click.Path())
    @_config_options
    @_run_options
    @_config_errors
    def command(config, overrides, cluster, address, scheduler_file, resume, force):
        cfg = _load(config, overrides, cluster, address, scheduler_file)
        sys.exit(runs.execute(cfg, [stage], resume=resume, force=force, echo=_echo))

    return command


_stage_command("expand", "Fit HVRT on the config's data and expand it (section 'expand').")
_stage_command("reduce", "Fit HVRT on the config's data and reduce it (section 'reduce').")
_stage_command("capture", "Capture language-model activations into a store (section 'capture').")
_stage_command("train_sae", "Train a sparse autoencoder on an activation store (section 'train_sae').")
_stage_command("extract", "Exact SAE feature extraction (section 'extract').")


@cli.command("run")
@click.argument("config", type=click.Path())
@click.option("--stages", default=None, help=f"Comma-separated subset/order of stages ({', '.join(STAGES)}).")
@_config_options
@_run_options
@_config_errors
def run_cmd(config, stages, overrides, cluster, address, scheduler_file, resume, force):
    """Run every stage of a multi-stage config, in order."""
    cfg = _load(config, overrides, cluster, address, scheduler_file)
    selected = [s.strip().replace("-", "_") for s in stages.split(",")] if stages else cfg.stages
    for s in selected:
        if s not in STAGES:
            raise ConfigError(f"--stages: unknown stage {s!r} (stages: {', '.join(STAGES)})")
    if not selected:
        raise ConfigError(f"{config}: no stage sections ({', '.join(STAGES)})")
    sys.exit(runs.execute(cfg, selected, resume=resume, force=force, echo=_echo))


@cli.command("validate")
@click.argument("config", type=click.Path())
@_config_options
@_config_errors
def validate_cmd(config, overrides, cluster, address, scheduler_file):
    """Check a config with the engines' own rules and check its outputs; exit 2 when invalid."""
    from pipelines.outputs import check_run_outputs
    from pipelines.validate import validate_config

    cfg = _load(config, overrides, cluster, address, scheduler_file)
    validate_config(cfg)
    check_run_outputs(cfg, cfg.stages)
    _echo(f"{config}: OK (stages: {', '.join(cfg.stages) or 'none'}; cluster: {cfg.cluster.profile}; run dir: {cfg.run.dir})")


@cli.command("show-config")
@click.argument("config", type=click.Path())
@_config_options
@_config_errors
def show_config_cmd(config, overrides, cluster, address, scheduler_file):
    """Print the resolved config (defaults filled in, overrides applied) as YAML."""
    cfg = _load(config, overrides, cluster, address, scheduler_file)
    click.echo(dump(cfg), nl=False)


@cli.command("slurm-script")
@click.argument("config", type=click.Path())
@click.option("--runner", is_flag=True, help="Render the batch-runner (srun + SLURMRunner) sbatch script instead.")
@click.option("--scheduler-address", default="tcp://SCHEDULER:8786", show_default=True)
@_config_options
@_config_errors
def slurm_script_cmd(config, runner, scheduler_address, overrides, cluster, address, scheduler_file):
    """Print the SLURM job script of the config's cluster profile."""
    from pipelines.clusters import render_runner_script, render_slurm_script
    from pipelines.validate import check_cluster

    cfg = _load(config, overrides, cluster, address, scheduler_file)
    check_cluster(cfg)
    if runner:
        click.echo(render_runner_script(cfg.cluster, config, [f"--set={o}" for o in overrides]), nl=False)
    else:
        click.echo(render_slurm_script(cfg.cluster, scheduler_address), nl=False)


@cli.command("demo")
@click.option("--out", default="demo_output", show_default=True, type=click.Path(), help="Output directory.")
@click.option("--dataset", default="load_breast_cancer", show_default=True,
              help="A scikit-learn bundled loader (load_breast_cancer, load_wine, load_diabetes).")
@click.option("--n-workers", default=None, type=int, help="LocalCluster workers (default: sized to the machine, at most 2).")
@click.option("--seed", default=None, type=int)
def demo_cmd(out, dataset, n_workers, seed):
    """The embedded default: LocalCluster + a scikit-learn dataset; expand, reduce, fidelity, plots."""
    from pipelines.demo import run_demo

    try:
        run_demo(out=out, dataset=dataset, n_workers=n_workers, seed=seed, echo=_echo)
    except (ValueError, TypeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(runs.EXIT_BAD_CONFIG)


@cli.command("site")
@click.argument("features", type=click.Path())
@click.argument("out_dir", type=click.Path())
@click.option("--serve", is_flag=True, help="Serve the site on 127.0.0.1 after building it (prints the address).")
@click.option("--port", default=None, type=int, help="Port for --serve (default hvrt.site.port; 0 = any free port).")
@click.option("--no-build", is_flag=True, help="Only serve an existing site (with --serve).")
def site_cmd(features, out_dir, serve, port, no_build):
    """Build the feature browser of an extraction output FEATURES (a features.zarr) into OUT_DIR."""
    from hvrt_dask import config as hconfig
    from hvrt_dask.sae.site import build_site
    from hvrt_dask.sae.site import serve as serve_site

    try:
        if not no_build:
            res = build_site(features, out_dir)
            _echo(f"site: {res.n_features:,} features, {res.files:,} data files, {res.bytes / 1e6:.1f} MB"
                  f" in {res.seconds:.1f} s -> {res.index}")
        if serve:
            serve_site(out_dir, hconfig.get("site.port") if port is None else port, echo=_echo)
    except (ValueError, FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(runs.EXIT_BAD_CONFIG)


@cli.group("config")
def config_group() -> None:
    """Package defaults (dask.config namespace 'hvrt')."""


@config_group.command("init")
@click.option("--path", default=None, type=click.Path(),
              help="Where to write (default: ~/.config/dask/hvrt.yaml, or $DASK_CONFIG/hvrt.yaml).")
@click.option("--force", is_flag=True, help="Replace an existing file that this command wrote.")
def config_init(path, force):
    """Write the package defaults to a user dask config file to edit."""
    import dask.config

    from hvrt_dask import config as hconfig
    from hvrt_dask import ownership

    if path is None:
        path = os.path.join(dask.config.PATH, "hvrt.yaml")
    if os.path.exists(path) and not force:
        click.echo(f"error: {path} exists (use --force to replace it)", err=True)
        sys.exit(runs.EXIT_FAILED)
    try:  # --force replaces only a file this command wrote (never a user's own config)
        with open(hconfig._FN) as src, ownership.atomic_file(path, "pipelines.dask-config") as dst:
            dst.write("# hvrt_dask defaults; edit and keep. DASK_HVRT__SECTION__KEY=... overrides these.\n")
            dst.write(src.read())
    except ownership.OwnershipError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(runs.EXIT_FAILED)
    click.echo(f"wrote {path}")


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point."""
    return cli.main(args=argv, prog_name="hvrt-dask")


if __name__ == "__main__":
    main()
