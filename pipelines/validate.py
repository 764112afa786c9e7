"""``validate``: the engines' own checks, run on a config before any cluster starts.

Every value an engine would reject later — ranges, enums, strategy names, model parameters,
files that must exist, the cluster profile's dependencies — is rejected here with a
:class:`~pipelines.schema.ConfigError` naming the config file and the key. Where an engine
has a validator it is called (``HVRT._check_params``, the strategy registries,
``check_n``, the extraction's ``check_parameters``, capture's ``HOOKS``,
the trainer's ``ARCHITECTURES``) rather than restated.
"""

from __future__ import annotations

import json
import os
from typing import Any

from hvrt_dask import config as hconfig
from pipelines.data import check_data
from pipelines.schema import ConfigError, HtmlSection, PipelineConfig


class _Key:
    """Turns engine exceptions into ConfigErrors naming ``<file>: <stage>.<key>``."""

    def __init__(self, cfg: PipelineConfig, stage: str):
        self.source, self.stage = cfg.source, stage

    def fail(self, key: str, msg: str) -> None:
        raise ConfigError(f"{self.source}: {self.stage}.{key}: {msg}")

    def call(self, key: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (TypeError, ValueError, FileNotFoundError, KeyError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            self.fail(key, str(msg))


def _produced(cfg: PipelineConfig, path: str) -> bool:
    from hvrt_dask import ownership
    from pipelines.outputs import all_outputs

    return ownership.resolve(path) in {ownership.resolve(p) for p in all_outputs(cfg).values()}


def _must_exist(k: _Key, cfg: PipelineConfig, key: str, path: str, what: str) -> None:
    if not _produced(cfg, path) and not os.path.exists(path):
        k.fail(key, f"the {what} {path!r} does not exist")


# ----------------------------------------------------------------------------- HVRT


def _check_hvrt(k: _Key, sec: Any, seed: int) -> None:
    from hvrt_dask import HVRT

    k.call("data", check_data, sec.data)
    params = dict(sec.model)
    params.setdefault("random_state", seed)
    est = k.call("model", HVRT, **params)
    k.call("model", est._check_params)


def check_run(cfg: PipelineConfig) -> None:
    """``run.seed`` reaches every stage: refused here under its own name (not a stage's)."""
    from hvrt_dask.hvrt.estimator import _resolve_seed

    _Key(cfg, "run").call("seed", _resolve_seed, cfg.run.seed, draw=False)


def check_expand(k: _Key, cfg: PipelineConfig, sec: Any) -> None:
    from hvrt_dask.hvrt.expand import check_bandwidth, check_n
    from hvrt_dask.hvrt.generation import GENERATION_STRATEGIES

    _check_hvrt(k, sec, cfg.run.seed)
    k.call("n", check_n, sec.n)
    if sec.generation_strategy not in (None, "auto"):
        k.call("generation_strategy", GENERATION_STRATEGIES.get, sec.generation_strategy)
    if sec.bandwidth is not None:
        k.call("bandwidth", check_bandwidth, sec.bandwidth)


def check_reduce(k: _Key, cfg: PipelineConfig, sec: Any) -> None:
    from hvrt_dask.hvrt.reduce import _check_total
    from hvrt_dask.hvrt.selection import SELECTION_STRATEGIES

    _check_hvrt(k, sec, cfg.run.seed)
    k.call("ratio" if sec.ratio is not None else "n", _check_total, sec.n, sec.ratio, 2**62)
    k.call("method", SELECTION_STRATEGIES.get, sec.method)


# ----------------------------------------------------------------------------- SAE


def check_extract(k: _Key, cfg: PipelineConfig, sec: Any) -> None:
    from hvrt_dask.sae.extract import PARAMETERS, check_parameters

    values = {**{n: getattr(sec, n) for n in ("top_k", "prefix", "suffix", "batch_size", "split_every",
                                               "max_in_flight")}, **sec.extra}
    for name in PARAMETERS:  # the engine's own validation, one key at a time (errors name the key)
        if name == "histogram_range" or values.get(name) is None:
            continue
        k.call(name, check_parameters, **{name: values[name]})
    hrange = values.get("histogram_range")
    if hrange is not None:
        if not isinstance(hrange, (list, tuple)) or len(hrange) != 2 or any(isinstance(v, bool) for v in hrange):
            k.fail("histogram_range", f"expected two numbers [low, high] (log10), got {hrange!r}")
        k.call("histogram_range", check_parameters, histogram_range=tuple(hrange),
               histogram_bins=values.get("histogram_bins"))
    _must_exist(k, cfg, "store", sec.store, "activation store")
    _must_exist(k, cfg, "sae", sec.sae, "SAE directory")
    if not _produced(cfg, sec.sae) and not os.path.exists(os.path.join(sec.sae, "cfg.json")):
        k.fail("sae", f"{sec.sae!r} holds no SAE (cfg.json missing)")
    if not _produced(cfg, sec.store):
        from hvrt_dask.sae.store import open_store

        k.call("store", open_store, sec.store)


def model_packages() -> list[str]:
    """Packages ``capture.model_dir: package:<name>`` may name (``pipelines.model-packages``)."""
    return [str(p) for p in hconfig.get("pipelines.model-packages") or []]


def check_capture(k: _Key, cfg: PipelineConfig, sec: Any) -> None:
    from hvrt_dask.sae.capture import HOOKS
    from hvrt_dask.sae.corpora import BUNDLED

    md = sec.model_dir
    if md.startswith("package:"):
        name = md.split(":", 1)[1]
        if name not in model_packages():
            k.fail("model_dir", f"package {name!r} is not an allowed model package (pipelines.model-packages:"
                                f" {model_packages()}); give a model directory")
    elif not os.path.isdir(md):
        k.fail("model_dir", f"the model directory {md!r} does not exist")
    for src in sec.source if isinstance(sec.source, list) else [sec.source]:
        if src not in BUNDLED and not os.path.exists(src):
            k.fail("source", f"text source {src!r} does not exist (a file, a directory or one of {BUNDLED})")
    if sec.layer < 0:
        k.fail("layer", f"must be >= 0, got {sec.layer}")
    if sec.hook is not None and sec.hook not in HOOKS:
        k.fail("hook", f"must be one of {HOOKS}, got {sec.hook!r}")
    if sec.dtype is not None and sec.dtype not in ("float16", "float32"):
        k.fail("dtype", f"must be 'float16' or 'float32', got {sec.dtype!r}")
    for name in ("seq_len", "stride", "max_samples", "chunk_samples", "batch_size"):
        v = getattr(sec, name, None) if name in ("seq_len", "stride", "max_samples") else sec.extra.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            k.fail(name, f"must be a positive integer, got {v!r}")


def check_train_sae(k: _Key, cfg: PipelineConfig, sec: Any) -> None:
    from hvrt_dask.sae.train import ARCHITECTURES

    _must_exist(k, cfg, "store", sec.store, "activation store")
    if sec.architecture is not None and sec.architecture not in ARCHITECTURES:
        k.fail("architecture", f"must be one of {ARCHITECTURES}, got {sec.architecture!r}")
    for name in ("d_sae", "steps"):
        v = getattr(sec, name)
        if v is not None and v < 1:
            k.fail(name, f"must be a positive integer, got {v}")
    for name in ("batch_tokens", "k", "threads", "buffer_tokens"):
        v = sec.extra.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            k.fail(name, f"must be a positive integer, got {v!r}")


def check_export(k: _Key, cfg: PipelineConfig, sec: Any) -> None:
    _must_exist(k, cfg, "out", sec.out, "extraction output")
    f = sec.features
    if isinstance(sec, HtmlSection):  # the site takes the first N features (or all)
        if f is not None and (isinstance(f, bool) or not isinstance(f, int) or f < 1):
            k.fail("features", f"must be a positive count or null (all features), got {f!r}")
    elif isinstance(f, int) and f < 1:
        k.fail("features", f"must be a positive count or a list of feature ids, got {f}")


# ----------------------------------------------------------------------------- cluster


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [str(x) for x in value]
    return []


def check_cluster(cfg: PipelineConfig) -> None:
    """Profile values, their dependencies and the scheduler file (before anything starts)."""
    import dataclasses

    k = _Key(cfg, "cluster")
    p = cfg.cluster
    for f in dataclasses.fields(p):
        for s in _strings(getattr(p, f.name)):
            if "\n" in s or "\r" in s:
                k.fail(f.name, f"must not contain a line break, got {s!r}")
    for name in ("n_workers", "threads_per_worker", "cores", "job_processes", "ntasks"):
        v = getattr(p, name)
        if v is not None and v < 1:
            k.fail(name, f"must be a positive integer, got {v}")
    if p.minimum_jobs < 0 or p.maximum_jobs < max(1, p.minimum_jobs):
        k.fail("maximum_jobs", f"need 0 <= minimum_jobs <= maximum_jobs and maximum_jobs >= 1,"
                               f" got {p.minimum_jobs}, {p.maximum_jobs}")
    if p.memory_limit is not None:
        from dask.utils import parse_bytes

        if isinstance(p.memory_limit, str) and p.memory_limit != "auto":
            k.call("memory_limit", parse_bytes, p.memory_limit)
    if p.memory is not None:
        from dask.utils import parse_bytes

        k.call("memory", parse_bytes, p.memory)
    if p.profile in ("slurm", "slurm-runner"):
        try:
            import dask_jobqueue  # noqa: F401
        except ImportError:
            k.fail("profile", f"{p.profile!r} needs dask-jobqueue: pip install 'hvrt-dask[slurm]'")
    if p.profile == "scheduler-file":
        fn = p.scheduler_file
        try:
            with open(fn) as f:
                info = json.load(f)
        except FileNotFoundError:
            k.fail("scheduler_file", f"{fn!r} does not exist")
        except (OSError, ValueError) as exc:
            k.fail("scheduler_file", f"{fn!r} is not a scheduler file (JSON): {exc}")
        if not isinstance(info, dict) or not isinstance(info.get("address"), str):
            k.fail("scheduler_file", f"{fn!r} is not a scheduler file (no 'address')")


CHECKS = {
    "expand": check_expand,
    "reduce": check_reduce,
    "capture": check_capture,
    "train_sae": check_train_sae,
    "extract": check_extract,
    "html": check_export,
    "jsonl": check_export,
}


def validate_config(cfg: PipelineConfig, stages: list[str] | None = None, check_cluster_section: bool = True,
                    **kw: Any) -> None:
    """Run the engines' checks on ``stages`` (default: the config's) and on the cluster profile.

    Raises
    ------
    ConfigError
        Naming the config file and the key.
    """
    check_cluster_section = kw.pop("check_cluster", check_cluster_section)
    check_run(cfg)
    for s in stages if stages is not None else cfg.stages:
        CHECKS[s](_Key(cfg, s), cfg, cfg.stage(s))
    if check_cluster_section:
        check_cluster(cfg)
