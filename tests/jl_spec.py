"""Independent NumPy reference for the sparse JL projection stream, "projection spec v2".

Written only from docs/sparse_jl.md, sections "## The distribution" and "## The stream,
projection spec v2"; nothing here comes from seeddrop.ops.sparse_jl or seeddrop.stream.
The Philox4x32-10 block function is conftest's independent implementation (written from
the Random123 paper and checked there against its known-answer vectors).

Public functions:
    binomial_table(rho)                      -> the 64 thresholds C[1..64] (Python ints)
    np_cell_masks(seed, rows, cells, rho)    -> (mask, sigma, count) per cell (j, g)
    np_jl_signs(seed, k, d, density)         -> int8 [k, d] of +1 / -1 / 0
    np_jl_matrix(seed, k, d, density)        -> float64 [k, d] = signs * sqrt(1/(density*k))

Everything in the stream is integer arithmetic (the table C is exact rational arithmetic),
so these values are meant to be compared bit for bit with seeddrop's kernels.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from conftest import np_philox4x32_10

_U32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_MAX_CALLS = 9  # calls m = 0 ... 8 per cell


def _check_rho(rho) -> float:
    """'## The distribution': rho must lie in (0, 1] (ValueError), numbers only (TypeError)."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.integer, np.floating)):
        raise TypeError(f"density must be a number, got {type(rho).__name__}")
    rho = float(rho)
    if not (0.0 < rho <= 1.0):  # also rejects NaN
        raise ValueError(f"density must lie in (0, 1], got {rho!r}")
    return rho


def binomial_table(rho: float) -> list[int]:
    """The count thresholds of spec v2 ("**Count.**" in "## The stream, projection spec v2").

    Returns a list `T` of 64 Python ints with T[t - 1] = C[t] for t = 1 ... 64, where

        C[t] = floor(2**32 * F(t - 1) + 1/2),

    F the CDF of Binomial(64, rho), computed exactly from the float64 `rho` (as given) with
    `fractions.Fraction` and `math.comb`. (The spec defines no C[0]; index 0 of the list is
    C[1].) The table is nondecreasing; an entry may equal 2**32, which no 32-bit word reaches.
    The cell count is then n = #{t in 1..64 : w0 >= C[t]}.
    """
    p = Fraction(_check_rho(rho))
    q = 1 - p
    table = []
    cdf = Fraction(0)
    for t in range(1, 65):
        i = t - 1  # F(t - 1) = sum_{i <= t-1} P(X = i)
        cdf += math.comb(64, i) * p**i * q ** (64 - i)
        table.append(math.floor(cdf * (1 << 32) + Fraction(1, 2)))
    return table


def _cell_words(seed: int, rows: np.ndarray, cells: np.ndarray, m: int):
    """Words (w0, w1, w2, w3) of Philox call `m` of cells (rows[:, None], cells[None, :]).

    Spec v2 "**Philox calls.**": key (seed mod 2**32, (seed >> 32) mod 2**32), counter
    (q mod 2**32, q >> 32, 0, 0) with q = j * 2**30 + g * 2**4 + m."""
    seed = int(seed) % (1 << 64)
    key = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
    q = (rows[:, None] << np.uint64(30)) + (cells[None, :] << np.uint64(4)) + np.uint64(m)
    zero = np.zeros_like(q)
    return np_philox4x32_10((q & _U32, q >> _SHIFT32, zero, zero), key)


def _floyd_mask(count: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Spec v2 "**Positions (Floyd's algorithm).**", vectorized over cells.

    count: integer array (any shape) of n in 0 ... 64; draws: uint64 array of shape
    count.shape + (R,), draws[..., s] = draw_s (32-bit values), with R >= max r,
    r = min(n, 64 - n). Returns the uint64 mask of Z (|Z| = n):
        A = {}; for s = 0 ... r-1: i = 64 - r + s, t = floor(draw_s * (i + 1) / 2**32),
        add i if t in A else add t;  Z = A if n <= 32 else {0..63} minus A.
    """
    n = np.asarray(count, dtype=np.int64)
    draws = np.asarray(draws, dtype=np.uint64)
    if n.size and (n.min() < 0 or n.max() > 64):
        raise ValueError("counts must lie in 0 ... 64")
    r = np.minimum(n, 64 - n)
    rmax = int(r.max()) if r.size else 0
    if draws.shape[-1] < rmax:
        raise ValueError(f"need {rmax} draws per cell, got {draws.shape[-1]}")
    one = np.uint64(1)
    A = np.zeros(n.shape, dtype=np.uint64)
    for s in range(rmax):
        active = s < r
        i = (64 - r + s).astype(np.uint64)  # only meaningful where active (then i <= 63)
        t = (draws[..., s] * (i + one)) >> _SHIFT32  # < 2**38: exact in uint64
        t = np.minimum(t, np.uint64(63))  # inactive cells only (i may exceed 63 there)
        t_in_A = ((A >> t) & one) == one
        pos = np.where(t_in_A, i, t)
        pos = np.minimum(pos, np.uint64(63))  # inactive cells only
        A = np.where(active, A | (one << pos), A)
    return np.where(n > 32, A ^ _ALL_ONES, A)


def np_cell_masks(seed: int, rows, cells, rho):
    """Per-cell (mask, sigma, count) of spec v2 ("## The stream, projection spec v2").

    rows: 1-D ints j (0 <= j < 2**31); cells: 1-D ints g (0 <= g < 2**26); broadcast as
    rows[:, None] x cells[None, :]. seed: any int (taken mod 2**64, e.g. in [-2**63, 2**64)).
    Returns
        mask  uint64 [len(rows), len(cells)]: bit b set iff column 64 g + b of row j is nonzero,
        sigma uint64: w2 * 2**32 + w1 of call 0 (bit b = 1: column b negative),
        count int64: n = #{t : w0 >= C[t]} (w0 of call 0), equal to popcount(mask).
    Draw s of Floyd's algorithm is w3 of call 0 for s = 0, else word (s-1) % 4 of call
    1 + (s-1) // 4; calls m >= 1 are evaluated only up to the largest one any cell needs
    (their values do not depend on which cells need them).
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    cells = np.asarray(cells, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= 1 << 31):
        raise ValueError("rows must lie in [0, 2**31)")
    if cells.size and (cells.min() < 0 or cells.max() >= 1 << 26):
        raise ValueError("cells must lie in [0, 2**26) (d <= 2**32)")
    rows_u, cells_u = rows.astype(np.uint64), cells.astype(np.uint64)

    w0, w1, w2, w3 = _cell_words(seed, rows_u, cells_u, 0)
    table = np.array(binomial_table(rho), dtype=np.uint64)  # entries <= 2**32
    # n = number of t with w0 >= C[t]; table nondecreasing, so count via searchsorted.
    count = np.searchsorted(table, w0, side="right").astype(np.int64)
    sigma = (w2 << _SHIFT32) | w1

    r = np.minimum(count, 64 - count)
    rmax = int(r.max()) if r.size else 0
    n_calls = 1 + (max(rmax - 1, 0) + 3) // 4  # draws 1..rmax-1 come 4 per call
    assert n_calls <= _MAX_CALLS
    draw_list = [w3]
    for m in range(1, n_calls):
        draw_list.extend(_cell_words(seed, rows_u, cells_u, m))
    draws = np.stack(draw_list, axis=-1)
    mask = _floyd_mask(count, draws)
    return mask, sigma, count


def np_jl_signs(seed: int, k: int, d: int, density: float) -> np.ndarray:
    """sign(S) per spec v2 ("**Cells.**", "**Entry.**"): int8 [k, d] of +1 / -1 / 0.

    S[j, 64 g + b] is nonzero iff bit b of the cell's mask is set, negative iff bit b of
    sigma is set. Columns >= d of the last cell are generated and dropped."""
    density = _check_rho(density)
    k, d = int(k), int(d)
    if not (0 <= k < 1 << 31) or not (0 <= d <= 1 << 32):
        raise ValueError("need 0 <= k < 2**31 and 0 <= d <= 2**32")
    n_cells = -(-d // 64)
    mask, sigma, _ = np_cell_masks(seed, np.arange(k), np.arange(n_cells), density)
    b = np.arange(64, dtype=np.uint64)
    nz = ((mask[..., None] >> b) & np.uint64(1)).astype(bool)  # [k, G, 64]
    neg = ((sigma[..., None] >> b) & np.uint64(1)).astype(bool)
    signs = np.where(nz, np.where(neg, -1, 1), 0).astype(np.int8)
    return signs.reshape(k, n_cells * 64)[:, :d]


def np_jl_matrix(seed: int, k: int, d: int, density: float) -> np.ndarray:
    """S per spec v2 "**Entry.**" in float64: signs * scale, scale = sqrt(1 / (rho * k))
    evaluated in float64 as written (rho * k, then 1 / that, then sqrt), the scale of
    "## The distribution". Callers round the result (or the scale) to the dtype under test."""
    signs = np_jl_signs(seed, k, d, density)
    scale = math.sqrt(1.0 / (float(density) * k)) if k else 0.0
    return signs.astype(np.float64) * scale
