"""The embedded default run (``make demo`` → ``python -m pipelines demo --out demo_output``).

A LocalCluster, a dataset bundled with scikit-learn (no download), and the two HVRT stages
run through the normal pipeline machinery (run directory, ``run.json``, performance report):

1. fit + ``expand`` to several times the dataset's size; a fidelity table (real vs synthetic)
   is printed and a PNG of real vs synthetic marginals and correlations is written;
2. fit + ``reduce`` to 20 % of the rows; its fidelity to the full dataset is printed next to a
   uniform random subset of the same size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hvrt_dask import _seeding, ownership
from pipelines import runs
from pipelines.schema import from_dict

BUNDLED = ("load_breast_cancer", "load_wine", "load_diabetes", "load_iris")
REDUCE_METRICS = ("marginal_fidelity", "correlation_fidelity", "tail_preservation")


def demo_config(out: str, dataset: str, n_workers: int, seed: int, n_expand: int, ratio: float) -> Any:
    raw = {
        "run": {"dir": out, "seed": seed},
        "cluster": {"profile": "local", "n_workers": n_workers, "threads_per_worker": 1},
        "expand": {"data": f"sklearn:{dataset}", "n": n_expand, "out": "expanded.zarr"},
        "reduce": {"data": f"sklearn:{dataset}", "ratio": ratio, "out": "reduced.zarr"},
    }
    return from_dict(raw, source="<demo>")


def plot_fidelity(real: np.ndarray, synth: np.ndarray, columns: list[str], path: str, n_cols: int = 6) -> str:
    """PNG: histograms of the first ``n_cols`` marginals, and real/synthetic correlation matrices."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(n_cols, real.shape[1])
    fig = plt.figure(figsize=(3.2 * k, 7.5))
    grid = fig.add_gridspec(2, max(k, 3))
    for j in range(k):
        ax = fig.add_subplot(grid[0, j])
        lo, hi = np.nanmin(real[:, j]), np.nanmax(real[:, j])
        bins = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 30)
        ax.hist(real[:, j], bins=bins, density=True, alpha=0.55, label="real")
        ax.hist(synth[:, j], bins=bins, density=True, alpha=0.55, label="synthetic")
        ax.set_title(columns[j][:24], fontsize=9)
        ax.tick_params(labelsize=7)
        if j == 0:
            ax.legend(fontsize=8)
    cr, cs = np.corrcoef(real, rowvar=False), np.corrcoef(synth, rowvar=False)
    span = max(k, 3)
    thirds = [grid[1, (i * span) // 3: ((i + 1) * span) // 3] for i in range(3)]
    for cell, mat, title, cmap in (
        (thirds[0], cr, "real correlations", "RdBu_r"),
        (thirds[1], cs, "synthetic correlations", "RdBu_r"),
        (thirds[2], cs - cr, "synthetic − real", "PuOr_r"),
    ):
        ax = fig.add_subplot(cell)
        im = ax.imshow(mat, vmin=-1, vmax=1, cmap=cmap)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("HVRT expand: real vs synthetic", fontsize=12)
    fig.tight_layout()
    with ownership.atomic_file(path, "pipelines.demo-plot", "wb") as f:  # replaces only our own plot
        fig.savefig(f, dpi=80, format="png")
    plt.close(fig)
    return path


def run_demo(
    out: str = "demo_output",
    dataset: str = "load_breast_cancer",
    n_workers: int | None = None,
    seed: int | None = None,
    n_expand: int | None = None,
    ratio: float = 0.2,
    echo: Callable[[str], Any] = print,
    client: Any = None,
) -> dict[str, Any]:
    """Run the demo; returns the fidelity reports (also written to ``<out>/fidelity.json``)."""
    import sklearn.datasets

    from hvrt_dask.hvrt import metrics
    from pipelines.clusters import machine_size

    if dataset not in BUNDLED:
        raise ValueError(f"--dataset must be one of the bundled scikit-learn datasets {BUNDLED}, got {dataset!r}")
    from hvrt_dask import config as hconfig

    seed = int(hconfig.get("seed-default")) if seed is None else int(seed)
    X = getattr(sklearn.datasets, dataset)(as_frame=True).data
    real = X.to_numpy(dtype=np.float64)
    n_expand = int(n_expand or 4 * len(X))
    n_workers = n_workers or min(2, machine_size()[0])
    cfg = demo_config(out, dataset, n_workers, seed, n_expand, ratio)
    echo(f"hvrt_dask demo: {dataset} ({real.shape[0]} rows x {real.shape[1]} columns) on a LocalCluster "
         f"of {n_workers} workers; output in {out}/")
    # The demo always recomputes (force): it is a showcase, not a scheduled job.
    code = runs.execute(cfg, ["expand", "reduce"], force=True, client=client, echo=echo)
    if code != runs.EXIT_OK:
        info = runs.read_run_json(out) or {}
        errors = [f"{s}: {r.get('error')}" for s, r in info.get("stages", {}).items() if r.get("status") == "failed"]
        raise RuntimeError(f"demo run failed (exit {code}): {'; '.join(errors) or 'see run.json'}")

    from hvrt_dask.hvrt import read_output

    synth = read_output(cfg.expand.out).to_numpy(dtype=np.float64)
    reduced = read_output(cfg.reduce.out).to_numpy(dtype=np.float64)
    rng = _seeding.generator(seed, "demo", "uniform-subset")
    uniform = real[np.sort(rng.choice(real.shape[0], size=reduced.shape[0], replace=False))]

    expand_report = metrics.fidelity_report(real, synth, random_state=seed)
    # The configured reduce (FPS) keeps coverage/extremes on purpose; a stratified, size-weighted
    # reduce of the same size shows the distribution-preserving option next to it.
    from hvrt_dask import HVRT

    stratified = HVRT(random_state=seed).fit(real).reduce(
        n=reduced.shape[0], method="stratified", variance_weighted=False
    )
    reduce_reports = {
        f"HVRT reduce, {cfg.reduce.method} (n={reduced.shape[0]})": metrics.fidelity_report(real, reduced, metrics=list(REDUCE_METRICS), random_state=seed),
        f"HVRT reduce, stratified (n={stratified.shape[0]})": metrics.fidelity_report(real, stratified, metrics=list(REDUCE_METRICS), random_state=seed),
        f"uniform random subset (n={reduced.shape[0]})": metrics.fidelity_report(real, uniform, metrics=list(REDUCE_METRICS), random_state=seed),
    }
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 4):
        echo("\nExpand fidelity (real vs synthetic; 1 = perfect for the fidelities, 0.5 = indistinguishable AUC):")
        echo(metrics.fidelity_table({f"HVRT expand (n={synth.shape[0]})": expand_report}).to_string())
        echo("\nReduce fidelity to the full dataset, next to a uniform random subset of the same size:")
        echo(metrics.fidelity_table(reduce_reports).to_string())
    png = plot_fidelity(real, synth, list(X.columns), os.path.join(out, "expand_fidelity.png"))
    reports = {"dataset": dataset, "seed": seed, "expand": expand_report, "reduce": reduce_reports}
    with ownership.atomic_file(os.path.join(out, "fidelity.json"), "pipelines.demo-report") as f:
        json.dump(reports, f, indent=2, default=float)
    info = runs.read_run_json(out) or {}
    echo(f"\nwrote {png}")
    echo(f"wrote {os.path.join(out, 'fidelity.json')}, {os.path.join(out, 'run.json')}, "
         f"{os.path.join(out, runs.REPORT)}")
    echo(f"Dask dashboard was at: {info.get('cluster', {}).get('dashboard')}")
    return reports
