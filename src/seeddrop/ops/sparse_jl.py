"""Seeded sparse Johnson-Lindenstrauss projection y = x @ S.T, S generated inside the kernel.

S (k x d) is the very sparse random projection of Li, Hastie and Church (2006) in
scikit-learn's SparseRandomProjection convention. Entry (j, c) is a pure function of
(seed, j, c), the density rho and k: projection spec v2 (docs/sparse_jl.md) gives each
64-column cell (j, c // 64) a Binomial(64, rho) count, a uniformly random set of that
many nonzero columns and 64 sign bits (stream.cell_masks[_tile]); scale = sqrt(1 / (rho * k)).

S never exists in device memory. Two kernels regenerate it from the seed:
_jl_matmul_kernel expands cells into dense tiles of sign(S) (+1 / -1 / 0, exact in every
dtype) in registers and feeds them to tl.dot (both directions, any batch);
_jl_gather_kernel walks each cell's nonzeros and gathers x there (forward, up to 64 rows of x).
The scale multiplies the fp32 (fp64) accumulator once. Saved for backward: the seed only.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple, Optional

import torch

from .. import stream
from .._common import (
    cdiv,
    lean_apply,
    next_pow2,
    FLOAT_DTYPES,
    Seed,
    check_float_tensor,
    compute_dtype,
    draw_seed,
    float64_halves,
    resolve_seed,
    seed_as_tensor,
    sm_count,
    use_triton,
)
from .._launch import FastKernel
from .._library import define_op

MAX_IN_FEATURES = 1 << 32  # cells g < 2**26 (stream.CELL_SHIFT)
MAX_OUT_FEATURES = (1 << 31) - 1
GATHER_MAX_ROWS = 64  # forward calls with at most this many rows of x walk S's nonzeros
GATHER_IN_PLACE_ROWS = 8  # the walk reads up to this many rows of x in place, more from a column-major copy
_REF_CHUNK = 1 << 21  # entries of S per chunk in the PyTorch reference


class JLParams(NamedTuple):
    """A validated projection: S is out_features x in_features with density `density`."""

    out_features: int
    in_features: int
    density: float  # rho, as given (float64)
    scale: float  # sqrt(1 / (density * out_features)), float64


def jl_params(out_features, in_features, density=None) -> JLParams:
    """Validate the projection's arguments; density defaults to 1 / sqrt(in_features)."""
    if (type(out_features) is int and type(in_features) is int and (density is None or type(density) is float)
            and not torch.compiler.is_compiling()):  # (Dynamo warns when it traces an lru_cache)
        return _jl_params_cached(out_features, in_features, density)  # the common, hashable case
    return _jl_params(out_features, in_features, density)


@functools.lru_cache(maxsize=256)
def _jl_params_cached(out_features: int, in_features: int, density) -> JLParams:
    return _jl_params(out_features, in_features, density)


def _jl_params(out_features, in_features, density) -> JLParams:
    for name, value, hi in (("out_features", out_features, MAX_OUT_FEATURES),
                            ("in_features", in_features, MAX_IN_FEATURES)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, but got {type(value).__name__}")
        if not 1 <= value <= hi:
            raise ValueError(f"{name} must lie in [1, {hi}], but got {value}")
    k, d = int(out_features), int(in_features)
    if density is None:
        density = 1.0 / math.sqrt(d)
    elif isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"density must be a real number or None, but got {type(density).__name__}")
    density = float(density)
    if not 0.0 < density <= 1.0:  # NaN fails too
        raise ValueError(f"density must lie in (0, 1], but got {density}")
    return JLParams(k, d, density, math.sqrt(1.0 / (density * k)))


_TABLES: dict = {}


def count_table_tensor(density: float, device: torch.device) -> torch.Tensor:
    """stream.count_table(density) as an int64 tensor on `device` (1 KiB), made on first use
    and kept for the life of the process: a captured CUDA graph holds its address, so it is
    never freed. Making it is a host-to-device copy, which a capturing stream does not allow:
    call sparse_jl once per density before capturing (as Triton's first compile requires)."""
    key = (density, device)
    table = _TABLES.get(key)
    if table is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"sparse_jl with density {density} is first called during CUDA-graph capture; "
                               "call it once before capturing (it creates a small device table on first use)")
        table = _TABLES[key] = torch.tensor(stream.count_table(density), dtype=torch.int64, device=device)
    return table


# --------------------------------------------------------------------------
# Triton
# --------------------------------------------------------------------------
if stream.HAS_TRITON:
    import triton
    import triton.language as tl
    # Stream helpers imported by bare name (see ops/dropout.py).
    from ..stream import cell_masks_tile, float64_from_halves, round_to

    _CELL_SHIFT: tl.constexpr = tl.constexpr(stream.CELL_SHIFT)
    _CALL_BITS: tl.constexpr = tl.constexpr(stream.CALL_BITS)
    FLOYD_UNROLLED: tl.constexpr = tl.constexpr(4)

    @triton.jit
    def _seed(seed_ptr, seed_value, SEED_FROM_PTR: tl.constexpr):
        if SEED_FROM_PTR:
            return tl.load(seed_ptr)
        else:
            return seed_value

    @triton.jit
    def _cells(seed, rows, cells, table_ptr, UNROLLED: tl.constexpr = 0):
        """(mask, sigma, count) [R, G] of the cells rows x cells (int64 [R], [G])."""
        return cell_masks_tile(seed, (rows[:, None] << _CELL_SHIFT) + (cells[None, :] << _CALL_BITS), table_ptr,
                               UNROLLED)

    @triton.jit
    def _sign_tile(seed, rows, col0, table_ptr, G: tl.constexpr, dtype: tl.constexpr):
        """sign(S) as `dtype` (+1 / -1 / 0, built from bits, exact in every dtype) at rows
        `rows` (int64 [R]) and the 64 * G columns col0 .. col0 + 64G - 1 (col0 % 64 == 0):
        [R, 64 * G], one cell (one or two Philox calls, usually) per 64 entries."""
        mask, sigma, _ = _cells(seed, rows, (col0 >> 6) + tl.arange(0, G).to(tl.int64), table_ptr, FLOYD_UNROLLED)
        # 32-bit halves, then one bit per entry: [R, G, 2, 32] -> [R, 64 * G]
        halves = tl.join(mask.to(tl.uint32), (mask >> 32).to(tl.uint32))
        negative = tl.join((sigma & mask).to(tl.uint32), ((sigma & mask) >> 32).to(tl.uint32))
        bit = tl.arange(0, 32).to(tl.uint32)[None, None, None, :]
        nonzero = (halves[:, :, :, None] >> bit) & 1
        sign = (negative[:, :, :, None] >> bit) & 1
        nonzero = tl.reshape(nonzero, [rows.shape[0], 64 * G])
        sign = tl.reshape(sign, [rows.shape[0], 64 * G])
        if dtype == tl.float16:
            return (nonzero * 0x3C00 | (sign << 15)).to(tl.uint16).to(tl.float16, bitcast=True)
        elif dtype == tl.bfloat16:
            return (nonzero * 0x3F80 | (sign << 15)).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return (nonzero * 0x3F800000 | (sign << 31)).to(tl.float32, bitcast=True).to(dtype)

    @triton.jit
    def _mma(lhs, rhs, acc, DATA_LEFT: tl.constexpr, DOT_MODE: tl.constexpr):
        """acc + lhs @ rhs where one operand is data and the other sign(S).
        DOT_MODE 0: native dtype; 1: both operands in acc's dtype, IEEE (fp64, and bf16 in
        the interpreter); 2: fp32 data as two TF32 products, data = hi + lo (signs are exact)."""
        if DOT_MODE == 0:
            return tl.dot(lhs, rhs, acc)
        elif DOT_MODE == 1:
            return tl.dot(lhs.to(acc.dtype), rhs.to(acc.dtype), acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            if DATA_LEFT:
                hi = (lhs.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
                acc = tl.dot(hi, rhs, acc, input_precision="tf32")
                return tl.dot(lhs - hi, rhs, acc, input_precision="tf32")
            else:
                hi = (rhs.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
                acc = tl.dot(lhs, hi, acc, input_precision="tf32")
                return tl.dot(lhs, rhs - hi, acc, input_precision="tf32")

    @triton.jit
    def _step(acc, a_ptr, a_sm, a_sr, offs_m, offs_n, n0, r, M, R, seed, table_ptr,
              FORWARD: tl.constexpr, SWAP: tl.constexpr, DOT_MODE: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
        """acc += a[:, r:r+BLOCK_R] @ op(S)[r:r+BLOCK_R, n-block] (acc holds the transposed
        tile when SWAP). FORWARD: op(S) = S.T, the tile's rows of S are the outputs n;
        else op(S) = S, its rows are the reduction r and its columns the outputs."""
        offs_r = r + tl.arange(0, BLOCK_R).to(tl.int64)
        if SWAP:  # a^T tile [BLOCK_R, BLOCK_M]
            a = tl.load(a_ptr + offs_m[None, :] * a_sm + offs_r[:, None] * a_sr,
                        mask=(offs_m[None, :] < M) & (offs_r[:, None] < R), other=0.0)
        else:  # a tile [BLOCK_M, BLOCK_R]
            a = tl.load(a_ptr + offs_m[:, None] * a_sm + offs_r[None, :] * a_sr,
                        mask=(offs_m[:, None] < M) & (offs_r[None, :] < R), other=0.0)
        SDT: tl.constexpr = a_ptr.dtype.element_ty if DOT_MODE == 0 else tl.float32
        if FORWARD:
            s = _sign_tile(seed, offs_n, r, table_ptr, BLOCK_R // 64, SDT)  # [BLOCK_N, BLOCK_R]
            if SWAP:
                return _mma(s, a, acc, False, DOT_MODE)
            else:
                return _mma(a, tl.trans(s), acc, True, DOT_MODE)
        else:
            s = _sign_tile(seed, offs_r, n0, table_ptr, BLOCK_N // 64, SDT)  # [BLOCK_R, BLOCK_N]
            if SWAP:
                return _mma(tl.trans(s), a, acc, False, DOT_MODE)
            else:
                return _mma(a, s, acc, True, DOT_MODE)

    @triton.jit
    def _store(acc, out_ptr, offset, live, split, o_ss, scale_hi, scale_lo,
               PARTIAL: tl.constexpr, SOFTWARE_BF16: tl.constexpr):
        """PARTIAL: the raw accumulator into split `split` of the partials; else round(acc * scale),
        the scale being the float64 of float64_halves (scale_hi, scale_lo), in acc's dtype."""
        if PARTIAL:
            tl.store(out_ptr + split * o_ss + offset, acc, mask=live)
        else:
            scale = float64_from_halves(scale_hi, scale_lo).to(acc.dtype)
            tl.store(out_ptr + offset, round_to(acc * scale, out_ptr.dtype.element_ty, SOFTWARE_BF16),
                     mask=live)

    @triton.jit(do_not_specialize=["seed_value", "scale_hi", "scale_lo"])
    def _jl_matmul_kernel(
        a_ptr, out_ptr, seed_ptr, seed_value: tl.int64, table_ptr, M, N, R, r_per_split,
        a_sm, a_sr, o_ss, o_sm, o_sn, scale_hi, scale_lo,
        FORWARD: tl.constexpr, SWAP: tl.constexpr, PARTIAL: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
        DOT_MODE: tl.constexpr, USE_WHILE: tl.constexpr, SOFTWARE_BF16: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    ):
        """out[m, n] = sum_r a[m, r] * op(S)[r, n] (times scale unless PARTIAL) for one
        [BLOCK_M, BLOCK_N] output tile and r in one split [split * r_per_split, + r_per_split).
        FORWARD: op(S) = S.T (N = out_features, R = in_features); else op(S) = S.
        The dimension of S a tile spans along its columns (BLOCK_R forward, BLOCK_N
        backward) is a multiple of 64, and so is r_per_split: tiles cover whole cells."""
        pid = tl.program_id(0).to(tl.int64)
        n_n = tl.cdiv(N, BLOCK_N)
        n_m = tl.cdiv(M, BLOCK_M)
        n0 = (pid % n_n) * BLOCK_N  # the n-blocks of one m-block are neighbours: a is reused from L2
        offs_m = ((pid // n_n) % n_m) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_n = n0 + tl.arange(0, BLOCK_N).to(tl.int64)
        split = pid // (n_n * n_m)
        seed = _seed(seed_ptr, seed_value, SEED_FROM_PTR)
        ACC: tl.constexpr = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32
        if SWAP:
            acc = tl.zeros([BLOCK_N, BLOCK_M], ACC)
        else:
            acc = tl.zeros([BLOCK_M, BLOCK_N], ACC)
        r = split * r_per_split
        r_end = tl.minimum(r + r_per_split, R)
        if USE_WHILE:  # Triton's interpreter cannot range() over a runtime value
            while r < r_end:
                acc = _step(acc, a_ptr, a_sm, a_sr, offs_m, offs_n, n0, r, M, R, seed, table_ptr,
                            FORWARD, SWAP, DOT_MODE, BLOCK_N, BLOCK_R)
                r += BLOCK_R
        else:  # a for loop, which the compiler software-pipelines (num_stages)
            for rr in tl.range(r, r_end, BLOCK_R):
                acc = _step(acc, a_ptr, a_sm, a_sr, offs_m, offs_n, n0, rr, M, R, seed, table_ptr,
                            FORWARD, SWAP, DOT_MODE, BLOCK_N, BLOCK_R)
        if SWAP:
            offset = offs_n[:, None] * o_sn + offs_m[None, :] * o_sm
            live = (offs_n[:, None] < N) & (offs_m[None, :] < M)
        else:
            offset = offs_m[:, None] * o_sm + offs_n[None, :] * o_sn
            live = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        _store(acc, out_ptr, offset, live, split, o_ss, scale_hi, scale_lo, PARTIAL, SOFTWARE_BF16)

    @triton.jit(do_not_specialize=["scale_hi", "scale_lo"])
    def _jl_reduce_kernel(part_ptr, out_ptr, n_split, numel, scale_hi, scale_lo,
                          SOFTWARE_BF16: tl.constexpr, BLOCK: tl.constexpr):
        """out = round(scale * sum_s part[s]) over contiguous [n_split, numel] partials (fixed order)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        live = offs < numel
        ptrs = part_ptr + offs
        acc = tl.load(ptrs, mask=live, other=0.0)
        s = 1
        while s < n_split:
            ptrs += numel
            acc += tl.load(ptrs, mask=live, other=0.0)
            s += 1
        _store(acc, out_ptr, offs, live, 0, 0, scale_hi, scale_lo, False, SOFTWARE_BF16)

    @triton.jit
    def _lowest_bit(mask):
        """(the lowest set bit of uint64 `mask` as a word, its index 0..63): the index from
        the float64 exponent of the isolated bit. An empty mask gives (0, -1023)."""
        low = mask & (0 - mask)
        return low, (low.to(tl.float64).to(tl.int64, bitcast=True) >> 52) - 1023

    @triton.jit(do_not_specialize=["seed_value", "scale_hi", "scale_lo"])
    def _jl_gather_kernel(
        a_ptr, out_ptr, seed_ptr, seed_value: tl.int64, table_ptr, M, N, R, cells_per_split,
        a_sm, a_sr, o_ss, scale_hi, scale_lo,
        PARTIAL: tl.constexpr, SEED_FROM_PTR: tl.constexpr, SOFTWARE_BF16: tl.constexpr,
        BLOCK_J: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr,
    ):
        """out[m, j] = sum_c a[m, c] * S[j, c] for BLOCK_M rows m of a, BLOCK_J rows j of S
        and the cells of one split: walks each cell's nonzero bits (lowest first) and loads a
        at those columns only. Forward only (out: contiguous [M, N])."""
        pid = tl.program_id(0).to(tl.int64)  # row blocks of S, then of a, then splits of the cells
        n_j = tl.cdiv(N, BLOCK_J)
        n_m = tl.cdiv(M, BLOCK_M)
        rows = (pid % n_j) * BLOCK_J + tl.arange(0, BLOCK_J).to(tl.int64)
        offs_m = ((pid // n_j) % n_m) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        split = pid // (n_j * n_m)
        seed = _seed(seed_ptr, seed_value, SEED_FROM_PTR)
        ACC: tl.constexpr = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32
        acc = tl.zeros([BLOCK_J, BLOCK_G, BLOCK_M], ACC)
        g = split * cells_per_split
        g_end = tl.minimum(g + cells_per_split, tl.cdiv(R, 64))
        while g < g_end:
            cells = g + tl.arange(0, BLOCK_G).to(tl.int64)
            mask, sigma, count = _cells(seed, rows, cells, table_ptr)
            live = (rows[:, None] < N) & (cells[None, :] < g_end)
            mask = tl.where(live, mask, 0)
            left = tl.max(tl.where(live, count, 0))
            while left > 0:
                low, bit = _lowest_bit(mask)
                col = cells[None, :] * 64 + bit
                take = (mask != 0) & (col < R)
                v = tl.load(a_ptr + col[:, :, None] * a_sr + offs_m[None, None, :] * a_sm,
                            mask=take[:, :, None] & (offs_m < M)[None, None, :], other=0.0).to(ACC)
                acc += tl.where(((sigma & low) != 0)[:, :, None], -v, v)
                mask = mask & (mask - 1)
                left -= 1
            g += BLOCK_G
        y = tl.sum(acc, axis=1)  # [BLOCK_J, BLOCK_M]
        _store(y, out_ptr, offs_m[None, :] * N + rows[:, None], (rows[:, None] < N) & (offs_m[None, :] < M),
               split, o_ss, scale_hi, scale_lo, PARTIAL, SOFTWARE_BF16)

    @triton.jit
    def _column_major_kernel(a_ptr, out_ptr, M, R, a_sm, a_sr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
        """out[r * M + m] = a[m, r]: a [BLOCK_M, BLOCK_R] tile per program (the walk's
        column-major copy of x, read and written in whole lines)."""
        pid = tl.program_id(0).to(tl.int64)
        n_r = tl.cdiv(R, BLOCK_R)
        offs_m = (pid // n_r) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        offs_r = (pid % n_r) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        inside = (offs_m[:, None] < M) & (offs_r[None, :] < R)
        v = tl.load(a_ptr + offs_m[:, None] * a_sm + offs_r[None, :] * a_sr, mask=inside)
        tl.store(out_ptr + offs_r[None, :] * M + offs_m[:, None], v, mask=inside)

    @triton.jit(do_not_specialize=["seed_value", "scale_hi", "scale_lo"])
    def _jl_matrix_kernel(out_ptr, seed_ptr, seed_value: tl.int64, table_ptr, K, D, o_sj, o_sc, scale_hi, scale_lo,
                          SEED_FROM_PTR: tl.constexpr, SOFTWARE_BF16: tl.constexpr,
                          BLOCK_J: tl.constexpr, BLOCK_G: tl.constexpr):
        """out = S (sign * scale, rounded once to out's dtype), a [BLOCK_J, 64 * BLOCK_G] tile per program."""
        pid = tl.program_id(0).to(tl.int64)
        n_c = tl.cdiv(D, 64 * BLOCK_G)
        rows = (pid // n_c) * BLOCK_J + tl.arange(0, BLOCK_J).to(tl.int64)
        col0 = (pid % n_c) * (64 * BLOCK_G)
        cols = col0 + tl.arange(0, 64 * BLOCK_G).to(tl.int64)
        CDT: tl.constexpr = tl.float64 if out_ptr.dtype.element_ty == tl.float64 else tl.float32
        signs = _sign_tile(_seed(seed_ptr, seed_value, SEED_FROM_PTR), rows, col0, table_ptr, BLOCK_G, CDT)
        _store(signs, out_ptr, rows[:, None] * o_sj + cols[None, :] * o_sc,
               (rows[:, None] < K) & (cols[None, :] < D), 0, 0, scale_hi, scale_lo, False, SOFTWARE_BF16)


_MATMUL, _GATHER, _REDUCE, _MATRIX, _COLUMN_MAJOR = (
    (FastKernel(_jl_matmul_kernel), FastKernel(_jl_gather_kernel), FastKernel(_jl_reduce_kernel),
     FastKernel(_jl_matrix_kernel), FastKernel(_column_major_kernel)) if stream.HAS_TRITON else (None,) * 5)


class JLConfig(NamedTuple):
    """Kernel tiling for out[M, N] = a[M, R] @ op(S) (block sizes >= 16, powers of 2; the
    block along S's columns, block_r forward and block_n backward, >= 64: whole cells).
    swap: compute out.T tiles, sign(S) being the left tl.dot operand.
    split: programs along R, summed by a second kernel (0: chosen from the SM count)."""

    block_m: int
    block_n: int
    block_r: int
    num_warps: int = 4
    num_stages: int = 3
    swap: bool = False
    split: int = 0


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, next_pow2(n)))


@functools.lru_cache(maxsize=1024)  # the plans are pure functions of their arguments
def default_config(M: int, N: int, R: int, dtype: torch.dtype, device: torch.device) -> JLConfig:
    """S is regenerated once per block_m rows of a, so large batches take large block_m;
    small batches split the reduction to fill the GPU instead (docs/sparse_jl.md). All
    of these compile for sm_90 without register spills (ptxas)."""
    if device.type != "cuda":  # the interpreter: few, large programs
        return JLConfig(_pow2(M, 16, 64), _pow2(N, 64, 128), _pow2(R, 64, 256), split=1)
    small_m = _pow2(M, 16, 64)
    if dtype == torch.float64:
        return JLConfig(small_m, 64, 64, num_warps=4, num_stages=2)
    if dtype == torch.float32:  # two TF32 products per tile
        return JLConfig(small_m, 64, 64) if M <= 64 else JLConfig(128, 128, 64, num_warps=8)
    if M <= 64:
        return JLConfig(small_m, 128, 64)
    if M <= 1024 or dtype == torch.float16:  # fp16 at block_m 256 spills
        return JLConfig(128, 128, 64, num_warps=8)
    if cdiv(M, 256) * cdiv(N, 128) < 0.7 * sm_count(device):
        # Too few tiles of 256 rows to fill the GPU (split partials are capped at 8 MiB): H200,
        # bf16 [4096 / 8192, 4096] -> 256 (0.24 / 0.48 tiles per SM), three runs on 2026-12-01:
        # 128 rows took 0.085 / 0.150, 0.085 / 0.150 and 0.073 / 0.127 ms against 0.101 / 0.176,
        # 0.101 / 0.176, 0.087 / 0.150; at [4096, 49152] -> 1024 (0.97 tiles per SM) 256 rows
        # were 1.8x faster. Between 0.48 and 0.97 nothing was measured.
        return JLConfig(128, 128, 64, num_warps=8)
    return JLConfig(256, 128, 64, num_warps=8)


@functools.lru_cache(maxsize=1024)
def split_plan(M: int, N: int, R: int, cfg: JLConfig, device: torch.device):
    """(r_per_split, splits): programs along R, about 4 per SM (cfg.split if set), each with
    >= 4 steps of block_r, their fp32 partial sums (when splits > 1) at most 8 MiB."""
    splits = cfg.split
    if not splits:
        tiles = cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n)
        budget = max(1, (8 << 20) // (4 * M * N))
        splits = max(1, min(cdiv(4 * sm_count(device), tiles), cdiv(R, 4 * cfg.block_r), budget))
    r_per_split = cdiv(cdiv(R, cfg.block_r), splits) * cfg.block_r
    return r_per_split, cdiv(R, r_per_split)


def _dot_mode(dtype: torch.dtype, cuda: bool) -> int:
    if dtype == torch.float32:
        return 2
    if dtype == torch.float64 or (dtype == torch.bfloat16 and not cuda):
        return 1
    return 0


def launch_project(a: torch.Tensor, out: torch.Tensor, params: JLParams, seed: Seed, forward: bool,
                   config: Optional[JLConfig] = None) -> torch.Tensor:
    """out[M, N] = a[M, R] @ (S.T if forward else S) with the Triton kernels.

    a: 2-D, any strides; out: contiguous [M, N] of a's dtype, every element written.
    Forward: R = in_features, N = out_features; backward: R = out_features, N = in_features.
    With split > 1 the kernel writes fp32 (fp64) partial sums [split, M, N] (the only
    temporary) and _jl_reduce_kernel adds them in a fixed order.
    """
    M, R = a.shape
    N = out.shape[1]
    if M == 0:
        return out
    if config is None and forward and M <= GATHER_MAX_ROWS:
        return launch_gather(a, out, params, seed)
    cfg = config or default_config(M, N, R, a.dtype, a.device)
    if (cfg.block_r if forward else cfg.block_n) % stream.CELL:
        raise ValueError(f"the tile along S's columns must be a multiple of {stream.CELL}: {cfg}")
    tiles = cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n)
    r_per_split, splits = split_plan(M, N, R, cfg, a.device)
    part = torch.empty((splits, M, N), dtype=compute_dtype(a.dtype), device=a.device) if splits > 1 else None
    on_gpu = a.is_cuda
    scale = float64_halves(params.scale)
    _MATMUL.launch_keyed(tiles * splits, (
        a, out if part is None else part, seed.tensor, seed.value, count_table_tensor(params.density, a.device),
        M, N, R, r_per_split, a.stride(0), a.stride(1), M * N, N, 1, *scale,
        forward, cfg.swap, part is not None, seed.tensor is not None,  # FORWARD SWAP PARTIAL SEED_FROM_PTR
        _dot_mode(a.dtype, on_gpu), not on_gpu, not on_gpu,  # DOT_MODE USE_WHILE SOFTWARE_BF16
        cfg.block_m, cfg.block_n, cfg.block_r), cfg.num_warps, num_stages=cfg.num_stages)
    return _reduce_partials(part, out, splits, scale)


def _reduce_partials(part, out, splits, scale):
    if part is not None:
        block = 1024 if out.is_cuda else 16384
        _REDUCE.launch_keyed(cdiv(out.numel(), block),
                             (part, out, splits, out.numel(), *scale, not out.is_cuda, block), 4)
    return out


class GatherPlan(NamedTuple):
    """_jl_gather_kernel's tiling: block_j rows of S x block_g cells x block_m rows of x per
    step, cells split over `splits` programs per (row block of S, row block of x) (fp32 /
    fp64 partials summed by _jl_reduce_kernel)."""

    block_j: int
    block_g: int
    cells_per_split: int
    splits: int
    num_warps: int = 4
    block_m: int = 1


@functools.lru_cache(maxsize=1024)
def gather_plan(M: int, N: int, R: int, device: torch.device, block_j: int = 0, block_g: int = 0,
                splits: int = 0, block_m: int = 0, num_warps: int = 0, acc_bytes: int = 4) -> GatherPlan:
    """One row of x: tiles of 8 rows of S x 32 cells, 4 warps, 4 programs per SM. More rows:
    one row of S x 32 cells x all rows of x (at most 64) per program, 32 warps per SM, one
    warp per 8 KiB of accumulators (acc_bytes: 4 for fp32 sums, 8 for fp64; bf16 x at
    64 rows is one warp): a small tile walks as many bits as its fullest cell holds, so fewer
    cells per tile waste fewer steps (H200 sweep, docs/sparse_jl.md). Zero arguments take
    these defaults. Partials: at most 8 MiB in fp32 (16 MiB for fp64 x)."""
    cells = cdiv(R, stream.CELL)
    block_m = block_m or _pow2(M, 1, 64)
    if device.type != "cuda":  # the interpreter: few, large programs
        block_j, block_g, splits = block_j or _pow2(N, 1, 64), block_g or _pow2(cells, 1, 32), splits or 1
        num_warps = num_warps or 4
    else:
        one_row = M == 1
        block_j = block_j or (8 if one_row else 1)
        block_g = block_g or 32
        num_warps = num_warps or (4 if one_row else max(1, min(8, block_j * block_g * block_m * acc_bytes >> 13)))
        if not splits:  # fp32 partials of at most 8 MiB, as split_plan
            programs = (4 if one_row else 32 // num_warps) * sm_count(device)
            splits = max(1, min(cdiv(programs, cdiv(N, block_j) * cdiv(M, block_m)),
                                cdiv(cells, 2 * block_g), (8 << 20) // (4 * M * N)))
    per_split = cdiv(cdiv(cells, splits), block_g) * block_g
    return GatherPlan(block_j, block_g, per_split, cdiv(cells, per_split), num_warps, block_m)


def column_major(a: torch.Tensor) -> torch.Tensor:
    """A column-major copy of 2-D `a` (a Triton kernel: torch's copy of the transposed view
    ran at ~0.6 TB/s for [64, 49152] bf16 on the H200)."""
    M, R = a.shape
    t = torch.empty_strided((M, R), (1, M), dtype=a.dtype, device=a.device)  # no .t(): host time
    block_m = min(next_pow2(M), 64)
    block_r = (4096 if a.is_cuda else 16384) // block_m
    _COLUMN_MAJOR.launch_keyed(cdiv(R, block_r) * cdiv(M, block_m),
                               (a, t, M, R, a.stride(0), a.stride(1), block_m, block_r), 4)
    return t


def launch_gather(a: torch.Tensor, out: torch.Tensor, params: JLParams, seed: Seed,
                  plan: Optional[GatherPlan] = None) -> torch.Tensor:
    """out[M, N] = a[M, R] @ S.T (forward) by walking S's nonzeros (_jl_gather_kernel).
    a: 2-D, any strides (more than GATHER_IN_PLACE_ROWS rows are read from a column-major
    copy, so one nonzero's values in a block of rows are contiguous; fewer are read in place,
    H200 2026-12-01: B = 8 at d = 49152 took 35.0 us in place vs 43.4 with the copy);
    out: contiguous [M, N]."""
    M, R = a.shape
    N = out.shape[1]
    if M == 0:
        return out
    if M > GATHER_IN_PLACE_ROWS and a.stride(0) != 1:
        a = column_major(a)
    acc = compute_dtype(a.dtype)
    plan = plan or gather_plan(M, N, R, a.device, acc_bytes=acc.itemsize)
    part = torch.empty((plan.splits, M, N), dtype=acc, device=a.device) if plan.splits > 1 else None
    scale = float64_halves(params.scale)
    head = (a, out if part is None else part, seed.tensor, seed.value, count_table_tensor(params.density, a.device),
            M, N, R, plan.cells_per_split, a.stride(0), a.stride(1), M * N, *scale,
            part is not None, seed.tensor is not None, not a.is_cuda)  # PARTIAL SEED_FROM_PTR SOFTWARE_BF16
    grid = cdiv(N, plan.block_j) * cdiv(M, plan.block_m) * plan.splits
    _GATHER.launch_keyed(grid, head + (plan.block_j, plan.block_g, plan.block_m), plan.num_warps)
    return _reduce_partials(part, out, plan.splits, scale)


def launch_matrix(out: torch.Tensor, params: JLParams, seed: Seed) -> torch.Tensor:
    """out[k, d] = S in out's dtype with the Triton kernel (out: any strides)."""
    K, D = out.shape
    block_j, block_g = (32, 4) if out.is_cuda else (_pow2(K, 1, 64), _pow2(cdiv(D, stream.CELL), 1, 8))
    grid = cdiv(K, block_j) * cdiv(D, stream.CELL * block_g)
    _MATRIX.launch_keyed(grid, (
        out, seed.tensor, seed.value, count_table_tensor(params.density, out.device), K, D,
        out.stride(0), out.stride(1), *float64_halves(params.scale),
        seed.tensor is not None, not out.is_cuda, block_j, block_g), 4)  # SEED_FROM_PTR SOFTWARE_BF16
    return out


# --------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------
def signs_reference(seed: torch.Tensor, row0: int, n_rows: int, n_cols: int, density: float,
                    dtype: torch.dtype) -> torch.Tensor:
    """sign(S) (+1 / -1 / 0 in `dtype`) of rows row0 .. row0 + n_rows - 1, columns 0 .. n_cols - 1."""
    rows = torch.arange(row0, row0 + n_rows, device=seed.device, dtype=torch.int64)
    cells = torch.arange(-(-n_cols // stream.CELL), device=seed.device, dtype=torch.int64)
    counters = (rows[:, None] << stream.CELL_SHIFT) + (cells[None, :] << stream.CALL_BITS)
    mask, sigma = stream.cell_masks(seed, counters, stream.count_table(density))
    bit = torch.arange(stream.CELL, device=seed.device)
    nonzero = (mask[..., None] >> bit) & 1
    negative = (sigma[..., None] >> bit) & 1
    return (nonzero * (1 - 2 * negative)).flatten(1)[:, :n_cols].to(dtype)


def _row_chunks(params: JLParams):
    step = max(1, _REF_CHUNK // params.in_features)
    for j0 in range(0, params.out_features, step):
        yield j0, min(step, params.out_features - j0)


def project_reference(a: torch.Tensor, params: JLParams, seed: Seed, forward: bool) -> torch.Tensor:
    """a[M, R] @ (S.T if forward else S) in PyTorch: sum in fp32 (fp64 for float64), times
    the scale, rounded once to a's dtype."""
    cdt = compute_dtype(a.dtype)
    seed_t = seed_as_tensor(seed, a.device)
    ac = a.to(cdt)
    n_out = params.out_features if forward else params.in_features
    out = torch.zeros((a.shape[0], n_out), dtype=cdt, device=a.device)
    for j0, nj in _row_chunks(params):
        signs = signs_reference(seed_t, j0, nj, params.in_features, params.density, cdt)
        if forward:
            out[:, j0:j0 + nj] = ac @ signs.T
        else:
            out += ac[:, j0:j0 + nj] @ signs
    out *= torch.tensor(params.scale, dtype=torch.float64).to(cdt)
    return out.to(a.dtype)


def matrix_reference(params: JLParams, seed: Seed, dtype: torch.dtype, device) -> torch.Tensor:
    """S (k x d) in `dtype`: sign * scale in fp32 (fp64 for float64), rounded once."""
    cdt = compute_dtype(dtype)
    seed_t = seed_as_tensor(seed, device)
    scale = torch.tensor(params.scale, dtype=torch.float64).to(cdt)
    out = torch.empty((params.out_features, params.in_features), dtype=dtype, device=device)
    for j0, nj in _row_chunks(params):
        signs = signs_reference(seed_t, j0, nj, params.in_features, params.density, cdt)
        out[j0:j0 + nj] = (signs * scale).to(dtype)
    return out


def sparse_jl_reference(x: torch.Tensor, out_features: int, seed, *, density=None) -> torch.Tensor:
    """sparse_jl computed with PyTorch ops (the CPU path without TRITON_INTERPRET)."""
    params, seed = _validate(x, out_features, seed, density)
    a = x.reshape(-1, params.in_features)
    return project_reference(a, params, seed, True).reshape(*x.shape[:-1], params.out_features)


# --------------------------------------------------------------------------
# dispatch + autograd
# --------------------------------------------------------------------------
def _project(x: torch.Tensor, params: JLParams, seed: Seed, forward: bool) -> torch.Tensor:
    """x[..., R] -> x @ op(S) [..., N] for a validated call (kernels or reference)."""
    n_out = params.out_features if forward else params.in_features
    flat = x.dim() == 2  # the common case: no reshapes (host time per call)
    a = x if flat else x.reshape(-1, x.shape[-1])  # a view when the leading dims collapse, else a copy
    if use_triton(x):
        out = torch.empty((a.shape[0], n_out), dtype=x.dtype, device=x.device)
        launch_project(a, out, params, seed, forward)
    else:
        out = project_reference(a, params, seed, forward)
    return out if flat else out.reshape(*x.shape[:-1], n_out)


class SparseJLFunction(torch.autograd.Function):
    """Autograd for a -> a @ op(S) (forward: op(S) = S.T, else S). The backward is the same
    Function in the other direction, so derivatives of every order regenerate S.
    Saved for backward: the seed only (an int, or the int64 seed tensor of shape [])."""

    @staticmethod
    def forward(ctx, a, seed_tensor, seed_value, params, forward):
        if seed_tensor is not None:
            ctx.save_for_backward(seed_tensor)
        ctx.seed_value, ctx.params, ctx.forward = seed_value, params, forward
        return _project(a, params, Seed(seed_tensor, seed_value), forward)

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors  # unpacked once (non-reentrant checkpointing allows no more)
        grad_a = SparseJLFunction.apply(grad, saved[0] if saved else None, ctx.seed_value, ctx.params, not ctx.forward)
        return grad_a, None, None, None, None


_apply_sparse_jl_function = lean_apply(SparseJLFunction)


# torch.compile sees this op (eager calls skip the dispatcher and use SparseJLFunction).
def _sparse_jl_op_impl(a, seed_tensor, seed_value, out_features, in_features, density, forward):
    params = jl_params(out_features, in_features, density)
    return _project(a, params, Seed(seed_tensor, seed_value), forward)


def _sparse_jl_op_fake(a, seed_tensor, seed_value, out_features, in_features, density, forward):
    return a.new_empty(*a.shape[:-1], out_features if forward else in_features)


def _sparse_jl_op_setup(ctx, inputs, output):
    _, seed_tensor, *ctx.op_args = inputs
    ctx.save_for_backward(seed_tensor)


def _sparse_jl_op_backward(ctx, grad):
    (seed_tensor,) = ctx.saved_tensors
    *args, forward = ctx.op_args
    return (sparse_jl_op(grad, seed_tensor, *args, not forward),) + (None,) * 6


sparse_jl_op = define_op("sparse_jl", "(Tensor a, Tensor? seed_tensor, SymInt seed_value, SymInt out_features, "
                         "SymInt in_features, float density, bool forward) -> Tensor",
                         _sparse_jl_op_impl, _sparse_jl_op_fake, _sparse_jl_op_setup, _sparse_jl_op_backward)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def _validate(x, out_features, seed, density):
    """(params, resolved seed) of a sparse_jl call, raising TypeError / ValueError."""
    check_float_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the features), but got a 0-d tensor")
    params = jl_params(out_features, x.shape[-1], density)
    if seed is None:
        raise ValueError("sparse_jl needs an explicit seed (an int or an integer tensor): it defines S")
    return params, resolve_seed(seed, x.device, None)


def sparse_jl(x: torch.Tensor, out_features: int, seed, *, density=None) -> torch.Tensor:
    """y = x @ S.T over the last dim: [..., d] -> [..., out_features], S the seeded very
    sparse random projection (see jl_matrix), generated inside the kernel (0 bytes of memory).

    x: float16/bfloat16/float32/float64, any leading shape and strides (leading dims that
    do not collapse to one are copied). seed: int in [-2**63, 2**64) or an integer tensor
    with one value. density: in (0, 1], default 1/sqrt(d), used as given. Sums in fp32
    (fp64 for float64), rounded once to x's dtype. Differentiable in x (backward
    regenerates S from the seed). S follows projection spec v2 (docs/sparse_jl.md).
    """
    params, seed = _validate(x, out_features, seed, density)
    if torch.compiler.is_compiling():
        return sparse_jl_op(x, seed.tensor, seed.value, params.out_features, params.in_features, params.density, True)
    if x.requires_grad and torch.is_grad_enabled():
        return _apply_sparse_jl_function(x, seed.tensor, seed.value, params, True)
    return _project(x, params, seed, True)


def fixed_seed(seed=None) -> torch.Tensor:
    """The int64 CPU tensor of shape [] a SparseJL keeps: `seed` (an int or a one-value
    integer tensor) resolved, or a fresh seed from torch's default generator when None."""
    cpu = torch.device("cpu")
    resolved = draw_seed(cpu) if seed is None else resolve_seed(seed, cpu, None)
    if resolved.tensor is None:
        return torch.tensor(resolved.value, dtype=torch.int64)
    return resolved.tensor.clone()


def jl_matrix(out_features: int, in_features: int, seed, *, density=None, dtype=torch.float32,
              device=None) -> torch.Tensor:
    """S (out_features x in_features) materialized, for inspection and tests: each entry is
    +scale / -scale with probability rho / 2 each, else 0, scale = sqrt(1 / (rho * k)),
    rho = density (projection spec v2). sparse_jl(x, k, seed) == x @ S.T up to rounding."""
    params = jl_params(out_features, in_features, density)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float16, bfloat16, float32 or float64, but got {dtype}")
    if seed is None:
        raise ValueError("jl_matrix needs an explicit seed (an int or an integer tensor)")
    device = torch.device(device) if device is not None else (
        seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu"))
    seed = resolve_seed(seed, device, None)
    probe = torch.empty((), device=device)
    if not use_triton(probe):
        return matrix_reference(params, seed, dtype, device)
    return launch_matrix(torch.empty((out_features, in_features), dtype=dtype, device=device), params, seed)
