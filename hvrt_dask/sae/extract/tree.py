"""The one tree reduction of extraction: fixed shape, fed leaf by leaf in any order.

Leaves are indexed ``0..n-1``; level ``L+1`` node ``j`` combines level-``L`` nodes
``j*split_every .. (j+1)*split_every - 1`` (a lone child passes through). The shape depends
only on ``n`` and ``split_every``, never on arrival order, so floating-point sums inside a
combine are reproducible run to run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class StreamingTree:
    """A fixed-shape tree reduction fed leaf by leaf; ``make_node(level, idx, kids)`` builds a
    node as soon as its children exist (e.g. submits a combine task)."""

    def __init__(self, n: int, split_every: int, make_node: Callable[[int, int, list], Any]):
        if split_every < 2:
            raise ValueError(f"split_every must be >= 2, got {split_every}")
        if n < 1:
            raise ValueError("nothing to reduce")
        self.se, self.make_node = split_every, make_node
        self.sizes = [n]
        while self.sizes[-1] > 1:
            self.sizes.append(-(-self.sizes[-1] // split_every))
        self.slots: list[dict[int, Any]] = [dict() for _ in self.sizes]

    def put(self, level: int, idx: int, item) -> None:
        self.slots[level][idx] = item
        if level == len(self.sizes) - 1:
            return
        parent = idx // self.se
        lo, hi = parent * self.se, min((parent + 1) * self.se, self.sizes[level])
        if all(i in self.slots[level] for i in range(lo, hi)):
            kids = [self.slots[level].pop(i) for i in range(lo, hi)]
            node = kids[0] if len(kids) == 1 else self.make_node(level + 1, parent, kids)
            self.put(level + 1, parent, node)

    @property
    def done(self) -> bool:
        return 0 in self.slots[-1]

    def root(self):
        """The root item (a value, a handle or a future)."""
        return self.slots[-1][0]


def tree_reduce(items: Sequence[T], combine_fn: Callable[[list[T]], T], split_every: int = 8) -> T:
    """Reduce ``items`` synchronously with :class:`StreamingTree`'s shape."""
    tree = StreamingTree(len(items), split_every, lambda level, idx, kids: combine_fn(kids))
    for i, it in enumerate(items):
        tree.put(0, i, it)
    return tree.root()
