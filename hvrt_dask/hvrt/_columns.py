"""Column kinds: detection at ``fit``, the z-space layout, and exact decoding of synthetic values.

Every column gets one kind:

``constant``
    One distinct value. Kept out of the tree and z-space; every synthetic row repeats it.
``categorical``
    Unordered labels (pandas ``category``/``bool``/``string``/``object`` columns, or columns
    marked so). Coded for the tree; a synthetic row takes the whole categorical tuple of its
    base row, so labels round-trip exactly.
``discrete``
    Numeric with at most ``hvrt.types.max-discrete`` distinct values. Generated in z-space
    like a continuous column, then snapped to the nearest *observed* value (any float,
    negative or not), so only observed values come out.
``integer``
    Integer dtype, or a float column whose values are all integral. Generated continuously,
    then rounded; integer dtypes are restored on output.
``continuous``
    Everything else.

Decimals (the resolution a column was recorded at): the smallest ``p`` such that every value
of the column is the float nearest to a number with ``p`` decimal digits, i.e. equals
``numpy.round(x, p)`` in the column's own dtype (an exact test: a value read from ``p``-decimal
text rounds back to itself). ``integer`` is the ``p = 0`` case, and the decoder rounds both
with ``numpy.round(x, p)``. With ``hvrt.types.max-decimals`` set (default null: off), an
auto-typed ``continuous`` column with ``1 <= p <= max-decimals`` keeps its resolution: its
synthetic values are rounded to ``p`` decimals instead of carrying digits the real table never
has. Off by default because on a small table recorded on a coarse grid rounding turns
near-copies into exact copies of real rows (docs/hvrt.md, "Recorded decimals"). A grid
``p >= 1`` is only recognised while ``max|x| * 10**p`` stays below the dtype's exact-integer
range (``2**52`` for float64, ``2**23`` for float32): beyond it every float is trivially "on
the grid". An explicit ``"continuous"`` is never rounded.

Ranges and atoms (by default): synthetic values of the generated kinds are clipped to the
column's observed ``[min, max]``; and a value holding at least ``hvrt.types.atom-share`` of a
``continuous``/``integer`` column (zeros of zero-inflated data, a cap) is an *atom*: a synthetic
row whose base row holds an atom keeps it, the other rows are clipped to the range of the
non-atom values and never take an atom value (a rounded or snapped value that lands on one
moves to the nearest non-atom grid value or level). Budgets follow partition sizes, so the
atom share of the output matches the real share up to sampling noise.

Detection reads a bounded, strided head of the tree sample first and touches the full column
only for candidates (few distinct values), so typing costs O(d · 2048) on continuous data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hvrt_dask import config

KINDS = ("continuous", "integer", "discrete", "categorical", "constant")
#: Kinds a generation strategy sees in its z-space block.
GENERATED = ("continuous", "integer", "discrete")
_HEAD_ROWS = 2048


def check_feature_types(feature_types: Sequence[str] | str | None, d: int) -> list[str]:
    """One entry per column: a kind of :data:`KINDS` or ``"auto"`` (``None``/``"auto"``: all auto).

    Raises
    ------
    TypeError
        A plain string other than ``"auto"``.
    ValueError
        Wrong length or unknown kind (naming the entry).
    """
    if feature_types is None or (isinstance(feature_types, str) and feature_types == "auto"):
        return ["auto"] * d
    if isinstance(feature_types, str):
        raise TypeError(f"feature_types must be 'auto' or a list with one entry per column, got {feature_types!r}")
    ft = list(feature_types)
    if len(ft) != d:
        raise ValueError(f"feature_types has {len(ft)} entries but X has {d} columns")
    for j, t in enumerate(ft):
        if t not in KINDS and t != "auto":
            raise ValueError(f"feature_types[{j}] = {t!r}; expected 'auto' or one of {KINDS}")
    return ft


def max_discrete() -> int:
    """``hvrt.types.max-discrete``: the most distinct values an auto-typed ``discrete`` column has."""
    v = config.get("types.max-discrete", 16)
    if isinstance(v, bool) or int(v) != v or int(v) < 2:
        raise ValueError(f"hvrt.types.max-discrete must be an integer >= 2, got {v!r}")
    return int(v)


def max_decimals() -> int | None:
    """``hvrt.types.max-decimals``: the finest grid (``10**-p``) an auto ``continuous`` column keeps (None: none)."""
    v = config.get("types.max-decimals", None)
    if v is None:
        return None
    if isinstance(v, bool) or int(v) != v or not 0 <= int(v) <= 15:
        raise ValueError(f"hvrt.types.max-decimals must be an integer in [0, 15] or null, got {v!r}")
    return int(v)


def atom_threshold() -> float | None:
    """``hvrt.types.atom-share``: the share that makes a value an atom (None: no atoms)."""
    v = config.get("types.atom-share", 0.05)
    if v is None:
        return None
    v = float(v)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"hvrt.types.atom-share must be in (0, 1] or null, got {v!r}")
    return v


def _head(col: np.ndarray) -> np.ndarray:
    step = max(1, len(col) // _HEAD_ROWS)
    return col[::step][:_HEAD_ROWS]


@dataclass(frozen=True)
class ColumnTypes:
    """Resolved per-column kinds and what decoding needs (a few numbers per column).

    Attributes
    ----------
    kinds : tuple of str
        One of :data:`KINDS` per column.
    lo, hi : ndarray
        Observed per-column minimum and maximum (raw codes for coded categoricals).
    levels : dict of int to ndarray
        Sorted observed values of each ``discrete`` column.
    atoms, shares : dict of int to ndarray
        Atom values of ``continuous``/``integer`` columns and their shares in the fit data
        (exact when ``n`` ≤ the tree sample size, else measured on the sample).
    free_lo, free_hi : ndarray
        Range of the non-atom values (``lo``/``hi`` for columns without atoms).
    decimals : dict of int to int
        Decimals synthetic values are rounded to: 0 for ``integer`` columns, ``p >= 1`` for
        auto-typed ``continuous`` columns recorded on a ``10**-p`` grid.
    """

    kinds: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray
    levels: dict[int, np.ndarray] = field(default_factory=dict)
    atoms: dict[int, np.ndarray] = field(default_factory=dict)
    shares: dict[int, np.ndarray] = field(default_factory=dict)
    free_lo: np.ndarray | None = None
    free_hi: np.ndarray | None = None
    decimals: dict[int, int] = field(default_factory=dict)

    def mask(self, *kinds: str) -> np.ndarray:
        return np.array([k in kinds for k in self.kinds], dtype=bool)

    @property
    def generated(self) -> np.ndarray:
        """Indices of the columns in the z-space continuous block (generated by strategies)."""
        return np.flatnonzero(self.mask(*GENERATED))

    @property
    def categorical(self) -> np.ndarray:
        return np.flatnonzero(self.mask("categorical"))

    @property
    def constant(self) -> np.ndarray:
        return np.flatnonzero(self.mask("constant"))

    def decoder(self, clip: bool = True) -> Decoder:
        """The per-block decoder used by ``expand`` (picklable, a few arrays)."""
        gen = self.generated
        atom_cols = np.array(sorted(self.atoms), dtype=np.int64)
        return Decoder(
            generated=gen,
            categorical=self.categorical,
            constant=self.constant,
            constant_values=self.lo[self.constant],
            decimals=tuple((p, np.array(sorted(j for j, q in self.decimals.items() if q == p), dtype=np.int64))
                           for p in sorted(set(self.decimals.values()))),
            discrete=tuple((j, self.levels[j]) for j in sorted(self.levels)),
            atoms=tuple((int(j), self.atoms[j]) for j in atom_cols),
            lo=self.lo[gen] if clip else None,
            hi=self.hi[gen] if clip else None,
            free_lo=self.free_lo[atom_cols] if clip and len(atom_cols) else None,
            free_hi=self.free_hi[atom_cols] if clip and len(atom_cols) else None,
        )


@dataclass(frozen=True)
class Decoder:
    """Turns generated rows (original units) plus their base rows into exact column values."""

    generated: np.ndarray
    categorical: np.ndarray
    constant: np.ndarray
    constant_values: np.ndarray
    decimals: tuple[tuple[int, np.ndarray], ...]
    discrete: tuple[tuple[int, np.ndarray], ...]
    atoms: tuple[tuple[int, np.ndarray], ...]
    lo: np.ndarray | None
    hi: np.ndarray | None
    free_lo: np.ndarray | None
    free_hi: np.ndarray | None

    @property
    def needs_base(self) -> bool:
        """Whether decoding reads the base rows (categorical tuples or atoms)."""
        return bool(len(self.categorical) or self.atoms)

    def __call__(self, out: np.ndarray, base: np.ndarray | None) -> np.ndarray:
        """Decode ``out`` (m, d) in place; ``base`` holds the m base rows (raw) when needed."""
        gen = self.generated
        if self.lo is not None and len(gen):
            if len(gen) == out.shape[1]:
                per_column(np.minimum, out, self.hi)
                per_column(np.maximum, out, self.lo)
            else:
                out[:, gen] = np.clip(out[:, gen], self.lo, self.hi)
        # A non-atom row never takes an atom value (atoms keep their share): the value it
        # rounds or snaps to is replaced by the nearest non-atom grid value / level.
        free_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k, (j, values) in enumerate(self.atoms):
            keep = np.isin(base[:, j], values)
            if self.free_lo is not None:
                np.clip(out[:, j], self.free_lo[k], self.free_hi[k], out=out[:, j])
            out[keep, j] = base[keep, j]
            free_rows[j] = (~keep, values)
        grid = {int(j): p for p, cols in self.decimals for j in cols}
        raw = {j: out[:, j].copy() for j in free_rows if j in grid}
        for p, cols in self.decimals:  # p = 0: integers (np.round(x, 0) is np.rint)
            out[:, cols] = np.round(out[:, cols], p)
        for j, x in raw.items():
            rows, values = free_rows[j]
            out[rows, j] = off_atoms(out[rows, j], x[rows], values, grid[j])
        for j, levels in self.discrete:
            if j in free_rows:
                rows, values = free_rows[j]
                free_levels = levels[~np.isin(levels, values)]
                out[~rows, j] = snap(out[~rows, j], levels)
                out[rows, j] = snap(out[rows, j], free_levels if len(free_levels) else levels)
            else:
                out[:, j] = snap(out[:, j], levels)
        if len(self.categorical):
            out[:, self.categorical] = base[:, self.categorical]
        if len(self.constant):
            out[:, self.constant] = self.constant_values
        return out


_TILE = 1024


def per_column(ufunc: np.ufunc, a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``ufunc(a, v, out=a)`` with the per-column vector ``v``, on long inner loops.

    Broadcasting a length-d vector over rows gives numpy an inner loop of d elements; on a
    C-contiguous block the same elementwise result comes ~2× faster by viewing the block as
    rows of ``d·1024`` values against ``v`` tiled 1024 times (bit-identical: same operations).
    """
    if a.ndim != 2 or not a.flags.c_contiguous or a.shape[1] == 0:
        return ufunc(a, v, out=a)
    d = a.shape[1]
    tiled = np.tile(v, _TILE)
    flat = a.reshape(-1)
    m = (flat.size // tiled.size) * tiled.size
    if m:
        body = flat[:m].reshape(-1, tiled.size)
        ufunc(body, tiled, out=body)
    rest = flat[m:].reshape(-1, d)
    ufunc(rest, v, out=rest)
    return a


def off_atoms(x: np.ndarray, raw: np.ndarray, atoms: np.ndarray, p: int) -> np.ndarray:
    """Values of ``x`` (on the ``10**-p`` grid) that equal an atom moved to the nearest grid
    value that is not one; ties go to the side of ``raw`` (the value before rounding).

    A run of consecutive atoms is at most ``len(atoms)`` long, so ``len(atoms) + 1`` steps
    reach a free value on either side; with clipping, the free range's ends are non-atom
    observed values outside every such run, so the result stays inside it.
    """
    hit = np.isin(x, atoms)
    if not hit.any():
        return x
    scale = 10.0**p
    u = np.rint(x[hit] * scale)
    side = np.where(raw[hit] * scale >= u, 1.0, -1.0)
    blocked = np.rint(np.asarray(atoms) * scale)
    todo = np.ones(len(u), dtype=bool)
    res = u.copy()
    for k in range(1, len(blocked) + 2):
        for cand in (u + side * k, u - side * k):
            ok = todo & ~np.isin(cand, blocked)
            res[ok], todo[ok] = cand[ok], False
    x = x.copy()
    x[hit] = res / scale  # the float nearest the decimal, as numpy.round gives it
    return x


def snap(x: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Each value of ``x`` replaced by the nearest of the sorted ``levels`` (ties go down)."""
    if len(levels) == 1:
        return np.full_like(x, levels[0])
    pos = np.clip(np.searchsorted(levels, x), 1, len(levels) - 1)
    left, right = levels[pos - 1], levels[pos]
    return np.where(x - left <= right - x, left, right)


def resolve(
    specified: Sequence[str],
    sample: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    decimals: np.ndarray,
    integer_dtype: np.ndarray,
    unique_of: Callable[[list[int]], list[np.ndarray]],
) -> ColumnTypes:
    """Resolve every column's kind, discrete levels and atoms.

    Parameters
    ----------
    specified : list of str
        ``"auto"`` or an explicit kind per column (explicit kinds win, except that a column
        with one distinct value is always ``constant``).
    sample : ndarray (m, d)
        The tree sample (all rows when n is at most the sample size), raw codes.
    lo, hi : ndarray (d,)
        Exact per-column min / max over all rows.
    decimals : ndarray of int (d,)
        :func:`decimals_of` over all rows (``0``: integral; ``OFF_GRID``: no grid).
    integer_dtype : ndarray of bool (d,)
        Whether the input dtype is an integer (or bool) dtype.
    unique_of : callable
        ``unique_of([j, ...])`` → the exact sorted distinct values of those columns over all
        rows (called only for columns with few distinct values).
    """
    d = len(specified)
    k_max = max_discrete()
    thr = atom_threshold()
    kinds = list(specified)
    candidates = []
    for j in range(d):
        if lo[j] == hi[j]:
            kinds[j] = "constant"
        elif kinds[j] == "discrete" or (
            kinds[j] == "auto" and len(np.unique(_head(sample[:, j]))) <= k_max
        ):
            candidates.append(j)
    levels: dict[int, np.ndarray] = {}
    for j, u in zip(candidates, unique_of(candidates)):
        if kinds[j] == "discrete" or len(u) <= k_max:
            kinds[j], levels[j] = "discrete", np.asarray(u, dtype=np.float64)
    p_max = max_decimals()
    rounded: dict[int, int] = {}
    for j in range(d):
        auto = kinds[j] == "auto"
        if auto:
            kinds[j] = "integer" if (integer_dtype[j] or decimals[j] == 0) else "continuous"
        p = int(decimals[j])
        if kinds[j] == "integer":
            rounded[j] = 0
        elif auto and kinds[j] == "continuous" and p_max is not None and 1 <= p <= p_max:
            rounded[j] = p
    atoms, shares = {}, {}
    free_lo, free_hi = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
    if thr is not None:
        for j in range(d):
            if kinds[j] not in ("continuous", "integer", "discrete"):
                continue
            col = sample[:, j]
            vals, counts = np.unique(_head(col), return_counts=True)
            cand = vals[counts >= 0.5 * thr * min(len(col), _HEAD_ROWS)]
            if not len(cand):
                continue
            share = np.array([np.count_nonzero(col == v) for v in cand]) / len(col)
            keep = share >= thr
            if keep.any():
                atoms[j], shares[j] = cand[keep], share[keep]
                free = col[~np.isin(col, cand[keep])]
                if len(free):
                    free_lo[j], free_hi[j] = free.min(), free.max()
    return ColumnTypes(tuple(kinds), np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64),
                       levels, atoms, shares, free_lo, free_hi, rounded)


#: Rows of a block that screen a column before the whole column is checked.
_SCREEN_ROWS = 64
#: ``decimals_of`` result for a column on no grid up to the limit.
OFF_GRID = 127


def decimals_of(block: np.ndarray, max_p: int, dtypes: Sequence[np.dtype]) -> np.ndarray:
    """Per column, the smallest ``p`` in ``0..max_p`` with ``x == numpy.round(x, p)`` for every value.

    ``OFF_GRID`` where there is none. Each column is tested in its own (floating) dtype, so a
    float32 column read from ``p``-decimal text is recognised. ``p = 0`` is exact integrality,
    whatever the magnitude; ``p >= 1`` counts only while ``max|x| * 10**p`` is below the
    dtype's exact-integer range (``2**52`` for float64, ``2**23`` for float32), where a float
    still resolves the grid (beyond it every float is trivially on it). Returns shape
    ``(1, d)`` (int8) so that the blocks of a dask array reduce with ``max``: grids nest (``p``
    implies ``p + 1``) and the magnitude test of the whole column fails in its largest block.
    """
    d = block.shape[1]
    out = np.full((1, d), OFF_GRID, dtype=np.int8)
    left = list(range(d))
    big: dict[int, float] = {}  # max|x|, computed only for columns that pass a screen at p >= 1
    with np.errstate(over="ignore", invalid="ignore"):
        for p in range(max_p + 1):
            still = []
            for j in left:
                dt = np.dtype(dtypes[j])
                narrow = np.issubdtype(dt, np.floating) and dt.itemsize < 8
                head = block[:_SCREEN_ROWS, j].astype(dt if narrow else np.float64)
                ok = np.array_equal(head, np.round(head, p))  # cheap screen: most continuous columns fail here
                if ok and p:
                    if j not in big:
                        big[j] = float(np.max(np.abs(block[:, j]), initial=0.0))
                    if big[j] * 10.0**p >= 2.0 ** (np.finfo(dt).nmant if narrow else 52):
                        continue  # finer grids are even less meaningful: off grid
                col = block[:, j].astype(dt) if ok and narrow else block[:, j]
                if ok and np.array_equal(col, np.round(col, p)):
                    out[0, j] = p
                else:
                    still.append(j)
            left = still
    return out


def check_z_finite(columns: Sequence[str], zcols: np.ndarray, center: np.ndarray, scale: np.ndarray,
                   raw_extremes: np.ndarray) -> None:
    """Refuse columns whose standardised (z-space) values overflow to inf/NaN.

    ``raw_extremes`` holds the z-space-ordered raw values of the per-column min and max rows.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        z = (raw_extremes - center) / scale
    bad = ~(np.isfinite(center) & np.isfinite(scale) & (scale > 0) & np.isfinite(z).all(axis=0))
    if bad.any():
        names = ", ".join(repr(columns[int(zcols[k])]) for k in np.flatnonzero(bad))
        raise ValueError(
            f"column(s) {names} hold values so large that their standardised (z-space) values "
            "overflow; rescale them (e.g. divide by a power of ten) before fitting"
        )
