"""Deterministic random streams.

Every random draw in the package comes from a :class:`numpy.random.SeedSequence` keyed by
``(seed, stage, call, partition-or-chunk id, ...)``. Keys are never derived from chunk
positions or worker identity, so results do not depend on chunking, worker count or
scheduler.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

KeyPart = int | str | np.integer


def _key_int(part: KeyPart) -> int:
    # Strings are hashed with CRC32 (stable across processes, unlike hash()).
    if isinstance(part, str):
        return zlib.crc32(part.encode("utf8"))
    value = int(part)
    if value < 0:
        raise ValueError(f"seed key parts must be non-negative, got {value}")
    return value


def seed_sequence(seed: int, *key: KeyPart) -> np.random.SeedSequence:
    """Return the ``SeedSequence`` for ``seed`` and the spawn key ``key``.

    Parameters
    ----------
    seed : int
        The user-level seed (entropy).
    *key : int or str
        Path below the seed, e.g. ``("expand", call_index, partition_id)``.
    """
    return np.random.SeedSequence(int(seed), spawn_key=tuple(_key_int(k) for k in key))


def generator(seed: int, *key: KeyPart) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` (PCG64) for ``seed`` and ``key``."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *key)))


def generators(seed: int, prefix: Sequence[KeyPart], ids: Sequence[int] | np.ndarray) -> list[np.random.Generator]:
    """Return one generator per id, keyed by ``(*prefix, id)``."""
    return [generator(seed, *prefix, int(i)) for i in ids]


def fresh_seed() -> int:
    """Draw a new 63-bit seed from OS entropy (used when ``random_state=None``)."""
    return int(np.random.SeedSequence().generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)
