"""The partition table of one partition-aligned chunk, shared by generation and selection.

After ``fit``, rows are grouped so that every partition lies wholly inside one chunk
(several small partitions may share a chunk; a partition larger than the target chunk
size gets a chunk of its own). Inside a chunk, a partition's rows are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkPartitions:
    """Partitions of one chunk, in chunk order.

    Attributes
    ----------
    ids : ndarray of int64, shape (P,)
        Global partition ids (tree leaf ids); also the keys of the random streams.
    starts : ndarray of int64, shape (P,)
        Offset of each partition's first row inside the chunk.
    sizes : ndarray of int64, shape (P,)
        Rows per partition; ``starts[i] + sizes[i] == starts[i + 1]``.
    """

    ids: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray

    @property
    def n_parts(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.sizes.sum())

    def labels(self) -> np.ndarray:
        """Chunk-local partition index (0..P-1) of every row."""
        return np.repeat(np.arange(self.n_parts), self.sizes)

    def slices(self) -> list[slice]:
        return [slice(int(s), int(s + n)) for s, n in zip(self.starts, self.sizes)]

    @classmethod
    def from_sizes(cls, ids: np.ndarray, sizes: np.ndarray) -> "ChunkPartitions":
        sizes = np.asarray(sizes, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls(np.asarray(ids, dtype=np.int64), starts, sizes)
