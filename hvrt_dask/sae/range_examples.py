"""Examples across the activation range: a uniform sample per (feature, activation bin), merged exactly.

Auto-interpretation and feature pages need examples from the whole activation range, not only
the top. For every feature ``f`` and every bin ``b`` of the statistics' fixed histogram bins
(:func:`hvrt_dask.sae.stats.histogram_edges`; bin 0 is ``(0, edge[0]]``, bin ``i`` is
``(edge[i-1], edge[i]]``, the last is ``(edge[-1], inf)``), the partial keeps the ``m`` samples
with the **smallest keyed hash** ``h(seed, f, sample)`` among the samples whose maximum
activation of ``f`` (over valid tokens, as in :mod:`hvrt_dask.sae.topk`) falls in ``b``.

Why a keyed hash: the ``m`` smallest hashes of a set are a uniform sample of it without
replacement, and "the ``m`` smallest under a total order" is associative and commutative, so
:func:`merge` gives bit-identical results for any chunking, fan-in, feature block size, worker
count, merge order or resume. The total order is ``(hash ascending, sample ascending)`` (the
sample index breaks a 64-bit collision), and empty slots sort last.

The hash is SplitMix64's finalizer (``mix``) applied twice::

    key  = SeedSequence(seed, spawn_key=(crc32("range-examples"),)).generate_state(1, uint64)[0]
    h    = mix(mix(key XOR feature) XOR sample)          (all uint64, wrapping)

so it depends on the seed, the global feature index and the global sample index only — never
on chunk or block positions.

A partial is four ``[d_block, n_bins, m]`` arrays:

=====================  ========  =====================================================
``range_hash``         uint64    the keyed hash; ``EMPTY_HASH`` (2**64 - 1) when empty
``range_sample``       int64     global sample index; -1 when empty
``range_value``        float32   the sample's max activation of the feature; NaN when empty
``range_position``     int32     first position of that max in the sample; -1 when empty
=====================  ========  =====================================================

Slots of a bin are in the total order (so the first ``j < m`` slots are the sample of size
``j``). Memory: ``24 * d_block * n_bins * m`` bytes per partial (31 MB for 4,096 features,
64 bins, ``m = 5``).

Output (format ``hvrt_dask.sae_features/3``, :mod:`hvrt_dask.sae.output`): one row per live
slot along the dimension ``range_example`` — ``range_feature``, ``range_bin``, ``range_slot``,
``range_sample``, ``range_value``, ``range_position``, ``range_window_tokens`` and
``range_window_acts`` (``[range_example, window]``) — sorted by (feature, bin, slot), with
``range_start`` / ``range_count`` per feature. The feature browser shows "not available" when
they are absent; :func:`hvrt_dask.sae.output.dense_range_examples` gives the dense
``(feature, bin, range_slot[, window])`` view.

Wiring (one pass with the top-k): per task (sample chunk x feature block) call
:func:`chunk_partial` on the same per-sample maxima / first argmax the top-k uses, with
``feature_offset`` = the block's first feature; merge the block's partials in its tree with
:func:`merge`; the root's live ``(feature, range_sample, range_position)`` triples get windows
exactly like top-k examples; :func:`finalize` gives the per-example values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hvrt_dask._seeding import seed_sequence

KEYS = ("range_hash", "range_sample", "range_value", "range_position")
#: The dense view's variables (:func:`hvrt_dask.sae.output.dense_range_examples`).
OUTPUT_VARS = ("range_sample", "range_value", "range_position", "range_window_tokens", "range_window_acts")
SLOT_DIM = "range_slot"
EMPTY_HASH = np.uint64(2**64 - 1)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def hash_key(seed: int) -> np.uint64:
    """The 64-bit key of ``seed`` (from :class:`numpy.random.SeedSequence`)."""
    return np.uint64(seed_sequence(int(seed), "range-examples").generate_state(1, np.uint64)[0])


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def keyed_hash(seed: int, features: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """``h(seed, feature, sample)`` for broadcastable non-negative integer arrays (uint64)."""
    f = np.asarray(features, np.int64).astype(np.uint64)
    s = np.asarray(samples, np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        return _mix(_mix(np.bitwise_xor(f, hash_key(seed))) ^ s)


def empty(d_block: int, n_bins: int, m: int) -> dict[str, np.ndarray]:
    """A partial with no examples."""
    shape = (d_block, n_bins, m)
    return {
        "range_hash": np.full(shape, EMPTY_HASH, np.uint64),
        "range_sample": np.full(shape, -1, np.int64),
        "range_value": np.full(shape, np.nan, np.float32),
        "range_position": np.full(shape, -1, np.int32),
    }


def bins_of(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram bin of positive float32 ``values`` (same rule as the statistics' ``bucketize``)."""
    return np.searchsorted(np.asarray(edges, np.float32), np.asarray(values, np.float32), side="left")


def chunk_partial(
    sample_max: np.ndarray,
    sample_argmax: np.ndarray,
    sample_ids: np.ndarray,
    edges: np.ndarray,
    m: int,
    seed: int,
    feature_offset: int = 0,
) -> dict[str, np.ndarray]:
    """The partial of one (sample chunk, feature block).

    Parameters
    ----------
    sample_max : numpy.ndarray
        ``[S, d_block]`` float32, each sample's max activation of each feature of the block
        (over valid tokens; ``<= 0`` means inactive and is never an example).
    sample_argmax : numpy.ndarray
        ``[S, d_block]`` int, first position of that max.
    sample_ids : numpy.ndarray
        ``[S]`` global sample indices (distinct).
    edges : numpy.ndarray
        The statistics' inner histogram edges (float32, ``n_bins - 1`` of them).
    m : int
        Examples per (feature, bin).
    seed : int
        Keys the hash (the extraction's seed).
    feature_offset : int
        Global index of the block's first feature (the hash uses global indices).
    """
    return densify(chunk_partial_sparse(sample_max, sample_argmax, sample_ids, edges, m, seed, feature_offset))


def chunk_partial_sparse(sample_max: np.ndarray, sample_argmax: np.ndarray, sample_ids: np.ndarray,
                         edges: np.ndarray, m: int, seed: int, feature_offset: int = 0) -> dict[str, np.ndarray]:
    """:func:`chunk_partial` in the sparse form (:func:`sparsify`): only the live slots.

    Extraction works on this form: its cost follows the examples, not ``d_block x n_bins x m``.
    """
    m = _check_m(m)
    s, d_block = sample_max.shape
    n_bins = len(edges) + 1
    si, fi = np.nonzero(sample_max > 0)
    ids = np.asarray(sample_ids, np.int64)[si]
    vals = np.asarray(sample_max[si, fi], np.float32)
    group = fi.astype(np.int64) * n_bins + bins_of(vals, edges)
    h = keyed_hash(seed, fi.astype(np.int64) + int(feature_offset), ids)
    live = {"range_hash": h, "range_sample": ids, "range_value": vals,
            "range_position": np.asarray(sample_argmax[si, fi], np.int32)}
    return _select(group, live, (d_block, n_bins, m))


def _select(group: np.ndarray, live: dict[str, np.ndarray], shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Per (feature, bin) ``group``, the ``m`` smallest ``(hash, sample)`` of the candidates
    ``live`` (flat arrays), in the sparse form with slots in the total order."""
    m = shape[2]
    order = np.lexsort((live["range_sample"], live["range_hash"], group))  # group asc, then (hash, sample) asc
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if g.size else np.zeros(0, np.int64)
    rank = np.arange(g.size) - np.repeat(starts, np.diff(np.r_[starts, g.size]))
    keep = rank < m
    o = order[keep]
    out = {SPARSE_SHAPE: np.array(shape, np.int64), SPARSE_INDEX: g[keep] * m + rank[keep]}
    out.update({k: live[k][o] for k in KEYS})
    return out


#: Keys of the sparse form besides :data:`KEYS`: the dense shape and the flat live slots (ascending).
SPARSE_SHAPE, SPARSE_INDEX = "range.shape", "range.index"


def sparsify(partial: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sparse form of a dense partial: ``range.shape``, ``range.index`` (flat indices of the
    live slots into ``[d_block, n_bins, m]``, ascending) and the live values of :data:`KEYS`.
    A sparse partial passes through."""
    if SPARSE_INDEX in partial:
        return partial
    live = np.flatnonzero(partial["range_sample"].reshape(-1) >= 0)
    out = {SPARSE_SHAPE: np.array(partial["range_sample"].shape, np.int64), SPARSE_INDEX: live}
    out.update({k: partial[k].reshape(-1)[live] for k in KEYS})
    return out


def densify(partial: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense ``[d_block, n_bins, m]`` arrays of a sparse partial (a dense one passes through)."""
    if SPARSE_INDEX not in partial:
        return {k: partial[k] for k in KEYS}
    full = empty(*(int(x) for x in partial[SPARSE_SHAPE]))
    for k in KEYS:
        full[k].reshape(-1)[partial[SPARSE_INDEX]] = partial[k]
    return full


def merge(partials: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Exact merge of partials of the same feature block over disjoint samples.

    Keeps, per (feature, bin), the ``m`` smallest ``(hash, sample)`` of all partials. The
    result does not depend on the grouping or order of the partials (associative and
    commutative), so any tree gives bit-identical arrays. Dense partials give a dense
    result; sparse ones (:func:`sparsify`) a sparse one.
    """
    if not partials:
        raise ValueError("merge needs at least one partial")
    dense = SPARSE_INDEX not in partials[0]
    return densify(merge_sparse(partials)) if dense else merge_sparse(partials)


def merge_sparse(partials: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """:func:`merge` of partials in any form, returned in the sparse form."""
    if not partials:
        raise ValueError("merge needs at least one partial")
    sp = [sparsify(p) for p in partials]
    shape = tuple(int(x) for x in sp[0][SPARSE_SHAPE])
    for i, p in enumerate(sp):
        if tuple(int(x) for x in p[SPARSE_SHAPE]) != shape:
            raise ValueError(f"partial {i} has shape {tuple(int(x) for x in p[SPARSE_SHAPE])}, expected {shape} "
                             "(same feature block, bins, m)")
    m = shape[2]
    group = np.concatenate([p[SPARSE_INDEX] // m for p in sp])
    return _select(group, {k: np.concatenate([p[k] for p in sp]) for k in KEYS}, shape)


def finalize(partial: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The output variables (``range_sample``, ``range_value``, ``range_position``; the hash is dropped)."""
    return {k: partial[k] for k in KEYS if k != "range_hash"}


def _check_m(m) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"range examples per bin (hvrt.extract.range-examples) must be an integer >= 1, got {m!r}")
    return int(m)
