"""The seeddrop mask stream, spec v1 (see docs/mask_stream.md).

The keep decision of element ``i`` (its logical, row-major index) is a pure
function of ``(seed, i, p)``:

* Philox4x32-10 with key ``(seed mod 2**32, (seed >> 32) mod 2**32)`` and
  counter ``(q mod 2**32, q >> 32, 0, 0)`` where ``q = i >> 3``;
* lane ``l = i & 7`` takes 16 bits ``u`` of the output word ``w[l >> 1]``
  (low half for even ``l``, high half for odd ``l``);
* the element is kept iff ``u >= T`` with ``T = floor(p * 65536 + 0.5)``.

This module is the only place the stream is written down: once in Triton
(``group_keep_tile``, ``keep_at_index``) and once in PyTorch
(``keep_rows``, ``keep_at_indices``). Every kernel and every reference op
goes through these functions. In Triton the lane rule has two forms for two tile
shapes: ``lane_bits`` selects one lane per element (``keep_at_index``, arbitrary
indices) and ``group_draws_tile`` places all 8 lanes of a group with joins (whole
groups, one thread per Philox call); tests/test_stream.py checks both against the
reference.

The projection stream of sparse_jl (projection spec v2, docs/sparse_jl.md) lives here too:
``count_table`` (host), ``cell_masks_tile`` (Triton) and ``cell_masks`` (PyTorch) give each
64-column cell of S its nonzero mask and sign word from the same Philox.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only without triton
    HAS_TRITON = False

LANES = 8  # elements served by one Philox4x32 call (128 bits / 16 bits)
_U32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def threshold(p: float) -> int:
    """Keep threshold T = floor(p * 65536 + 0.5): a 16-bit draw u is kept iff u >= T."""
    scaled = p * 65536.0  # exact: a power-of-two scaling
    whole = math.floor(scaled)
    return int(whole) + (scaled - whole >= 0.5)  # exact, unlike floor(scaled + 0.5) in floats


CELL = 64  # columns of S per projection cell (one 64-bit mask)
CELL_SHIFT = 30  # cell (j, g), call m: Philox counter (j << CELL_SHIFT) + (g << CALL_BITS) + m
CALL_BITS = 4
COUNT_TABLE_SIZE = 128  # count_table's length: a 7-step binary search never reads past it


@functools.lru_cache(maxsize=64)
def count_table(rho: float) -> tuple:
    """Thresholds of a cell's nonzero count (projection spec v2): entry t (1 <= t <= 64) is
    C[t] = floor(2**32 * F(t - 1) + 1/2), F the CDF of Binomial(64, rho) in exact rational
    arithmetic; entry 0 is 0 and entries 65 .. 127 are 2**32 (no 32-bit word reaches them).
    The count of a cell is the largest t with C[t] <= w0."""
    p = Fraction(rho)
    cdf, table = Fraction(0), [0]
    for t in range(1, CELL + 1):
        cdf += math.comb(CELL, t - 1) * p ** (t - 1) * (1 - p) ** (CELL - t + 1)
        table.append(math.floor(cdf * (1 << 32) + Fraction(1, 2)))
    return tuple(table + [1 << 32] * (COUNT_TABLE_SIZE - len(table)))


def seed_to_int64(seed: int) -> int:
    """Map an integer in [-2**63, 2**64) to the signed int64 with the same 64 bits."""
    seed %= 1 << 64
    return seed - (1 << 64) if seed >= 1 << 63 else seed


# --------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _mul_hi_lo_u32(a, m: tl.constexpr):
        """(hi, lo) words of the 64-bit product of uint32 `a` and the constant `m`: one
        wide multiply (IMAD.WIDE.U32 on sm_90) instead of tl.umulhi's IMAD.HI plus an IMAD."""
        product = a.to(tl.uint64) * tl.full([], m, tl.uint64)
        return (product >> 32).to(tl.uint32), product.to(tl.uint32)

    @triton.jit
    def philox_words(seed, counter):
        """Philox4x32-10 (Random123) with key = int64 `seed` (low word k0, high word k1) and
        counter = (counter low word, counter high word, 0, 0) for int64 `counter`: the four
        uint32 words, exactly tl.randint4x(seed, counter, 10) but with wide multiplies."""
        key = seed.to(tl.int64).to(tl.uint64)  # same width: the bits are kept
        k0 = (key & 0xFFFFFFFF).to(tl.uint32)
        k1 = (key >> 32).to(tl.uint32)
        c0 = counter.to(tl.uint32)
        c1 = (counter >> 32).to(tl.uint32)
        c2 = c0 * 0
        c3 = c2
        for _ in tl.static_range(10):
            hi_b, lo_b = _mul_hi_lo_u32(c2, 0xCD9E8D57)
            hi_a, lo_a = _mul_hi_lo_u32(c0, 0xD2511F53)
            c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
            k0 = k0 + 0x9E3779B9
            k1 = k1 + 0xBB67AE85
        return c0, c1, c2, c3

    @triton.jit
    def lane_bits(w0, w1, w2, w3, lane):
        """16-bit draw of `lane` (0..7) from the four Philox words (spec v1)."""
        word = tl.where(lane < 4, tl.where(lane < 2, w0, w1), tl.where(lane < 6, w2, w3))
        shift = ((lane & 1) * 16).to(tl.uint32)
        return ((word >> shift) & 0xFFFF).to(tl.int32)

    @triton.jit
    def group_keep_tile(seed, group, threshold):
        """Keep decisions for whole 8-element groups: int1 [A, B, 8], [a, b, l] the decision
        for element 8 * group[a, b] + l (seed and group as in group_draws_tile)."""
        return group_draws_tile(seed, group) >= threshold

    @triton.jit
    def keep_at_index(seed, index, threshold):
        """Keep decision for arbitrary int64 logical indices (one Philox call each)."""
        w0, w1, w2, w3 = philox_words(seed, index >> 3)
        return lane_bits(w0, w1, w2, w3, (index & 7).to(tl.int32)) >= threshold

    @triton.jit
    def float64_from_halves(hi, lo):
        """The float64 with bits (hi << 32) | (lo mod 2**32), hi and lo 32-bit ints (see
        _common.float64_halves)."""
        bits = (hi.to(tl.int64) << 32) | (lo.to(tl.int64) & 0xFFFFFFFF)
        return bits.to(tl.float64, bitcast=True)

    @triton.jit
    def round_to(y, dtype: tl.constexpr, SOFTWARE_BF16: tl.constexpr):
        """Round fp32/fp64 `y` once to `dtype` (round to nearest even). SOFTWARE_BF16:
        do the bf16 rounding in integer arithmetic (Triton's CPU interpreter truncates)."""
        if SOFTWARE_BF16 and dtype == tl.bfloat16:
            bits = y.to(tl.float32).to(tl.uint32, bitcast=True)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            rounded = tl.where(y != y, (bits >> 16) | 0x40, rounded)
            return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return y.to(dtype)

    @triton.jit
    def group_draws_tile(seed, group):
        """Raw 16-bit draws (int32, 0..65535) of whole 8-element groups.

        seed: int64 scalar or tensor broadcastable to `group`; group: int64 [A, B] group
        indices q = i >> 3. Returns int32 [A, B, 8] where [a, b, l] is the draw u of
        element 8 * group[a, b] + l. The lanes are placed with joins, not selects: a join
        keeps a group's 8 lanes in one thread, so no two threads compute the same Philox
        call (with selects Triton spreads the lanes over threads; measured offline on sm_90
        SASS: 2.8x the instructions in sparse_jl's kernel, 1.3-1.6x in fp32/fp64 dropout_add).
        """
        w0, w1, w2, w3 = philox_words(seed, group)
        words = tl.join(tl.join(w0, w2), tl.join(w1, w3))  # [A, B, 2, 2]: [.., x, y] = w[2x + y]
        halves = tl.join(words & 0xFFFF, words >> 16)  # [.., x, y, h]: lane 4x + 2y + h
        return tl.reshape(halves, [group.shape[0], group.shape[1], 8]).to(tl.int32)

    @triton.jit
    def _floyd_step(seed, cell, chosen, draws, s, d0, d1, d2, d3):
        """Step s of Floyd's algorithm on the cells with `draws` > s. d0..d3: the words of the
        Philox call that holds draw s - 1 (call 0's w3 as d3 before step 0); they are replaced
        by the next call's words where draw s starts one (s = 1, 5, 9, ...). Returns
        (chosen, d0, d1, d2, d3)."""
        if s % 4 == 1:
            d0, d1, d2, d3 = philox_words(seed, cell + (1 + (s - 1) // 4))
        word = (s + 3) % 4
        draw = tl.where(word < 2, tl.where(word == 0, d0, d1), tl.where(word == 2, d2, d3))
        i = 64 - draws + s  # i, t > 63 only in cells past their last step: discarded below
        t = (draw.to(tl.uint64) * (i + 1).to(tl.uint64)) >> 32
        bit_t = tl.full(cell.shape, 1, tl.uint64) << t
        bit_i = tl.full(cell.shape, 1, tl.uint64) << (i & 63).to(tl.uint64)
        add = tl.where((chosen & bit_t) != 0, bit_i, bit_t)
        return tl.where(s < draws, chosen | add, chosen), d0, d1, d2, d3

    @triton.jit
    def cell_masks_tile(seed, cell, table_ptr, UNROLLED: tl.constexpr = 0):
        """Projection spec v2 for a tile of cells: cell = int64 counters (j << 30) + (g << 4)
        of call 0, any shape; table_ptr: count_table as int64 (128 entries). Returns
        (mask, sigma, count): uint64 nonzero mask (bit b: column 64 g + b), uint64 sign word
        (bit b set: negative) and int32 count (= popcount(mask)). UNROLLED: the first Floyd
        steps as straight-line code, without a data-dependent loop unless some cell of the
        tile needs more (a loop in a tl.range body stops Triton from pipelining its loads).

        The count (the largest t with C[t] <= w0) is first counted against C[1..7], loads
        independent of w0 (min(count, 7)); only a tile where some cell reaches 7 runs the
        exact 7-step binary search, whose table loads depend on each other (at the default
        density 1/sqrt(d) a cell holds at least 7 nonzeros with probability 1.9e-8 for
        d = 49152, 6.5e-5 for d = 4096, 3.8e-3 for d = 1024, 0.10 for d = 256)."""
        w0, w1, w2, w3 = philox_words(seed, cell)
        w = w0.to(tl.int64)
        count = tl.zeros(cell.shape, tl.int32)
        for t in tl.static_range(1, 8):
            count += (tl.load(table_ptr + t) <= w).to(tl.int32)
        last = tl.max(count)  # = the largest Floyd draw count while every count is below 32
        if last >= 7:
            count = tl.zeros(cell.shape, tl.int32)
            for step in tl.static_range(6, -1, -1):
                probe = count + (1 << step)
                count = tl.where(tl.load(table_ptr + probe) <= w, probe, count)
            last = tl.max(tl.minimum(count, 64 - count))
        draws = tl.minimum(count, 64 - count)  # Floyd's algorithm picks the smaller side
        chosen = tl.zeros(cell.shape, tl.uint64)
        d0, d1, d2, d3 = w3, w3, w3, w3  # draw 0 is call 0's w3, then 4 per call
        for first in tl.static_range(UNROLLED):
            chosen, d0, d1, d2, d3 = _floyd_step(seed, cell, chosen, draws, first, d0, d1, d2, d3)
        if last > UNROLLED:
            s = UNROLLED
            while s < last:
                chosen, d0, d1, d2, d3 = _floyd_step(seed, cell, chosen, draws, s, d0, d1, d2, d3)
                s += 1
        mask = tl.where(count > 32, chosen ^ 0xFFFFFFFFFFFFFFFF, chosen)
        sigma = (w2.to(tl.uint64) << 32) | w1.to(tl.uint64)
        return mask, sigma, count


# --------------------------------------------------------------------------
# PyTorch (int64 tensors emulate uint32 arithmetic; no overflowing products)
# --------------------------------------------------------------------------
def _mul_hi_lo(a: torch.Tensor, m: int):
    """(hi, lo) 32-bit halves of the 64-bit product a * m for uint32 a and constant m."""
    m_hi, m_lo = m >> 16, m & 0xFFFF
    t = a * m_lo  # < 2**48
    u = a * m_hi  # < 2**48
    hi = (u + (t >> 16)) >> 16
    lo = (((u & 0xFFFF) << 16) + t) & _U32
    return hi, lo


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Random123 philox4x32-10 on int64 tensors holding uint32 values (broadcasting)."""
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(c0, _PHILOX_M0)
        hi1, lo1 = _mul_hi_lo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _PHILOX_W0) & _U32
        k1 = (k1 + _PHILOX_W1) & _U32
    return c0, c1, c2, c3


def group_words(seed: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Philox words of the groups: int64 tensor of shape broadcast(seed, group) + [4]."""
    seed = seed.to(torch.int64)
    k0, k1 = seed & _U32, (seed >> 32) & _U32
    c0, c1 = group & _U32, (group >> 32) & _U32
    zero = torch.zeros_like(c0)
    return torch.stack(philox4x32_10(c0, c1, zero, zero, k0, k1), dim=-1)


def _lane_draws(words: torch.Tensor) -> torch.Tensor:
    """[..., 4] words -> [..., 8] 16-bit draws in lane order."""
    halves = torch.stack((words & 0xFFFF, (words >> 16) & 0xFFFF), dim=-1)
    return halves.flatten(-2)


def keep_rows(seed: torch.Tensor, n_rows: int, n_cols: int, p: float, index_offset: int = 0) -> torch.Tensor:
    """Bool [n_rows, n_cols]: row r holds the decisions for logical indices
    index_offset .. index_offset + n_cols - 1 under key seed[r].

    seed: int64 tensor of shape [] (same key for every row, rows then continue
    the index: row r starts at index_offset + r * n_cols) or [n_rows] (one key
    per row, every row starts at index_offset).
    """
    thr = threshold(p)
    device = seed.device
    if seed.dim() == 0:
        start, n = index_offset, n_rows * n_cols
        first = start >> 3
        groups = torch.arange(first, ((start + n + 7) >> 3), device=device, dtype=torch.int64)
        draws = _lane_draws(group_words(seed, groups)).flatten()
        lo = start - (first << 3)
        return (draws[lo:lo + n] >= thr).reshape(n_rows, n_cols)
    first = index_offset >> 3
    groups = torch.arange(first, ((index_offset + n_cols + 7) >> 3), device=device, dtype=torch.int64)
    draws = _lane_draws(group_words(seed.reshape(-1, 1), groups[None, :])).flatten(1)
    lo = index_offset - (first << 3)
    return draws[:, lo:lo + n_cols] >= thr


def keep_at_indices(seed: torch.Tensor, index: torch.Tensor, p: float) -> torch.Tensor:
    """Bool tensor: decision of each int64 logical index (seed broadcasts against index)."""
    draws = group_draws(seed, index >> 3)
    lane = (index & 7).expand(draws.shape[:-1]).unsqueeze(-1)
    return torch.gather(draws, -1, lane).squeeze(-1) >= threshold(p)


def group_draws(seed: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Raw 16-bit draws (int64, 0..65535) of whole 8-element groups: shape
    broadcast(seed, group) + [8], [..., l] the draw u of element 8 * group + l."""
    return _lane_draws(group_words(seed, group))


def cell_masks(seed: torch.Tensor, cell: torch.Tensor, table: tuple):
    """Projection spec v2 in PyTorch: (mask, sigma) as int64 tensors holding the 64-bit
    words (two's complement) of the cells with call-0 counters `cell` (int64, any shape;
    seed broadcasts against it); table = count_table(rho)."""
    def words(m):
        return group_words(seed, cell + m).unbind(-1)

    w0, w1, w2, w3 = words(0)
    thresholds = torch.tensor(table[1:CELL + 1], dtype=torch.int64, device=cell.device)
    count = torch.searchsorted(thresholds, w0.contiguous(), right=True)
    draws = torch.minimum(count, CELL - count)
    chosen = torch.zeros_like(count)
    pending = [w3]
    for s in range(int(draws.max()) if draws.numel() else 0):
        if not pending:
            pending = list(words(1 + (s - 1) // 4))
        draw = pending.pop(0)
        i = CELL - draws + s
        active = s < draws
        t = torch.where(active, (draw * (i + 1)) >> 32, 0)
        add = torch.where((chosen >> t) & 1 == 1, 1 << i.clamp(max=CELL - 1), 1 << t)
        chosen = torch.where(active, chosen | add, chosen)
    mask = torch.where(count > CELL // 2, ~chosen, chosen)
    return mask, (w2 << 32) | w1
