"""The partition tree: auto-tune formulas (reference §2.5), fit, leaf assignment.

For ``n <= hvrt.tree.sample-size`` the tree is fitted on every row, exactly as the peer
does, so partitions match it. Above that, it is fitted on a seeded uniform row sample of
that size with ``min_samples_leaf`` scaled by ``sample / n`` so the leaf count (and leaf
sizes, in rows of the full data) stay what the formulas give for ``n``. Leaf assignment
then runs over every row with ``map_blocks`` — the data never has to fit in one process.

Why a sample rather than a distributed histogram tree: the best-first CART on 250k rows
takes a few seconds and its leaves hold ≈1.3·√n rows each, so the sampling error of a
split threshold is far below a leaf's width; a histogram tree would need one full pass
over the data per tree level (hundreds of passes for ~800 leaves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.tree import DecisionTreeRegressor

from hvrt_dask import config


@dataclass(frozen=True)
class TreeParams:
    """Resolved tree hyper-parameters (for the full data, and as used on the sample)."""

    min_samples_leaf: int
    max_leaf_nodes: int
    max_depth: int | None
    fit_min_samples_leaf: int
    sample_size: int


def resolve_tree_params(
    n: int,
    d: int,
    n_partitions: int | None = None,
    min_samples_leaf: int | None = None,
    max_depth: int | None = None,
    auto_tune: bool = True,
    sample_size: int | None = None,
) -> TreeParams:
    """Auto-tune ``min_samples_leaf`` / ``max_leaf_nodes`` (expansion mode, reference §2.5).

    Parameters
    ----------
    n, d : int
        Rows and ``X_z`` columns of the *full* data.
    sample_size : int, optional
        Rows the tree is actually fitted on (``min(n, hvrt.tree.sample-size)`` by default).
    """
    if auto_tune:
        msl = int(min_samples_leaf) if min_samples_leaf is not None else max(d + 2, math.isqrt(n))
        mln = (
            int(n_partitions)
            if n_partitions is not None
            else max(30, min(1500, (3 * n) // (2 * msl)))
        )
    else:
        msl = int(min_samples_leaf) if min_samples_leaf is not None else max(5, n // 1000)
        mln = int(n_partitions) if n_partitions is not None else max(2, n // 100)
    mln = max(2, mln)  # a tree with one leaf is never what the user wants
    s = n if sample_size is None else int(min(n, sample_size))
    fit_msl = msl if s >= n else max(1, int(round(msl * s / n)))
    return TreeParams(msl, mln, max_depth, fit_msl, s)


def default_sample_size() -> int:
    return int(config.get("tree.sample-size", 200_000))


def sklearn_seed(seed: int) -> int:
    return int(seed) % (2**32)


def fit_tree(
    Z: np.ndarray,
    t: np.ndarray,
    params: TreeParams,
    criterion: str,
    splitter: str,
    seed: int,
) -> DecisionTreeRegressor:
    """Fit the CART partition tree on z-scored rows ``Z`` and target ``t``."""
    tree = DecisionTreeRegressor(
        criterion=criterion,
        splitter=splitter,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.fit_min_samples_leaf,
        max_depth=params.max_depth,
        random_state=sklearn_seed(seed),
    )
    tree.fit(Z, t)
    return tree


def leaf_ids(tree: DecisionTreeRegressor) -> np.ndarray:
    """Sorted node ids of the tree's leaves (the partition ids)."""
    t = tree.tree_
    return np.flatnonzero(t.children_left == -1).astype(np.int64)


def apply_block(Z: np.ndarray, tree: DecisionTreeRegressor) -> np.ndarray:
    """Leaf id of every row of one block (used with ``map_blocks``)."""
    if Z.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    return tree.apply(np.ascontiguousarray(Z, dtype=np.float32)).astype(np.int64)


def apply_tree(Z, tree: DecisionTreeRegressor):
    """Leaf ids for numpy or dask ``Z`` (dask: one ``map_blocks`` task per row chunk)."""
    import dask.array as da

    if isinstance(Z, da.Array):
        return Z.map_blocks(apply_block, tree, dtype=np.int64, drop_axis=1)
    return apply_block(Z, tree)


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted global row indices of the tree sample (seeded; independent of chunking)."""
    from hvrt_dask._seeding import generator

    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(generator(seed, "tree-sample").choice(n, size=size, replace=False)).astype(np.int64)
