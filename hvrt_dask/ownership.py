"""Ownership and completion markers for everything hvrt_dask writes.

The one rule: **nothing is deleted or overwritten unless it carries hvrt_dask's ownership
marker of the same kind**. Every writer goes through this module:

1. :func:`check_output_path` before any work: the output path (symlinks resolved) must not
   equal or contain the run directory, equal/contain/lie inside an input, or overlap another
   output of the same run; if something already exists there it must be empty or carry our
   marker of the same kind.
2. :func:`claim` writes the ownership marker **first** (directory outputs:
   ``<out>/.hvrt_dask-owner.json``; single files: a hidden sidecar
   ``.<name>.hvrt_dask-owner.json`` next to the file).
3. The writer writes its data; :func:`clear` removes an owned output (and only an owned one).
4. :func:`mark_complete` writes the completion marker **last**
   (``<out>/.hvrt_dask-complete.json`` or, for a file, the atomic rename of
   :func:`atomic_file`). Readers call :func:`require_complete`.

Both marker files start with a dot, so Zarr, Parquet (pyarrow datasets skip ``.``/``_``
names) and xarray ignore them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

OWNER_FILE = ".hvrt_dask-owner.json"
COMPLETE_FILE = ".hvrt_dask-complete.json"
FORMAT = 1

__all__ = [
    "OWNER_FILE",
    "COMPLETE_FILE",
    "OwnershipError",
    "IncompleteOutputError",
    "resolve",
    "read_owner",
    "read_json",
    "owned_by",
    "check_output_path",
    "claim",
    "clear",
    "mark_complete",
    "unmark_complete",
    "is_complete",
    "read_complete",
    "require_complete",
    "atomic_file",
]


class OwnershipError(ValueError):
    """An output path would touch data hvrt_dask did not write (message names the path)."""


class IncompleteOutputError(ValueError):
    """An output has no completion marker: it is being written or its writer died."""


def resolve(path: str | os.PathLike) -> str:
    """Absolute path with ``~`` and environment variables expanded and symlinks resolved."""
    return os.path.realpath(os.path.expandvars(os.path.expanduser(os.fspath(path))))


def _umask() -> int:
    # /proc avoids os.umask's set-and-restore, which races with other threads creating files
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _owner_path(path: str) -> str:
    if os.path.isdir(path):
        return os.path.join(path, OWNER_FILE)
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}{OWNER_FILE}")


def _write_json_atomic(fn: str, payload: dict[str, Any]) -> None:
    d = os.path.dirname(fn) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fn)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(fn: str) -> dict[str, Any] | None:
    """A small JSON record (a dict), or None when absent, unreadable or not an object."""
    try:
        with open(fn) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_owner(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ownership marker of ``path`` (a dict), or None when it has none or it is unreadable."""
    p = resolve(path)
    if not os.path.lexists(p):
        return None
    marker = read_json(_owner_path(p))
    if marker is None or not isinstance(marker.get("kind"), str):
        return None
    return marker


def owned_by(path: str | os.PathLike, kind: str) -> bool:
    """True when ``path`` carries hvrt_dask's ownership marker of ``kind``."""
    m = read_owner(path)
    return m is not None and m.get("kind") == kind


def _contains(outer: str, inner: str) -> bool:
    """True when ``inner`` equals ``outer`` or lies below it (both resolved)."""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_output_path(
    out: str | os.PathLike,
    kind: str,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    others: Iterable[str | os.PathLike | None] = (),
    run_dir: str | os.PathLike | None = None,
) -> str:
    """Validate an output path before any work; returns it resolved.

    Parameters
    ----------
    out : path
        Where the output will be written.
    kind : str
        The output kind (``"hvrt.expand"``, ``"sae.features"``, …); an existing ``out`` must
        be absent, an empty directory, or carry the marker of this kind.
    inputs : paths
        Inputs of the computation (data, store, SAE, model, tokenizer): ``out`` may not
        equal or contain one, nor lie inside one.
    others : paths
        Other outputs of the same run: ``out`` may not overlap them.
    run_dir : path, optional
        The run directory: ``out`` may not equal or contain it (it may lie inside it).

    Raises
    ------
    OwnershipError
        Naming the path and the conflict.
    """
    o = resolve(out)
    for inp in inputs:
        if inp is None:
            continue
        i = resolve(inp)
        if _contains(o, i):
            raise OwnershipError(f"output {os.fspath(out)!r} would overwrite the input {os.fspath(inp)!r}"
                                 f" (resolved {i!r}); choose another output path")
        if _contains(i, o):
            raise OwnershipError(f"output {os.fspath(out)!r} lies inside the input {os.fspath(inp)!r};"
                                 " choose a path outside it")
    for other in others:
        if other is None:
            continue
        r = resolve(other)
        if _contains(o, r) or _contains(r, o):
            raise OwnershipError(f"output {os.fspath(out)!r} overlaps another output of the run"
                                 f" ({os.fspath(other)!r}); give each output its own path")
    if run_dir is not None:
        rd = resolve(run_dir)
        if _contains(o, rd):
            raise OwnershipError(f"output {os.fspath(out)!r} would contain the run directory"
                                 f" {os.fspath(run_dir)!r}; choose a path inside or beside it")
    if os.path.lexists(o):
        empty_dir = os.path.isdir(o) and not os.listdir(o)
        if not empty_dir:
            m = read_owner(o)
            if m is None:
                raise OwnershipError(
                    f"output {os.fspath(out)!r} already exists and was not written by hvrt_dask"
                    f" (no {OWNER_FILE} marker); choose another path — nothing was changed")
            if m.get("kind") != kind:
                raise OwnershipError(
                    f"output {os.fspath(out)!r} holds a hvrt_dask {m.get('kind')!r} output, not"
                    f" {kind!r}; choose another path — nothing was changed")
    return o


def claim(out: str | os.PathLike, kind: str, *, run_id: str | None = None,
          is_file: bool = False, **info: Any) -> str:
    """Write the ownership marker of ``out`` (first step of a writer); returns the resolved path.

    A directory output is created (parents included). An existing ``out`` must be empty or
    already carry the marker of ``kind`` (see :func:`check_output_path`).
    """
    o = check_output_path(out, kind)
    if is_file:
        os.makedirs(os.path.dirname(o) or ".", exist_ok=True)
    else:
        os.makedirs(o, exist_ok=True)
    prev = read_owner(o)
    marker = {
        "kind": kind,
        "format": FORMAT,
        "run_id": run_id,
        "created": (prev or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **info,
    }
    _write_json_atomic(_owner_path(o) if not is_file else _sidecar(o), marker)
    return o


def _sidecar(path: str) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}{OWNER_FILE}")


def clear(out: str | os.PathLike, kind: str) -> None:
    """Delete an output, only if it carries hvrt_dask's marker of ``kind``.

    Absent paths are fine. The completion marker goes first, so a half-cleared output can
    never look complete.

    Raises
    ------
    OwnershipError
        When ``out`` exists without our marker of ``kind`` (nothing is deleted).
    """
    o = resolve(out)
    if not os.path.lexists(o):
        return
    check_output_path(o, kind)  # refuses anything not ours
    if os.path.isdir(o):
        unmark_complete(o)
        if not os.listdir(o):
            os.rmdir(o)
            return
        shutil.rmtree(o)
    else:
        os.unlink(o)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_sidecar(o))


def mark_complete(out: str | os.PathLike, **info: Any) -> None:
    """Write the completion marker of a directory output (the writer's last step)."""
    o = resolve(out)
    if read_owner(o) is None:
        raise OwnershipError(f"output {os.fspath(out)!r} has no ownership marker; claim() it first")
    _write_json_atomic(os.path.join(o, COMPLETE_FILE),
                       {"complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info})


def unmark_complete(out: str | os.PathLike) -> None:
    """Remove the completion marker (first step before rewriting an owned output)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        os.unlink(os.path.join(resolve(out), COMPLETE_FILE))


def read_complete(out: str | os.PathLike) -> dict[str, Any] | None:
    """The completion record of a directory output, or None when it is not complete."""
    o = resolve(out)
    if not os.path.isdir(o):
        return None
    rec = read_json(os.path.join(o, COMPLETE_FILE))
    return rec if rec is not None and rec.get("complete") is True else None


def is_complete(out: str | os.PathLike) -> bool:
    """True when ``out`` carries the completion marker."""
    return read_complete(out) is not None


def require_complete(out: str | os.PathLike, what: str = "output") -> str:
    """Return ``out`` resolved, or raise when it does not exist or is incomplete.

    Raises
    ------
    FileNotFoundError
        When ``out`` does not exist.
    IncompleteOutputError
        When it has no completion marker (interrupted or still being written).
    """
    o = resolve(out)
    if not os.path.exists(o):
        raise FileNotFoundError(f"{what} {os.fspath(out)!r} does not exist")
    if not is_complete(o):
        raise IncompleteOutputError(
            f"{what} {os.fspath(out)!r} is incomplete (no {COMPLETE_FILE}): its writer was interrupted"
            " or is still running; rerun the command that writes it")
    return o


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, kind: str, mode: str = "w", *,
                run_id: str | None = None, **open_kw: Any) -> Iterator[IO[Any]]:
    """Write a single-file output atomically: a temporary name, then a rename.

    An existing file at ``path`` is replaced only when its sidecar marker says hvrt_dask wrote
    it as ``kind``. If the body raises, the temporary file is removed and ``path`` is untouched,
    so a failed export never leaves a truncated file.
    """
    o = check_output_path(path, kind)
    d = os.path.dirname(o) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(o)}.", suffix=".partial", dir=d)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an export gets the usual mode
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        claim(o, kind, run_id=run_id, is_file=True)
        os.replace(tmp, o)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
