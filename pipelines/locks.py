"""Locks for run directories and outputs: a kernel lock held for the run's life, plus a heartbeat.

A lock is a small file (``<run dir>/.lock``, or ``.<name>.hvrt_dask-lock`` next to an
output). Acquisition:

1. ``open(O_CREAT)`` the file and take ``fcntl.flock(LOCK_EX | LOCK_NB)``. The kernel grants
   the lock to exactly one process at a time and drops it when the holder dies (even on
   SIGKILL), so there is no takeover race: nobody ever unlinks a lock file to take it over.
2. With the kernel lock held, read the record left in the file. Empty: free. A record from
   this host: its process is dead (it would still hold the kernel lock), so it is stale. A
   record from **another host** (shared file systems do not always carry flock between
   hosts) is live while its heartbeat — the file's mtime, touched every
   ``pipelines.lock-heartbeat`` seconds by the holder — is younger than
   ``pipelines.lock-expiry`` seconds; older, it is stale and taken over.
3. Write our record (pid, host, start) and keep the descriptor open; a daemon thread
   touches the file. Release empties the file and closes it (the file itself stays).

Odd content (not a JSON object with an integer pid and a host, or a directory in the lock's
place) raises :class:`LockError` naming the file and the command that fixes it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shlex
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from hvrt_dask import config as hconfig


class AlreadyRunning(RuntimeError):
    """Another live process holds the lock."""


class LockError(RuntimeError):
    """A lock file cannot be used (odd content, a directory, unwritable); names the fix."""


def now() -> str:
    """UTC timestamp with milliseconds (ISO 8601)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _setting(name: str) -> float:
    return float(hconfig.get(f"pipelines.{name}"))


def _fix(path: str) -> str:
    return f"if no hvrt-dask run uses it on any host, remove it: rm -r {shlex.quote(path)}"


def parse_record(path: str, text: str) -> dict[str, Any] | None:
    """The holder record of a lock file's text (None when empty); odd content → :class:`LockError`."""
    if not text.strip():
        return None
    try:
        rec = json.loads(text)
    except ValueError:
        rec = None
    if (not isinstance(rec, dict) or isinstance(rec.get("pid"), bool) or not isinstance(rec.get("pid"), int)
            or rec["pid"] <= 0 or not isinstance(rec.get("host"), str)):
        raise LockError(f"lock file {path!r} has unexpected content {text[:80]!r}; {_fix(path)}")
    return rec


class Lock:
    """An acquired lock (see the module docstring); use :func:`hold`."""

    def __init__(self, path: str, what: str):
        self.path, self.what = path, what
        self.fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.took_over: dict[str, Any] | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise LockError(f"lock file {self.path!r} is a directory; {_fix(self.path)}") from None
        except OSError as exc:
            raise LockError(f"cannot open the lock file {self.path!r}: {exc.strerror}"
                            " (is the directory writable?)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            text = _read_fd(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockError(f"cannot lock {self.path!r}: {exc.strerror}") from None
            try:
                rec = parse_record(self.path, text) or {}
            except LockError:
                rec = {}  # the live holder is writing its record right now
            raise AlreadyRunning(f"{self.what} is locked by pid {rec.get('pid', '?')} on {rec.get('host', '?')}"
                                 f" since {rec.get('since', '?')} ({self.path})") from None
        try:
            rec = parse_record(self.path, _read_fd(fd))
            if rec is not None and rec["host"] != socket.gethostname():
                age = time.time() - os.fstat(fd).st_mtime
                if age < _setting("lock-expiry"):
                    raise AlreadyRunning(
                        f"{self.what} is locked by pid {rec['pid']} on host {rec['host']} (heartbeat {age:.0f}s ago;"
                        f" it expires after {_setting('lock-expiry'):.0f}s without one) ({self.path})")
            self.took_over = rec
            me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(_setting("lock-heartbeat")):
            with contextlib.suppress(OSError):
                os.utime(self.fd)  # type: ignore[arg-type]

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # drops the kernel lock
            self.fd = None


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 65536, 0).decode("utf-8", "replace")
    except OSError:
        return ""


@contextlib.contextmanager
def hold(path: str, what: str) -> Iterator[Lock]:
    """Hold the lock file ``path`` for the duration (``what`` names the locked thing in messages).

    Raises
    ------
    AlreadyRunning
        A live process holds it.
    LockError
        The lock file has odd content or cannot be used (the message names the fix).
    """
    lock = Lock(path, what)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def output_lock_path(out: str) -> str:
    """The lock file of an output: a hidden sibling ``.<name>.hvrt_dask-lock``."""
    head, name = os.path.split(out.rstrip(os.sep))
    return os.path.join(head, f".{name}.hvrt_dask-lock")
