"""Typed pipeline configs: YAML files validated into dataclasses.

A pipeline config is a YAML mapping with any of these top-level sections::

    run:        run directory, seed, stage order           (RunSection)
    cluster:    where the work runs (a profile)             (ClusterSection)
    expand:     HVRT fit + expand                           (ExpandSection)
    reduce:     HVRT fit + reduce                           (ReduceSection)
    capture:    capture_activations(...) parameters         (CaptureSection)
    train_sae:  train_sae(...) parameters                   (TrainSAESection)
    extract:    extract_features(...) parameters            (ExtractSection)

Validation is strict: an unknown key, a value of the wrong type or a missing required value
raises :class:`ConfigError` naming the key and the file. Engine stages (capture, train_sae,
extract) also accept any further keyword parameter of the engine function they call (checked
against its signature when the engine is importable), so a config written for the engine
function works unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import yaml

from hvrt_dask import config as hconfig

STAGES = ("expand", "reduce", "capture", "train_sae", "extract", "html", "jsonl")
# The library function each engine stage calls (module, attribute); used to accept extra
# engine parameters in configs and by pipelines.stages.
ENGINE_FUNCTIONS = {
    "capture": ("hvrt_dask.sae.capture", "capture_activations"),
    "train_sae": ("hvrt_dask.sae.train", "train_sae"),
    "extract": ("hvrt_dask.sae.extract", "extract_features"),
}
# Parameters the runner supplies itself; a config may not set them.
RUNNER_PARAMS = ("client", "resume", "overwrite", "progress")


class ConfigError(ValueError):
    """A config is invalid; the message names the file and the key."""

    exit_code = 2


# ----------------------------------------------------------------------------- sections


def _default(key: str) -> Any:
    """A dataclass field defaulting to the package default ``hvrt.<key>`` (the library's own)."""
    return field(default_factory=lambda: hconfig.get(key))


@dataclass
class RunSection:
    """Where and how a run is recorded.

    Attributes
    ----------
    dir : str, optional
        Run directory (``run.json``, performance report, lock, default stage outputs).
        Default: ``<pipelines.runs-dir>/<config file stem>``.
    seed : int
        Seed passed to every stage (``random_state`` / ``seed``); recorded in ``run.json``.
    stages : list of str, optional
        Stages to run, in order; default: every stage section present, in canonical order.
    performance_report : bool
        Write a Dask ``performance_report`` HTML into the run directory.
    """

    dir: str | None = None
    seed: int = _default("seed-default")
    stages: list[str] | None = None
    performance_report: bool = True


@dataclass
class ClusterSection:
    """A cluster profile (see :mod:`pipelines.clusters`).

    SLURM values left unset (null) come from the site's dask-jobqueue configuration
    (``jobqueue.yaml``); only values a config sets override it.
    """

    profile: Literal["local", "threads", "address", "scheduler-file", "slurm", "slurm-runner", "gpu"] = "local"
    # local / threads / gpu
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | int | None = None
    processes: bool = True
    host: str = "127.0.0.1"
    dashboard_address: str | None = None
    resources: dict[str, float] | None = None
    devices: list[int] | None = None
    use_dask_cuda: bool = True
    # existing scheduler
    address: str | None = None
    scheduler_file: str | None = None
    # SLURM (dask-jobqueue names; null = the site's jobqueue.yaml)
    cores: int | None = None
    memory: str | None = None
    job_processes: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    job_name: str | None = None
    job_extra_directives: list[str] | None = None
    job_script_prologue: list[str] | None = None
    worker_extra_args: list[str] | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    minimum_jobs: int = 0
    maximum_jobs: int = 4
    ntasks: int = 4


@dataclass
class ExpandSection:
    """``HVRT(**model).fit(data).expand(n, ...)`` written to ``out`` (relative to ``run.dir``)."""

    data: str
    n: int
    out: str | None = None
    feature_types: list[str] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    generation_strategy: str | None = None
    bandwidth: float | str | None = None
    variance_weighted: bool | str = False
    adaptive_bandwidth: bool = False
    clip: bool | None = None  # None: the engine's default (``HVRT.expand(clip=True)``)
    persist_input: bool = False


@dataclass
class ReduceSection:
    """``HVRT(**model).fit(data).reduce(n | ratio, ...)`` written to ``out`` (relative to ``run.dir``).

    The output (:mod:`hvrt_dask.hvrt.output`) always carries the selected rows' original row
    numbers (``source_row``) next to ``data``; ``return_indices`` is kept for old configs and
    changes nothing.
    """

    data: str
    n: int | None = None
    ratio: float | None = None
    out: str | None = None
    feature_types: list[str] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    method: str = _default("reduce.method")
    variance_weighted: bool | str = _default("reduce.variance-weighted")
    return_indices: bool = False
    persist_input: bool = False


@dataclass
class CaptureSection:
    """Parameters of ``hvrt_dask.sae.capture.capture_activations``.

    ``model_dir`` is a model directory, or ``package:<name>`` for a package named in
    ``pipelines.model-packages``.
    """

    source: str | list[str]
    model_dir: str
    layer: int
    out: str | None = None
    hook: str | None = None
    seq_len: int | None = None
    stride: int | None = None
    max_samples: int | None = None
    dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSAESection:
    """Parameters of ``hvrt_dask.sae.train.train_sae`` (``store`` defaults to the capture output)."""

    store: str | None = None
    out_dir: str | None = None
    d_sae: int | None = None
    architecture: str | None = None
    steps: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExtractSection:
    """Parameters of ``hvrt_dask.sae.extract.extract_features`` (defaults from ``hvrt.extract``).

    ``store`` / ``sae`` default to the capture / train_sae outputs of the same config.
    """

    store: str | None = None
    sae: str | None = None
    out: str | None = None
    top_k: int = _default("extract.top-k")
    prefix: int = _default("extract.prefix")
    suffix: int = _default("extract.suffix")
    batch_size: int | str = _default("extract.batch-size")
    split_every: int = _default("extract.split-every")
    max_in_flight: int = _default("extract.max-in-flight")
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class HtmlSection:
    """``hvrt_dask.sae.site.build_site(out, path, features)``: the static feature browser.

    ``out`` (the extraction output) defaults to the ``extract`` section's output; ``path`` (a
    directory) is relative to ``run.dir``; ``features`` is a count (the first N features) or
    null for all of them (the default).
    """

    path: str | None = None
    features: int | None = None
    out: str | None = None


@dataclass
class JsonlSection:
    """``hvrt_dask.sae.export.export_jsonl(out, path, features)`` (all features by default)."""

    path: str
    features: int | list[int] | None = None
    out: str | None = None


SECTIONS: dict[str, type] = {
    "run": RunSection,
    "cluster": ClusterSection,
    "expand": ExpandSection,
    "reduce": ReduceSection,
    "capture": CaptureSection,
    "train_sae": TrainSAESection,
    "extract": ExtractSection,
    "html": HtmlSection,
    "jsonl": JsonlSection,
}


@dataclass
class PipelineConfig:
    """A whole validated config file."""

    source: str
    run: RunSection
    cluster: ClusterSection
    expand: ExpandSection | None = None
    reduce: ReduceSection | None = None
    capture: CaptureSection | None = None
    train_sae: TrainSAESection | None = None
    extract: ExtractSection | None = None
    html: HtmlSection | None = None
    jsonl: JsonlSection | None = None

    @property
    def stages(self) -> list[str]:
        """Stages to run, in order."""
        if self.run.stages is not None:
            return list(self.run.stages)
        return [s for s in STAGES if getattr(self, s) is not None]

    def stage(self, name: str) -> Any:
        sec = getattr(self, name, None)
        if sec is None:
            raise ConfigError(f"{self.source}: no {name!r} section (needed for stage {name!r})")
        return sec

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (defaults filled in) as plain YAML-able data."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            sec = getattr(self, name)
            if sec is None:
                continue
            d = dataclasses.asdict(sec)
            extra = d.pop("extra", None) or {}
            d.update(extra)
            out[name] = d
        return out


# ----------------------------------------------------------------------------- type checks


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin)) + "[" + ", ".join(_type_name(a) for a in typing.get_args(tp)) + "]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _matches(value: Any, tp: Any) -> bool:
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        kt, vt = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_matches(k, kt) and _matches(v, vt) for k, v in value.items())
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:  # an int is a fine float
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _engine_params(stage: str) -> set[str] | None:
    """Keyword parameters of the engine function, or None when the engine is not importable."""
    if stage not in ENGINE_FUNCTIONS:
        return None
    mod, attr = ENGINE_FUNCTIONS[stage]
    try:
        import importlib

        fn = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError):
        return None
    params = inspect.signature(fn).parameters
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


# Keys holding file system paths: "~" and environment variables expand in them.
PATH_KEYS = {
    "run": ("dir",),
    "cluster": ("scheduler_file", "local_directory", "log_directory", "python"),
    "expand": ("data", "out"),
    "reduce": ("data", "out"),
    "capture": ("model_dir", "out", "tokenizer_dir"),
    "train_sae": ("store", "out_dir"),
    "extract": ("store", "sae", "out"),
    "html": ("path", "out"),
    "jsonl": ("path", "out"),
}


def expand_path(value: Any) -> Any:
    """``~`` and ``$VAR`` / ``${VAR}`` expanded in a path string (other values unchanged)."""
    if isinstance(value, str):
        return os.path.expandvars(os.path.expanduser(value))
    return value


def build_section(name: str, raw: Any, source: str) -> Any:
    """Validate one section mapping into its dataclass (errors name ``source`` and the key)."""
    cls = SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section {name!r} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    has_extra = "extra" in fields
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    engine_params = _engine_params(name) if has_extra else None
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"{source}: {name}: keys must be strings, got {key!r}")
        value = expand_path(value) if key.replace("-", "_") in PATH_KEYS.get(name, ()) else value
        k = key.replace("-", "_")
        if k.startswith("_"):
            raise ConfigError(f"{source}: {name}.{key}: private parameters cannot be set from a config")
        if k in RUNNER_PARAMS:
            raise ConfigError(f"{source}: {name}.{key}: set by the runner, not by the config")
        if k in fields and k != "extra":
            tp = hints[k]
            if not _matches(value, tp):
                raise ConfigError(
                    f"{source}: {name}.{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
                )
            kwargs[k] = value
        elif has_extra and engine_params is not None and k in engine_params:
            # An engine parameter this schema does not type; the engine signature vouches for it.
            extra[k] = value
        else:
            known = sorted(f for f in fields if f != "extra")
            raise ConfigError(f"{source}: unknown key {name}.{key} (known keys: {', '.join(known)})")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(f"{source}: missing required value {name}.{missing[0]}")
    if has_extra:
        kwargs["extra"] = extra
    sec = cls(**kwargs)
    _check_section(name, sec, source)
    return sec


def _check_section(name: str, sec: Any, source: str) -> None:
    if name == "run" and sec.stages is not None:
        for s in sec.stages:
            if s not in STAGES:
                raise ConfigError(f"{source}: run.stages: unknown stage {s!r} (stages: {', '.join(STAGES)})")
    if name == "reduce" and (sec.n is None) == (sec.ratio is None):
        raise ConfigError(f"{source}: reduce: set exactly one of reduce.n and reduce.ratio")
    if name == "expand" and sec.n <= 0:
        raise ConfigError(f"{source}: expand.n must be positive, got {sec.n}")
    if name == "cluster":
        if sec.profile == "address" and not sec.address:
            raise ConfigError(f"{source}: missing required value cluster.address (profile 'address')")
        if sec.profile == "scheduler-file" and not sec.scheduler_file:
            raise ConfigError(f"{source}: missing required value cluster.scheduler_file (profile 'scheduler-file')")


# ----------------------------------------------------------------------------- loading


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars.

    No octal (``010`` is 10), no sexagesimal numbers, no timestamps (``2024-01-01`` stays a
    string) and only ``true``/``false`` are booleans (``yes``/``on`` stay strings).
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                       "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _rx, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     "-+.0123456789"),
):
    _Yaml12Loader.add_implicit_resolver(_tag, __import__("re").compile(_rx), list(_first))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def yaml_load(text: Any) -> Any:
    """Parse YAML text (or a stream) with YAML 1.2 core-schema scalars."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value as YAML 1.2: ``50`` → int, ``010`` → 10, ``2024-01-01`` → str)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE")
    key, _, value = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        parsed = yaml_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a raw config mapping (new copy; sections are created as needed)."""
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for p in path[:-1]:
            p = p.replace("-", "_") if node is raw else p
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a mapping")
            node = node[p]
        node[path[-1]] = value
    return raw


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a mapping (errors name the file)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file does not exist")
    try:
        with open(path) as f:
            raw = yaml_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    return raw


# Output of each stage: the section attribute and its default name inside the run directory.
OUTPUTS = {
    "expand": ("out", "expanded.zarr"),
    "reduce": ("out", "reduced.zarr"),
    "capture": ("out", "activations.zarr"),
    "train_sae": ("out_dir", "sae"),
    "extract": ("out", "features"),
    "html": ("path", "site"),
    "jsonl": ("path", "features.jsonl"),
}
# Inputs that default to an upstream stage's output in the same config: (attr, stage).
UPSTREAM = {
    "train_sae": (("store", "capture"),),
    "extract": (("store", "capture"), ("sae", "train_sae")),
    "html": (("out", "extract"),),
    "jsonl": (("out", "extract"),),
}


def resolve_paths(cfg: PipelineConfig) -> None:
    """Outputs relative to ``run.dir`` (absolute ones kept); unset inputs from upstream stages.

    Errors name the source and the key of a required input no stage provides.
    """
    assert cfg.run.dir is not None
    for stage, (attr, default) in OUTPUTS.items():
        sec = getattr(cfg, stage)
        if sec is None:
            continue
        value = getattr(sec, attr) or default
        setattr(sec, attr, value if os.path.isabs(value) else os.path.join(cfg.run.dir, value))
    for stage, pairs in UPSTREAM.items():
        sec = getattr(cfg, stage)
        if sec is None:
            continue
        for attr, up in pairs:
            if getattr(sec, attr) is None:
                upsec = getattr(cfg, up)
                if upsec is None:
                    raise ConfigError(f"{cfg.source}: missing required value {stage}.{attr}"
                                      f" (no {up!r} section in this config provides it)")
                setattr(sec, attr, getattr(upsec, OUTPUTS[up][0]))


def from_dict(raw: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    """Validate a raw mapping into a :class:`PipelineConfig` (outputs resolved against ``run.dir``)."""
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section {key!r} (sections: {', '.join(SECTIONS)})")
        sections[name] = build_section(name, value, source)
    sections.setdefault("run", build_section("run", {}, source))
    sections.setdefault("cluster", build_section("cluster", {"profile": hconfig.get("pipelines.cluster")}, source))
    cfg = PipelineConfig(source=source, **sections)
    for s in cfg.stages:
        cfg.stage(s)  # a listed stage needs its section
    if cfg.run.dir is None:
        stem = os.path.splitext(os.path.basename(source))[0]
        cfg.run.dir = os.path.join(expand_path(str(hconfig.get("pipelines.runs-dir"))), stem)
    resolve_paths(cfg)
    return cfg


def load_config(
    path: str | os.PathLike,
    overrides: list[str] | tuple[str, ...] = (),
    cluster: str | os.PathLike | None = None,
) -> PipelineConfig:
    """Load, override and validate a config file.

    Parameters
    ----------
    path : path
        The pipeline YAML.
    overrides : list of str
        ``section.key=value`` items applied before validation.
    cluster : str or path, optional
        A cluster profile (a name under ``configs/cluster/`` or a YAML path) replacing the
        config's ``cluster:`` section; overrides still apply on top.
    """
    source = os.fspath(path)
    raw = load_yaml(source)
    if cluster is not None:
        raw = dict(raw)
        raw["cluster"] = load_cluster_profile(cluster)
    raw = apply_overrides(raw, overrides)
    return from_dict(raw, source)


def find_cluster_profile(name: str | os.PathLike) -> str:
    """Resolve a profile name (``local``) or path to a YAML file."""
    name = os.fspath(name)
    if os.path.isfile(name):
        return name
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for base in (os.getcwd(), here):
        cand = os.path.join(base, "configs", "cluster", f"{name}.yaml")
        if os.path.isfile(cand):
            return cand
    raise ConfigError(f"cluster profile {name!r}: no file {name!r} nor configs/cluster/{name}.yaml")


def load_cluster_profile(name: str | os.PathLike) -> dict[str, Any]:
    """Raw ``cluster:`` mapping of a profile file (validated later with the whole config)."""
    path = find_cluster_profile(name)
    raw = load_yaml(path)
    section = raw.get("cluster", raw)
    build_section("cluster", section, path)  # errors name the profile file
    return dict(section)


def dump(cfg: PipelineConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
