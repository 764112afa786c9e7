"""Submitting tasks: to a distributed client with bounded futures in flight, or in this process."""

from __future__ import annotations

import time
from collections import deque


class Done:
    """A finished 'future' for the in-process executor."""

    def __init__(self, value=None, exc: BaseException | None = None):
        self._value, self._exc = value, exc

    def result(self):
        if self._exc is not None:
            raise self._exc
        return self._value


class Executor:
    """Submit tasks to a distributed client, or run them in this process (``client=None``).

    ``resources`` (e.g. ``{"GPU": 1}``) is attached to tasks submitted with ``gpu=True``.
    """

    def __init__(self, client, resources: dict | None):
        self.client, self.resources = client, resources

    def submit(self, fn, *args, gpu: bool = False, key: str | None = None):
        if self.client is None:
            try:
                return Done(fn(*[a.result() if isinstance(a, Done) else a for a in args]))
            except Exception as exc:  # surfaced by result(), like a distributed future
                return Done(exc=exc)
        kw = {"pure": False}
        if key:
            kw["key"] = f"{key}-{time.time_ns()}"
        if gpu and self.resources:
            kw["resources"] = self.resources
        return self.client.submit(fn, *args, **kw)

    def run_bounded(self, items, make, limit: int, on_done) -> None:
        """Submit ``make(item)`` for every item, at most ``limit`` at a time; ``on_done(item, fut)``
        in completion order (a failed task raises here and cancels the rest)."""
        if self.client is None:
            for it in items:
                fut = make(it)
                fut.result()
                on_done(it, fut)
            return
        from distributed import as_completed

        queue = deque(items)
        owner = {}
        ac = as_completed()

        def add():
            it = queue.popleft()
            fut = make(it)
            owner[fut.key] = it
            ac.add(fut)

        for _ in range(min(limit, len(queue))):
            add()
        try:
            for fut in ac:
                it = owner.pop(fut.key)
                if fut.status == "error":
                    fut.result()  # raises the task's exception
                on_done(it, fut)
                if queue:
                    add()
        except BaseException:
            for f in list(ac.futures):
                f.cancel()
            raise


def gpu_resources(client) -> dict | None:
    """``{"GPU": 1}`` when any worker advertises a GPU resource (tasks are then routed there)."""
    if client is None:
        return None
    if any((w.get("resources") or {}).get("GPU", 0) >= 1 for w in scheduler_workers(client).values()):
        return {"GPU": 1}
    return None


def scheduler_workers(client) -> dict:
    """The scheduler's workers (all of them, on versions that truncate the listing)."""
    import inspect

    try:
        many = "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        many = False
    return client.scheduler_info(n_workers=-1)["workers"] if many else client.scheduler_info()["workers"]
