"""Stage outputs and inputs: ownership checks before anything runs, safe writes, identities.

Every output a run writes carries hvrt_dask's ownership marker of its stage's kind
(:data:`KINDS`) and, when finished, its completion marker (:mod:`hvrt_dask.ownership`). Before
any stage runs and before a cluster starts, :func:`check_run_outputs` refuses an output that

* exists without our marker of the same kind (a user's directory or file, an input, ...),
* equals or contains the run directory, an input of the run or the config file,
* lies inside an input, or overlaps another output of the run

(paths compared after resolving symlinks). Nothing is ever deleted except through
:func:`hvrt_dask.ownership.clear`, which refuses what is not ours.

Writers that cannot resume (HVRT expand/reduce, exports) write into an owned *staging* sibling
(``.<name>.hvrt_dask-staging``) and the finished output is renamed into place, so ``out`` is
either absent or complete. Resumable engines (capture, extraction) and the SAE trainer write
``out`` directly; the stage records the output in ``run.json`` before the engine starts, so a
run killed before the engine could mark its output can still resume it (:func:`adopt`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import Any

from hvrt_dask import ownership
from hvrt_dask.sae import export as _export
from hvrt_dask.sae import output as _features
from hvrt_dask.sae import store as _store
from hvrt_dask.sae import weights as _weights
from hvrt_dask.sae.site import build as _site
from pipelines.schema import OUTPUTS, ConfigError, PipelineConfig

# The engines' own ownership kinds (one name per concept: the run layer and the library agree).
KINDS = {
    "expand": "hvrt.expand",
    "reduce": "hvrt.reduce",
    "capture": _store.KIND,
    "train_sae": _weights.KIND,
    "extract": _features.KIND,
    "html": _site.KIND,
    "jsonl": _export.KIND_JSONL,
}
STAGING_KIND = "pipelines.staging"
# A file every engine output of that stage holds once the engine has started writing it: an
# unmarked output recorded in run.json is adopted only when it looks like the engine's own.
ENGINE_SIGNATURE = {
    "capture": "zarr.json",
    "train_sae": "cfg.json",
    "extract": os.path.join("partials", "run.json"),
}
# Input attributes of each stage section (paths; package: / sklearn: / bundled names skipped).
INPUT_KEYS = {
    "expand": ("data",),
    "reduce": ("data",),
    "capture": ("source", "model_dir", "tokenizer_dir"),
    "train_sae": ("store",),
    "extract": ("store", "sae"),
    "html": ("out",),
    "jsonl": ("out",),
}


def output_of(cfg: PipelineConfig, stage: str) -> str:
    """The output path of ``stage`` (already made relative to ``run.dir`` by the schema)."""
    return os.fspath(getattr(cfg.stage(stage), OUTPUTS[stage][0]))


def _values(sec: Any, key: str) -> list[Any]:
    v = getattr(sec, key, None)
    if v is None and hasattr(sec, "extra"):
        v = sec.extra.get(key)
    return list(v) if isinstance(v, (list, tuple)) else [v]


def inputs_of(cfg: PipelineConfig, stage: str) -> list[str]:
    """File system inputs of ``stage`` (paths that exist or are produced upstream)."""
    sec = cfg.stage(stage)
    out = []
    for key in INPUT_KEYS[stage]:
        for v in _values(sec, key):
            if not isinstance(v, str) or v.startswith(("sklearn:", "package:")):
                continue
            if key == "source" and not os.path.exists(v):
                continue  # a bundled corpus name
            out.append(v)
    return out


def all_outputs(cfg: PipelineConfig) -> dict[str, str]:
    """``{stage: output path}`` for every stage section of the config."""
    return {s: output_of(cfg, s) for s in OUTPUTS if getattr(cfg, s) is not None}


def external_inputs(cfg: PipelineConfig) -> list[str]:
    """Inputs of every stage that no stage of the config produces, plus the config file."""
    produced = {ownership.resolve(p) for p in all_outputs(cfg).values()}
    found = [cfg.source] if os.path.exists(cfg.source) else []
    for s in all_outputs(cfg):
        found += [p for p in inputs_of(cfg, s) if ownership.resolve(p) not in produced]
    return found


def _write_marker(out: str, kind: str, run_id: str | None) -> None:
    """The ownership marker of an output the stage's engine wrote without one (see :func:`adopt`)."""
    marker = {"kind": kind, "format": ownership.FORMAT, "run_id": run_id,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
              "pid": os.getpid(), "adopted_by": "pipelines"}
    fn = os.path.join(out, ownership.OWNER_FILE)
    tmp = f"{fn}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(marker, f, sort_keys=True)
    os.replace(tmp, fn)


def recorded_outputs(previous: dict[str, Any] | None) -> set[str]:
    """Resolved outputs the previous attempts in this run directory recorded as theirs."""
    found = set()
    for rec in ((previous or {}).get("stages") or {}).values():
        if isinstance(rec, dict) and isinstance(rec.get("output"), dict):
            path = rec["output"].get("path")
            if isinstance(path, str):
                found.add(path)
    return found


def adopt(stage: str, out: str, run_id: str | None, previous: dict[str, Any] | None) -> bool:
    """Mark an unmarked engine output that an earlier attempt of this run directory wrote.

    True when the output at ``out`` was recorded in ``run.json`` by an earlier attempt, has
    no ownership marker and holds the engine's own signature file (a run killed before its
    engine could mark the output). Anything else is left alone.
    """
    o = ownership.resolve(out)
    sig = ENGINE_SIGNATURE.get(stage)
    if (sig is None or o not in recorded_outputs(previous) or not os.path.isdir(o)
            or ownership.read_owner(o) is not None or not os.path.exists(os.path.join(o, sig))):
        return False
    _write_marker(o, KINDS[stage], run_id)
    return True


def check_run_outputs(cfg: PipelineConfig, stages: list[str], previous: dict[str, Any] | None = None,
                      run_id: str | None = None) -> dict[str, str]:
    """Check every output of ``stages`` before anything runs; returns ``{stage: resolved output}``.

    Raises
    ------
    ConfigError
        Naming the config file, the stage key and the conflict (nothing is changed).
    """
    outs = all_outputs(cfg)
    inputs = external_inputs(cfg)
    checked = {}
    for s in stages:
        key = f"{s}.{OUTPUTS[s][0]}"
        if previous is not None:
            adopt(s, outs[s], run_id, previous)
        try:
            checked[s] = ownership.check_output_path(
                outs[s], KINDS[s], inputs=inputs, others=[p for t, p in outs.items() if t != s],
                run_dir=cfg.run.dir)
        except ownership.OwnershipError as exc:
            raise ConfigError(f"{cfg.source}: {key}: {exc}") from None
    return checked


# ----------------------------------------------------------------------------- writing


def staging_path(out: str) -> str:
    """The owned staging directory of ``out``: a hidden sibling."""
    head, name = os.path.split(ownership.resolve(out))
    return os.path.join(head, f".{name}.hvrt_dask-staging")


def begin_staged(out: str, run_id: str | None) -> str:
    """Create a fresh, owned staging directory for ``out``; returns its path."""
    st = staging_path(out)
    ownership.clear(st, STAGING_KIND)  # a killed attempt's leftovers (ours, or refused)
    ownership.claim(st, STAGING_KIND, run_id=run_id)
    return st


def finish_staged(built: str, out: str, kind: str, run_id: str | None) -> str:
    """Mark ``built`` (inside the staging directory) complete and rename it to ``out``."""
    finish_marked(built, kind, run_id)
    if os.path.isdir(built):
        ownership.clear(out, kind)  # our previous output of this kind (refused otherwise)
        os.rename(built, ownership.resolve(out))
    else:  # a single file: sidecar marker first, then the atomic rename
        ownership.claim(out, kind, run_id=run_id, is_file=True)
        os.replace(built, ownership.resolve(out))
    ownership.clear(staging_path(out), STAGING_KIND)
    return ownership.resolve(out)


def finish_marked(out: str, kind: str, run_id: str | None) -> None:
    """Give a finished directory output its ownership marker (if its engine wrote none) and completion."""
    if not os.path.isdir(out):
        return
    if ownership.read_owner(out) is None:
        _write_marker(out, kind, run_id)
    if not ownership.is_complete(out):
        ownership.mark_complete(out)


# ----------------------------------------------------------------------------- identity


def path_identity(path: str) -> Any:
    """What identifies the content of an input: size and mtime of every file under it.

    Stores that record checksums of their chunks (an ``.hvrt_dask-checksums.json`` or a
    completion record carrying ``checksums``) contribute those instead of file times.
    """
    p = ownership.resolve(path)
    if not os.path.exists(p):
        return None
    if os.path.isfile(p):
        st = os.stat(p)
        return [st.st_size, st.st_mtime_ns]
    done = ownership.read_complete(p)
    if done is not None and done.get("checksums"):
        return {"checksums": hashlib.sha256(json.dumps(done["checksums"], sort_keys=True).encode()).hexdigest()}
    h = hashlib.sha256()
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            fn = os.path.join(root, name)
            try:
                st = os.stat(fn)
            except OSError:
                continue
            h.update(f"{os.path.relpath(fn, p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"files": h.hexdigest()}


def inputs_identity(cfg: PipelineConfig, stage: str) -> dict[str, Any]:
    """``{input path: identity}`` of a stage's inputs (see :func:`path_identity`)."""
    return {p: path_identity(p) for p in inputs_of(cfg, stage)}
