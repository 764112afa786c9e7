"""Stage adapters: one thin call into the library per stage.

Each adapter turns a validated config section plus the run context (seed, client, resume,
overwrite, run directory) into a call of the engine function and returns a small JSON-able
summary for ``run.json``. No engine logic lives here.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import shutil
from typing import Any

from pipelines.runs import StageContext
from pipelines.schema import ENGINE_FUNCTIONS, ConfigError

# Default output names inside the run directory.
DEFAULT_OUT = {
    "expand": "expanded.zarr",
    "reduce": "reduced.zarr",
    "capture": "activations.zarr",
    "train_sae": "sae",
    "extract": "features",
}


def out_path(stage: str, section: Any, ctx: StageContext) -> str:
    """The stage's output path: the configured one, else ``<run_dir>/<default name>``."""
    attr = "out_dir" if stage == "train_sae" else "out"
    value = getattr(section, attr, None)
    return os.fspath(value) if value else os.path.join(ctx.run_dir, DEFAULT_OUT[stage])


def engine_function(stage: str) -> Any:
    mod, attr = ENGINE_FUNCTIONS[stage]
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"stage {stage!r} needs {mod}.{attr}, which is not available: {exc}") from exc


def summarize(result: Any) -> Any:
    """A JSON-able summary of an engine's return value."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        result = dataclasses.asdict(result)
    if isinstance(result, dict):
        return {str(k): summarize(v) for k, v in result.items() if not str(k).startswith("_")}
    if isinstance(result, (list, tuple)):
        return [summarize(v) for v in result[:50]]
    if isinstance(result, (str, int, float, bool)) or result is None:
        return result
    if isinstance(result, os.PathLike):
        return os.fspath(result)
    shape = getattr(result, "shape", None)
    if shape is not None:
        return {"type": type(result).__name__, "shape": [int(s) for s in shape]}
    try:  # numpy scalars
        return result.item()
    except AttributeError:
        return repr(result)[:200]


# ----------------------------------------------------------------------------- HVRT stages


def load_data(spec: str, persist: bool = False) -> Any:
    """Open the ``data`` of an expand/reduce config.

    ``sklearn:<loader>`` (a dataset bundled with scikit-learn, e.g. ``sklearn:load_wine``), a
    ``.npy`` file, a ``.csv`` file (pandas) or a Zarr array path (passed to ``HVRT.fit`` as is,
    or opened as a dask array and persisted on the cluster with ``persist``).
    """
    if spec.startswith("sklearn:"):
        import sklearn.datasets

        name = spec.split(":", 1)[1]
        loader = getattr(sklearn.datasets, name, None)
        if loader is None or not name.startswith("load_"):
            raise ConfigError(f"data: {spec!r} is not a bundled scikit-learn dataset loader (load_*)")
        return loader(as_frame=True).data
    if not os.path.exists(spec):
        raise FileNotFoundError(f"data: {spec!r} does not exist")
    if spec.endswith(".npy"):
        import numpy as np

        return np.load(spec)
    if spec.endswith(".csv"):
        import pandas as pd

        return pd.read_csv(spec)
    if persist:
        import dask.array as da

        return da.from_zarr(spec).persist()
    return spec


def _clear_stale_output(path: str, ctx: StageContext) -> None:
    # expand/reduce write their output in one go (no chunk markers): an unfinished attempt's
    # output is removed before the stage runs again.
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "zarr.json")):
        shutil.rmtree(path)
    elif os.path.isfile(path):
        os.unlink(path)


def _estimator(section: Any, ctx: StageContext) -> Any:
    from hvrt_dask import HVRT

    params = dict(section.model)
    params.setdefault("random_state", ctx.seed)
    return HVRT(**params)


def _fitted_estimator(section: Any, ctx: StageContext) -> Any:
    """The HVRT estimator of an expand/reduce section, fitted on the section's data."""
    data = load_data(section.data, section.persist_input)
    return _estimator(section, ctx).fit(data, feature_types=section.feature_types)


def run_expand(section: Any, ctx: StageContext) -> dict[str, Any]:
    out = out_path("expand", section, ctx)
    _clear_stale_output(out, ctx)
    est = _fitted_estimator(section, ctx)
    result = est.expand(
        section.n,
        generation_strategy=section.generation_strategy,
        bandwidth=section.bandwidth,
        variance_weighted=section.variance_weighted,
        adaptive_bandwidth=section.adaptive_bandwidth,
        clip=section.clip,
        output=out,
    )
    return {"out": out, "n_partitions": summarize(getattr(est, "n_partitions_", None)), "result": summarize(result)}


def run_reduce(section: Any, ctx: StageContext) -> dict[str, Any]:
    out = out_path("reduce", section, ctx)
    _clear_stale_output(out, ctx)
    est = _fitted_estimator(section, ctx)
    result = est.reduce(
        n=section.n,
        ratio=section.ratio,
        method=section.method,
        variance_weighted=section.variance_weighted,
        return_indices=section.return_indices,
        output=out,
    )
    return {"out": out, "n_partitions": summarize(getattr(est, "n_partitions_", None)), "result": summarize(result)}


# ----------------------------------------------------------------------------- SAE stages


def _engine_kwargs(stage: str, section: Any, ctx: StageContext, fn: Any) -> dict[str, Any]:
    """Section values (unset ones left to the engine's defaults) + run context."""
    kw = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name != "extra"}
    kw.update(section.extra)
    kw = {k: v for k, v in kw.items() if v is not None}
    params = inspect.signature(fn).parameters
    overwrite = bool(ctx.overwrite or kw.get("overwrite", False))
    if "overwrite" in params:
        kw["overwrite"] = overwrite
    if "resume" in params:  # the engines take at most one of resume / overwrite
        kw["resume"] = bool(ctx.resume and kw.get("resume", True) and not overwrite)
    if "client" in params:
        kw["client"] = ctx.client
    for seed_name in ("seed", "random_state"):
        if seed_name in params and seed_name not in kw:
            kw[seed_name] = ctx.seed
    return kw


def run_capture(section: Any, ctx: StageContext) -> dict[str, Any]:
    fn = engine_function("capture")
    kw = _engine_kwargs("capture", section, ctx, fn)
    kw["out"] = out_path("capture", section, ctx)
    return {"out": kw["out"], "result": summarize(fn(**kw))}


def run_train_sae(section: Any, ctx: StageContext) -> dict[str, Any]:
    fn = engine_function("train_sae")
    kw = _engine_kwargs("train_sae", section, ctx, fn)
    kw["out_dir"] = out_path("train_sae", section, ctx)
    return {"out": kw["out_dir"], "result": summarize(fn(**kw))}


def run_extract(section: Any, ctx: StageContext) -> dict[str, Any]:
    fn = engine_function("extract")
    kw = _engine_kwargs("extract", section, ctx, fn)
    kw["out"] = out_path("extract", section, ctx)
    return {"out": kw["out"], "result": summarize(fn(**kw))}


def _features(spec: Any) -> Any:
    return range(spec) if isinstance(spec, int) else spec


def run_html(section: Any, ctx: StageContext) -> dict[str, Any]:
    from hvrt_dask.sae.export import export_html

    return {"path": summarize(export_html(section.out, section.path, features=_features(section.features),
                                          max_examples=section.max_examples))}


def run_jsonl(section: Any, ctx: StageContext) -> dict[str, Any]:
    from hvrt_dask.sae.export import export_jsonl

    return {"path": section.path, "records": summarize(export_jsonl(section.out, section.path, features=_features(section.features)))}


ADAPTERS = {
    "expand": run_expand,
    "reduce": run_reduce,
    "capture": run_capture,
    "train_sae": run_train_sae,
    "extract": run_extract,
    "html": run_html,
    "jsonl": run_jsonl,
}


def run_stage(name: str, section: Any, ctx: StageContext) -> dict[str, Any]:
    """Run one stage (the default ``stage_fn`` of :func:`pipelines.runs.execute`)."""
    return ADAPTERS[name](section, ctx)
