"""Stage adapters: one thin call into the library per stage.

Each adapter turns a validated config section plus the run context (seed, client, resume,
overwrite, run directory) into a call of the engine function and returns a small JSON-able
summary for ``run.json`` (``out``: where the output went; ``summary``: one line). No engine
logic lives here; output safety does (:mod:`pipelines.outputs`): the run has already checked
every output, an existing output is only ever cleared through :func:`hvrt_dask.ownership.clear`,
and engines are never asked to overwrite.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
from typing import Any

from hvrt_dask import ownership
from pipelines import outputs, progress
from pipelines.context import StageContext
from pipelines.data import load_data
from pipelines.schema import ENGINE_FUNCTIONS, OUTPUTS


def engine_function(stage: str) -> Any:
    """The library function a stage calls."""
    mod, attr = ENGINE_FUNCTIONS[stage]
    return getattr(importlib.import_module(mod), attr)


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


def _out(stage: str, section: Any) -> str:
    return os.fspath(getattr(section, OUTPUTS[stage][0]))


# ----------------------------------------------------------------------------- HVRT stages


def _fitted_estimator(section: Any, ctx: StageContext, steps: progress.Steps) -> Any:
    from hvrt_dask import HVRT

    steps.step("load data")
    data = load_data(section.data, section.persist_input)
    params = dict(section.model)
    params.setdefault("random_state", ctx.seed)
    steps.step("fit")
    return HVRT(**params).fit(data, feature_types=section.feature_types)


def _written_shape(built: str, est: Any) -> list[int]:
    """(rows, columns) of a finished library output, from its completion record (no data read)."""
    return [int(ownership.read_complete(built)["rows"]), int(est.n_features_in_)]


def run_expand(section: Any, ctx: StageContext) -> dict[str, Any]:
    out = _out("expand", section)
    steps = progress.Steps("expand", 3, ctx.echo)
    est = _fitted_estimator(section, ctx, steps)
    staging = outputs.begin_staged(out, ctx.run_id)
    built = os.path.join(staging, "out")
    steps.step("generate and write")
    # The library writes a complete, owned hvrt.expand output (hvrt_dask.hvrt.output) inside
    # the staging directory; it is renamed into place whole. clip unset: the engine default.
    extra = {} if section.clip is None else {"clip": section.clip}
    est.expand(
        section.n,
        generation_strategy=section.generation_strategy,
        bandwidth=section.bandwidth,
        variance_weighted=section.variance_weighted,
        adaptive_bandwidth=section.adaptive_bandwidth,
        output=built,
        **extra,
    )
    shape = _written_shape(built, est)
    steps.close()
    outputs.finish_staged(built, out, outputs.KINDS["expand"], ctx.run_id)
    return {"out": out, "shape": shape, "n_partitions": summarize(getattr(est, "n_partitions_", None)),
            "summary": f"{shape[0]} synthetic rows x {shape[1]} columns"}


def run_reduce(section: Any, ctx: StageContext) -> dict[str, Any]:
    out = _out("reduce", section)
    steps = progress.Steps("reduce", 3, ctx.echo)
    est = _fitted_estimator(section, ctx, steps)
    staging = outputs.begin_staged(out, ctx.run_id)
    built = os.path.join(staging, "out")
    steps.step("select and write")
    # The output carries the selected rows' original row numbers (source_row) in any case.
    est.reduce(
        n=section.n,
        ratio=section.ratio,
        method=section.method,
        variance_weighted=section.variance_weighted,
        output=built,
    )
    shape = _written_shape(built, est)
    steps.close()
    outputs.finish_staged(built, out, outputs.KINDS["reduce"], ctx.run_id)
    return {"out": out, "shape": shape, "n_partitions": summarize(getattr(est, "n_partitions_", None)),
            "summary": f"{shape[0]} of {est.n_samples_} rows kept (+ source_row)"}


# ----------------------------------------------------------------------------- SAE stages


def _engine_kwargs(section: Any, ctx: StageContext, fn: Any) -> dict[str, Any]:
    """Section values (unset ones left to the engine's defaults) + run context."""
    kw = {f.name: getattr(section, f.name) for f in dataclasses.fields(section) if f.name != "extra"}
    kw.update(section.extra)
    kw = {k: v for k, v in kw.items() if v is not None}
    params = inspect.signature(fn).parameters
    if "client" in params:
        kw["client"] = ctx.client
    if "progress" in params:
        kw["progress"] = ctx.progress
    for seed_name in ("seed", "random_state"):
        if seed_name in params and seed_name not in kw:
            kw[seed_name] = ctx.seed
    return kw


def _prepare_owned(stage: str, out: str, ctx: StageContext, resumable: bool) -> bool:
    """Clear our own stale output when the stage starts over; returns whether to resume."""
    if ctx.overwrite or not resumable:
        ownership.clear(out, outputs.KINDS[stage])  # refuses anything that is not ours
        return False
    return ctx.resume


def _run_engine(stage: str, section: Any, ctx: StageContext, resumable: bool) -> tuple[str, Any]:
    fn = engine_function(stage)
    kw = _engine_kwargs(section, ctx, fn)
    out = _out(stage, section)
    resume = _prepare_owned(stage, out, ctx, resumable)
    if "resume" in inspect.signature(fn).parameters:
        kw["resume"] = resume
    kw["overwrite"] = False  # the run layer clears (only its own outputs); engines never delete
    ctx.echo(f"[{stage}] writing {out}")
    result = fn(**kw)
    outputs.finish_marked(out, outputs.KINDS[stage], ctx.run_id)
    return out, result


def run_capture(section: Any, ctx: StageContext) -> dict[str, Any]:
    out, rep = _run_engine("capture", section, ctx, resumable=True)
    s = summarize(rep)
    return {"out": out, "result": s,
            "summary": f"{s.get('n_samples')} samples, {s.get('tokens')} tokens captured"}


def run_train_sae(section: Any, ctx: StageContext) -> dict[str, Any]:
    out, rec = _run_engine("train_sae", section, ctx, resumable=False)
    s = {k: v for k, v in summarize(rec).items() if k != "log"}
    return {"out": out, "result": s,
            "summary": f"d_sae {s.get('d_sae')}, FVE {s.get('fve', float('nan')):.3f}, L0 {s.get('l0', float('nan')):.1f}"}


def run_extract(section: Any, ctx: StageContext) -> dict[str, Any]:
    out, res = _run_engine("extract", section, ctx, resumable=True)
    s = summarize(res)
    return {"out": out, "result": s,
            "summary": f"{s.get('n_chunks')} chunks, top {section.top_k} examples per feature"}


def _features(spec: Any) -> Any:
    return range(spec) if isinstance(spec, int) else spec


def _export(stage: str, section: Any, ctx: StageContext, write: Any) -> dict[str, Any]:
    staging = outputs.begin_staged(section.path, ctx.run_id)
    built = os.path.join(staging, os.path.basename(section.path))
    result = write(built)
    path = outputs.finish_staged(built, section.path, outputs.KINDS[stage], ctx.run_id)
    return {"out": path, "result": summarize(result), "summary": f"{stage} export of {section.out}"}


def run_html(section: Any, ctx: StageContext) -> dict[str, Any]:
    from hvrt_dask.sae.site import build_site

    n = section.features
    return _export("html", section, ctx, lambda p: build_site(
        section.out, p, features=None if n is None else range(n)))


def run_jsonl(section: Any, ctx: StageContext) -> dict[str, Any]:
    from hvrt_dask.sae.export import export_jsonl

    return _export("jsonl", section, ctx, lambda p: export_jsonl(section.out, p, features=_features(section.features)))


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
