"""Fused residual dropout: out = residual + dropout(act(x + bias)), forward and backward.

One pass over memory each way: the forward reads x, residual (and bias) and writes out;
the backward reads grad_out (and x for an activation) and writes grad_x, with the bias
gradient reduced in the same kernel. The dropout mask is the spec-v1 mask of x's shape
(docs/mask_stream.md), regenerated from the seed in backward.

Layout: every tensor is handled as a contiguous [R, C] matrix, C = x.shape[-1] (the bias
dim). Non-contiguous x / residual / grad_out and broadcast residuals are first copied to
contiguous tensors of x's shape (one extra pass; the fast path is contiguous [R, C]).
The output is contiguous.

Mask modes (how a tile gets its keep decisions):
* scalar seed, C % 8 == 0 (or one row): rows start on 8-aligned groups of the flat
  index, so each tile draws whole groups with ``stream.group_keep_tile``;
* scalar seed, C % 8 != 0: the forward walks the flat index in 8-aligned groups
  ("flat" tiles, column = index % C for the bias); a backward that reduces the bias
  gradient needs row tiles, where rows do not start on a group boundary, so it uses
  ``stream.keep_at_index`` (one Philox call per element);
* per-row seeds (shape mask_shape[:-1]): row r uses seed[r], index = column;
* shared_dims: the small reduced mask (mask_shape) is materialized with
  ``dropout_mask_tensor`` (int8) and read through per-row offsets into it (an int64
  vector of R entries) and a column stride (0 when the last dim is shared).

Arithmetic: fp32, or fp64 when the output (promote_types(x, residual)) is float64; bias
(any float dtype) is converted to that type. z = x + bias, a = act(z), out = residual +
a * m with m = 1/(1-p) or 0, rounded once. Without an activation and with relu the
kernels compile with fp fusion off, so a * m is rounded before the add, exactly as
residual + dropout(a) in fp32; with gelu / gelu_tanh / silu fusion is on (fewer
instructions in compute-bound kernels; those results are within a tolerance anyway).
relu is an IEEE maximum with NaN passing through (one instruction on sm_90): relu(-0.0)
is +0.0 there, where torch's CPU relu keeps -0.0 (visible only when the residual is -0.0 too).
In fp32 the activations use libdevice's fast exp and division on the GPU and gelu an
erfc fit (Numerical Recipes 6.2) evaluated in base 2 with its constants folded in
(_normal_tail): within rtol 3e-5 of exact values over [-30, 30] (tests), fewer
instructions per element than tl.erf / tl.exp / `/` (offline sm_90 SASS, bf16 kernels);
where the result is rounded to 16 bits (forward: the output; backward: grad_x) a degree-5
fit of the same form (_normal_tail_16, 1.7e-5 relative) keeps gelu and gelu' within one
to two ulps of the 16-bit dtype (tests); fp64 uses libdevice's erf and exact division.

Backward: saves the seed, plus x and bias when an activation is set (act'(x + bias));
not differentiable itself (a backward with create_graph=True through it raises an error);
with activation None nothing of x's size. One kernel writes grad_x = grad_out * m *
act'(z) and, when bias needs a gradient, the column sums of each program's rows (in the
compute type, before rounding) into an [n_chunks, C] workspace; torch sums its rows.
No atomics: the result is the same on every run. grad_residual is grad_out itself
(summed to the residual's shape when it was broadcast).

On CUDA, eager calls with contiguous x and residual of one shape (no shared dims, no per-row
seeds) go through the C++ host path (csrc/fast_dropout.cpp), which replays launches planned
here (plan_forward_for_extension, plan_backward_for_extension) and runs the same autograd
in C++; every other call runs DropoutAddFunction.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .. import _extension, stream
from .._common import (
    eager_host_draw_allowed,
    lean_apply,
    Seed,
    cdiv,
    check_float_tensor,
    check_p,
    compute_dtype,
    mask_shape_of,
    next_pow2,
    normalize_dims,
    resolve_seed,
    scale_halves,
    sm_count,
    use_triton,
)
from .._launch import FastKernel
from .._library import define_op
from .dropout import dropout_mask_tensor, dropout_reference

ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")  # kernel ACT code = position

# Mask modes of the kernels.
MASK_NONE, MASK_ALIGNED, MASK_PER_ROW, MASK_UNALIGNED, MASK_FROM_PTR = range(5)

# Tile size (elements) on CPU, i.e. in Triton's interpreter: few, large programs.
# Tests lower it to exercise multi-tile loops.
CPU_TILE_ELEMENTS = 16384
# Numerical Recipes' erfc fit (6.2): erfc(a) = t * exp(P(t) - a*a), P's coefficients from t**0
# up; TAIL_FIT = log2(e) * P - 1, the polynomial the fp32 kernels evaluate (literals in
# _normal_tail; tests recompute them from these).
NR_ERFC_FIT = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
               1.48851587, -0.82215223, 0.17087277)
TAIL_FIT = tuple(c * math.log2(math.e) - (i == 0) for i, c in enumerate(NR_ERFC_FIT))
# For 16-bit results (literals in _normal_tail_16): Q of the same form and the same t, degree 5,
# fitted to log2(erfc(a) exp(a*a) / (2 t)) for |z| <= 13.6 (a = |z| / sqrt 2; beyond, Phi(-|z|)
# is below fp32's normals) by iteratively reweighted least squares: 7.6e-6 relative error,
# 1.7e-5 with fp32 evaluation (the 9-term fit: 1.0e-5), far below 16-bit rounding (2**-12
# for fp16, 2**-9 for bf16); 4 fused multiply-adds per element fewer.
TAIL_FIT_16 = (-2.82723307737172, 1.4686786461286172, 0.36710109775279987, 0.684517501488931,
               -1.023118602965018, 0.3300653976444182)

if stream.HAS_TRITON:
    import triton
    import triton.language as tl
    # Helpers imported by bare name (see ops/dropout.py).
    from triton.language.extra.libdevice import fast_dividef, fast_expf

    from ..stream import float64_from_halves, group_keep_tile, keep_at_index, round_to

    @triton.jit
    def _const(like, value: tl.constexpr):
        """`value` in like's dtype and shape (a float literal would be rounded to fp32)."""
        return tl.full(like.shape, value, like.dtype)

    @triton.jit
    def _exp(z, INTERPRETER: tl.constexpr):
        """exp(z): libdevice's fast_expf in fp32 on the GPU (ex2.approx.ftz, ~2 ulp; about a
        third of tl.exp's instructions), tl.exp in fp64 and in Triton's interpreter."""
        if INTERPRETER or z.dtype == tl.float64:
            e = tl.exp(z)
        else:
            e = fast_expf(z)
        return e

    @triton.jit
    def _div(a, b, INTERPRETER: tl.constexpr):
        """a / b: libdevice's fast_dividef in fp32 on the GPU (~2 ulp), else a / b."""
        if INTERPRETER or b.dtype == tl.float64:
            q = a / b
        else:
            q = fast_dividef(a, b)
        return q

    @triton.jit
    def _reciprocal(b, INTERPRETER: tl.constexpr):
        """1 / b: one rcp.approx.ftz in fp32 on the GPU (~1 ulp; fast_dividef(1, b) adds a
        flushing FADD to it), else 1 / b."""
        if INTERPRETER or b.dtype == tl.float64:
            r = 1.0 / b
        else:
            r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [b], dtype=tl.float32,
                                          is_pure=True, pack=1)
        return r

    @triton.jit
    def _normal_tail(z, INTERPRETER: tl.constexpr):
        """Phi(-|z|) = erfc(|z| / sqrt 2) / 2 in fp32, by the Chebyshev fit of Numerical Recipes
        (6.2; fractional error ~1.2e-7): erfc(a) = t * exp(P(t) - a*a), t = 1 / (1 + a/2).
        Written as t * 2**(Q(t) - z*z * log2(e)/2) with Q = log2(e) * P - 1 (NR_ERFC_FIT,
        TAIL_FIT): the base-2 exponential is one ex2.approx, and log2(e), 1/sqrt 2 and the
        factor 1/2 cost no multiplies. An erfc: no cancellation in gelu's negative tail."""
        t = _reciprocal(1.0 + 0.35355339059327373 * tl.abs(z), INTERPRETER)
        q = -2.825748218405333 + t * (1.4427292039075317 + t * (0.5397006155284324 + t * (
            0.1396300565225048 + t * (-0.2687568603388257 + t * (0.40232158165127635 + t * (
                -1.637753152343414 + t * (2.147474463933521 + t * (
                    -1.1861149450768025 + t * 0.24651729790196045))))))))
        return t * tl.exp2(q - 0.7213475204444817 * (z * z))

    @triton.jit
    def _normal_tail_16(z, INTERPRETER: tl.constexpr):
        """_normal_tail with the degree-5 fit TAIL_FIT_16 (for 16-bit results)."""
        t = _reciprocal(1.0 + 0.35355339059327373 * tl.abs(z), INTERPRETER)
        q = -2.82723307737172 + t * (1.4686786461286172 + t * (0.36710109775279987 + t * (
            0.684517501488931 + t * (-1.023118602965018 + t * 0.3300653976444182))))
        return t * tl.exp2(q - 0.7213475204444817 * (z * z))

    @triton.jit
    def _normal_cdf(z, INTERPRETER: tl.constexpr, RESULT16: tl.constexpr):
        """Phi(z): libdevice's erf in fp64, _normal_tail in fp32 (_normal_tail_16 where the
        result is rounded to 16 bits)."""
        if z.dtype == tl.float64:
            cdf = 0.5 * (1.0 + tl.erf(z * _const(z, 0.7071067811865476)))
        else:
            if RESULT16:
                tail = _normal_tail_16(z, INTERPRETER)
            else:
                tail = _normal_tail(z, INTERPRETER)
            cdf = tl.where(z <= 0, tail, 1.0 - tail)
        return cdf

    @triton.jit
    def _sigmoid(z, INTERPRETER: tl.constexpr):
        return _reciprocal(1.0 + _exp(-z, INTERPRETER), INTERPRETER)

    @triton.jit
    def _activation(z, ACT: tl.constexpr, INTERPRETER: tl.constexpr, RESULT16: tl.constexpr):
        """act(z) with torch's formulas (in fp32 on the GPU with fast exp / division, within
        a few ulp; gelu within 1.7e-5 where RESULT16: the result is rounded to 16 bits);
        gelu_tanh uses 0.5 * (1 + tanh(u)) = sigmoid(2u)."""
        if ACT == 1:  # relu: NaN passes through, as in torch; relu(-0.0) = +0.0
            y = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
        elif ACT == 2:  # gelu (erf)
            y = z * _normal_cdf(z, INTERPRETER, RESULT16)
        elif ACT == 3:  # gelu_tanh
            u = _const(z, 0.7978845608028654) * (z + _const(z, 0.044715) * z * z * z)
            y = z * _sigmoid(2.0 * u, INTERPRETER)
        elif ACT == 4:  # silu
            y = _div(z, 1.0 + _exp(-z, INTERPRETER), INTERPRETER)
        else:
            y = z
        return y

    @triton.jit
    def _activation_grad(g, z, ACT: tl.constexpr, INTERPRETER: tl.constexpr, RESULT16: tl.constexpr):
        """g * act'(z) (torch's backward formulas; RESULT16 as in _activation)."""
        if ACT == 1:
            gz = tl.where(z > 0, g, 0.0)
        elif ACT == 2:
            if z.dtype == tl.float64:
                pdf = _exp(-0.5 * z * z, INTERPRETER) * _const(z, 0.3989422804014327)
            else:  # 2**(log2(1/sqrt(2 pi)) - z*z * log2(e)/2): one ex2, no multiplies
                pdf = tl.exp2(-1.3257480647361592 - 0.7213475204444817 * (z * z))
            gz = g * (_normal_cdf(z, INTERPRETER, RESULT16) + z * pdf)
        elif ACT == 3:
            k = _const(z, 0.7978845608028654)
            c = _const(z, 0.044715)
            s = _sigmoid(2.0 * k * (z + c * z * z * z), INTERPRETER)  # 0.5 * (1 + tanh(u))
            gz = g * (s + 2.0 * z * s * (1.0 - s) * k * (1.0 + 3.0 * c * z * z))
        elif ACT == 4:
            s = _sigmoid(z, INTERPRETER)
            gz = g * (s * (1.0 + z * (1.0 - s)))
        else:
            gz = g
        return gz

    @triton.jit
    def _tile(tile_r, tile_c, R, C, N, FLAT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
        """Coordinates of one [BLOCK_R, BLOCK_G, 8] tile.

        Row tiles: rows tile_r * BLOCK_R.., columns (tile_c * BLOCK_G..) * 8 + lane of the
        [R, C] matrix. Flat tiles (tile_c == 0): the flat index viewed as rows of
        BLOCK_G * 8 elements. Returns rows [A], group columns [G], offsets [A, G, 8],
        in-bounds [A, G, 8], bias column ([1, G, 8] or [A, G, 8]) and the flat group
        index [A, G] (meaningful where groups are 8-aligned).
        """
        rows = tile_r * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
        gcols = tile_c * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64)
        cols = gcols[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        if FLAT:
            off = rows[:, None, None] * (BLOCK_G * 8) + cols
            valid = off < N
            col = off % C
            groups = rows[:, None] * BLOCK_G + gcols[None, :]
        else:
            off = rows[:, None, None] * C + cols
            valid = (rows[:, None, None] < R) & (cols < C)
            col = cols
            groups = rows[:, None] * (C // 8) + gcols[None, :]
        return rows, gcols, off, valid, col, groups

    @triton.jit
    def _multiplier(rows, gcols, off, valid, col, groups, R, seed_ptr, seed_value, mask_ptr, mask_row_ptr,
                    mask_col_stride, threshold, scale_hi, scale_lo, like, MASK: tl.constexpr, SEED_FROM_PTR: tl.constexpr):
        """Dropout multiplier of the tile: 1/(1-p) where kept, 0 where dropped (like's dtype)."""
        if MASK == 4:  # MASK_FROM_PTR: the materialized reduced mask
            base = tl.load(mask_row_ptr + rows, mask=rows < R, other=0)
            keep = tl.load(mask_ptr + base[:, None, None] + col * mask_col_stride, mask=valid, other=0) != 0
        elif MASK == 2:  # MASK_PER_ROW: key seed[row], index = column
            seed = tl.load(seed_ptr + rows, mask=rows < R, other=0)[:, None]
            keep = group_keep_tile(seed, gcols[None, :] + tl.zeros_like(seed), threshold)
        else:
            if SEED_FROM_PTR:
                seed = tl.load(seed_ptr)
            else:
                seed = seed_value
            if MASK == 1:  # MASK_ALIGNED
                keep = group_keep_tile(seed, groups, threshold)
            else:  # MASK_UNALIGNED
                keep = keep_at_index(seed, off, threshold)
        scale = float64_from_halves(scale_hi, scale_lo).to(like.dtype)
        return tl.where(keep, scale, 0.0).to(like.dtype)

    @triton.jit(do_not_specialize=["seed_value", "threshold", "scale_hi", "scale_lo"])
    def _dropout_add_fwd_kernel(
        x_ptr, res_ptr, bias_ptr, out_ptr, seed_ptr, seed_value: tl.int64, mask_ptr, mask_row_ptr, mask_col_stride,
        R, C, N, threshold, scale_hi, scale_lo,
        ACT: tl.constexpr, HAS_BIAS: tl.constexpr, MASK: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
        FLAT: tl.constexpr, CDT: tl.constexpr, SOFTWARE_BF16: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        """out = residual + act(x + bias) * multiplier over one tile, computed in CDT, rounded once."""
        pid = tl.program_id(0).to(tl.int64)
        if FLAT:
            n_c = 1
        else:
            n_c = tl.cdiv(C, BLOCK_G * 8)
        rows, gcols, off, valid, col, groups = _tile(pid // n_c, pid % n_c, R, C, N, FLAT, BLOCK_R, BLOCK_G)
        z = tl.load(x_ptr + off, mask=valid, other=0.0).to(CDT)
        if HAS_BIAS:
            z += tl.load(bias_ptr + col, mask=col < C, other=0.0).to(CDT)
        a = _activation(z, ACT, SOFTWARE_BF16, out_ptr.dtype.element_ty.primitive_bitwidth <= 16)
        if MASK != 0:
            a = a * _multiplier(rows, gcols, off, valid, col, groups, R, seed_ptr, seed_value, mask_ptr,
                                mask_row_ptr, mask_col_stride, threshold, scale_hi, scale_lo, a, MASK, SEED_FROM_PTR)
        y = tl.load(res_ptr + off, mask=valid, other=0.0).to(CDT) + a
        tl.store(out_ptr + off, round_to(y, out_ptr.dtype.element_ty, SOFTWARE_BF16), mask=valid)

    @triton.jit(do_not_specialize=["seed_value", "threshold", "scale_hi", "scale_lo"])
    def _dropout_add_bwd_kernel(
        g_ptr, x_ptr, bias_ptr, gx_ptr, partial_ptr, seed_ptr, seed_value: tl.int64, mask_ptr, mask_row_ptr, mask_col_stride,
        R, C, N, tiles_per_program, threshold, scale_hi, scale_lo,
        ACT: tl.constexpr, HAS_BIAS: tl.constexpr, REDUCE_BIAS: tl.constexpr, MASK: tl.constexpr,
        SEED_FROM_PTR: tl.constexpr, FLAT: tl.constexpr, CDT: tl.constexpr, SOFTWARE_BF16: tl.constexpr,
        PREFETCH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        """grad_x = grad_out * multiplier * act'(x + bias) over `tiles_per_program` row tiles of
        one column block; REDUCE_BIAS: this program's column sums of grad_x (in CDT, before
        rounding) go to row `chunk` of the [n_chunks, C] workspace (no atomics). PREFETCH (the
        plan's choice, see `prefetches`): the loop loads tile t + 1 before computing tile
        t, so that those loads stay in flight while this program computes."""
        pid = tl.program_id(0).to(tl.int64)
        if FLAT:
            n_c = 1
            n_r = tl.cdiv(N, BLOCK_R * BLOCK_G * 8)
        else:
            n_c = tl.cdiv(C, BLOCK_G * 8)
            n_r = tl.cdiv(R, BLOCK_R)
        tile_c = pid % n_c
        chunk = pid // n_c
        t = chunk * tiles_per_program
        t_end = tl.minimum(t + tiles_per_program, n_r)
        acc = tl.zeros([BLOCK_R, BLOCK_G, 8], CDT)  # reduced over rows once, after the loop
        if PREFETCH:
            g_next, x_next = _load_grad_tile(g_ptr, x_ptr, t, t_end, tile_c, R, C, N, ACT, FLAT, BLOCK_R, BLOCK_G)
        while t < t_end:  # a while loop: Triton's interpreter cannot range() over an argument
            rows, gcols, off, valid, col, groups = _tile(t, tile_c, R, C, N, FLAT, BLOCK_R, BLOCK_G)
            if PREFETCH:
                g_raw, x_raw = g_next, x_next
                g_next, x_next = _load_grad_tile(g_ptr, x_ptr, t + 1, t_end, tile_c, R, C, N, ACT, FLAT,
                                                 BLOCK_R, BLOCK_G)
            else:
                g_raw, x_raw = _load_grad_tile(g_ptr, x_ptr, t, t_end, tile_c, R, C, N, ACT, FLAT,
                                               BLOCK_R, BLOCK_G)
            g = g_raw.to(CDT)
            if MASK != 0:
                g = g * _multiplier(rows, gcols, off, valid, col, groups, R, seed_ptr, seed_value, mask_ptr,
                                    mask_row_ptr, mask_col_stride, threshold, scale_hi, scale_lo, g, MASK, SEED_FROM_PTR)
            if ACT != 0:
                z = x_raw.to(CDT)
                if HAS_BIAS:
                    z += tl.load(bias_ptr + col, mask=col < C, other=0.0).to(CDT)
                g = _activation_grad(g, z, ACT, SOFTWARE_BF16, gx_ptr.dtype.element_ty.primitive_bitwidth <= 16)
            tl.store(gx_ptr + off, round_to(g, gx_ptr.dtype.element_ty, SOFTWARE_BF16), mask=valid)
            if REDUCE_BIAS:
                acc += tl.where(valid, g, 0.0)
            t += 1
        if REDUCE_BIAS:
            cols = (tile_c * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64))[:, None] * 8 + tl.arange(0, 8)[None, :]
            tl.store(partial_ptr + chunk * C + cols, tl.sum(acc, axis=0), mask=cols < C)

    @triton.jit
    def _load_grad_tile(g_ptr, x_ptr, t, t_end, tile_c, R, C, N, ACT: tl.constexpr, FLAT: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr):
        """grad_out and (with an activation) x of row tile t, zeros where t >= t_end; without
        an activation x is not read (grad_out is returned in its place)."""
        _, _, off, valid, _, _ = _tile(t, tile_c, R, C, N, FLAT, BLOCK_R, BLOCK_G)
        valid = valid & (t < t_end)
        g = tl.load(g_ptr + off, mask=valid, other=0.0)
        if ACT != 0:
            x = tl.load(x_ptr + off, mask=valid, other=0.0)
        else:
            x = g
        return g, x


# --------------------------------------------------------------------------
# plans + launchers
# --------------------------------------------------------------------------
class Config(NamedTuple):
    """Everything about a call except tensors: p, whether a mask is applied (training and
    p > 0), shared dims, per-row seeds, activation code (index into ACTIVATIONS)."""

    p: float
    masked: bool
    shared: tuple
    per_row: bool
    act: int


class _Plan(NamedTuple):
    """Launch plan of one kernel for one shape: mask mode, flat or row tiles, tile shape,
    grid, row tiles per program, bias-workspace rows (backward), warps, Triton compiler
    options ((name, value) pairs) and whether the backward prefetches."""

    R: int
    C: int
    mode: int
    flat: bool
    block_r: int
    block_g: int
    grid: int
    tiles_per_program: int
    n_chunks: int
    num_warps: int
    options: tuple
    prefetch: bool


def _rows_cols(shape) -> tuple:
    cols = shape[-1] if len(shape) else 1
    return (math.prod(shape) // cols if cols else 0), cols


def _make_plan(shape, on_cuda: bool, device, itemsize: int, cfg: Config, reduce_bias: bool,
               forward: bool) -> _Plan:
    R, C = _rows_cols(shape)
    if not cfg.masked:
        mode = MASK_NONE
    elif cfg.shared:
        mode = MASK_FROM_PTR
    elif cfg.per_row:
        mode = MASK_PER_ROW
    elif C % 8 == 0 or R == 1:
        mode = MASK_ALIGNED
    else:  # rows do not start on 8-aligned groups: flat tiles, unless row tiles are needed
        mode = MASK_UNALIGNED if reduce_bias else MASK_ALIGNED
    flat = mode == MASK_ALIGNED and C % 8 != 0 and R > 1
    if on_cuda:  # smaller tiles for the bias-reducing backward (its accumulator is live throughout)
        kind = "forward" if forward else "backward"
        if reduce_bias:
            kind = "reduce_act16" if cfg.act != 0 and itemsize <= 2 else "reduce"
        elements = GPU_TILE_BYTES[kind] // max(2, itemsize)
    else:
        elements = CPU_TILE_ELEMENTS
    # Row tiles as wide as possible (the backward's bias reduction: at most BWD_REDUCE_COLS
    # columns, so that a program walks many rows of a column block); flat tiles are one row.
    reduce_cols = BWD_REDUCE_COLS[narrow_reduce_tiles(cfg.act, itemsize)]
    q = R * C if flat else min(C, reduce_cols) if reduce_bias else C
    block_g = min(next_pow2(cdiv(q, 8)), elements // 8)
    block_r = 1 if flat else min(next_pow2(R), max(1, elements // (8 * block_g)))
    n_c = 1 if flat else cdiv(C, 8 * block_g)
    n_r = cdiv(R * C, 8 * block_g) if flat else cdiv(R, block_r)
    tiles_per_program = 1
    if reduce_bias:
        # A chunk of row tiles per program: the [n_chunks, C] workspace stays small while
        # enough programs run to fill the GPU (the interpreter: two chunks).
        target = BWD_PROGRAMS_PER_SM * sm_count(device) if on_cuda else 2 * n_c
        tiles_per_program = cdiv(n_r, max(1, min(n_r, cdiv(target, n_c))))
    n_chunks = cdiv(n_r, tiles_per_program)
    num_warps = 4 if block_r * block_g * 8 <= 4096 else 8
    options = compiler_options(cfg, itemsize, reduce_bias, forward) if on_cuda else ()
    prefetch = not forward and prefetches(cfg, itemsize, reduce_bias)
    return _Plan(R, C, mode, flat, block_r, block_g, n_c * n_chunks, tiles_per_program, n_chunks, num_warps, options,
                 prefetch)


_PLANS: dict = {}
# GPU plans from an H100 sweep (benchmarks/tune_dropout_add.py, [16384, 4096] and
# [8192, 49152], bf16 and fp32, activation None / gelu / silu, 2026-11-23).
# "reduce_act16": the bias-reducing backward of 16-bit data with an activation, from an H200
# probe (benchmarks/probe_dropout_add_occupancy.py, bf16 [8192, 49152], 2026-12-01 09:27 UTC;
# docs/results/dropout_add_occupancy_h200.txt): 4096-byte tiles took 124-127 registers per
# thread (four programs per SM) and gelu / silu / relu 1.98 / 1.81 / 1.26x the floor,
# 2048-byte tiles 40-72 registers and 1.61 / 1.49-1.51 / 1.08x.
GPU_TILE_BYTES = {"forward": 8192, "backward": 16384, "reduce": 4096, "reduce_act16": 2048}  # tile bytes of x
# ptxas's register limit (Triton's maxnreg) for the 16-bit forward with gelu / gelu_tanh / silu
# and the 16-bit bias-reducing backward with relu or gelu, from the same probe (one sample per
# configuration): forward gelu 1.27 -> 1.17x, gelu_tanh 1.06 -> 0.99x with the limit (they used
# 62-64 registers either way; silu not probed); backward relu 1.075 -> 1.034x, gelu 1.615 ->
# 1.603x, but gelu_tanh 1.497 -> 1.545x and silu 1.504 -> 1.511x, so those two run without it.
GPU_MAX_REGISTERS = 64
REGISTER_LIMITED_BACKWARD = (1, 2)  # relu, gelu
BWD_PROGRAMS_PER_SM = 8  # backward with bias reduction: programs per SM (workspace rows)
# Backward with bias reduction: columns per tile; narrow (64) only for fp16/bf16 with a
# transcendental activation (bf16 gelu: 1.66x floor with 64 columns, 2.5x with 256; relu,
# cheap like no activation, measured 1.69x with 64 at [8192, 49152]).
BWD_REDUCE_COLS = {False: 1024, True: 64}


def narrow_reduce_tiles(act: int, itemsize: int) -> bool:
    """The BWD_REDUCE_COLS key of a bias-reducing backward: narrow tiles for 16-bit data
    with a transcendental activation."""
    return act in TRANSCENDENTAL_ACTIVATIONS and itemsize <= 2


def compiler_options(cfg: Config, itemsize: int, reduce_bias: bool, forward: bool) -> tuple:
    """Triton compiler options of a GPU kernel, as (name, value) pairs: the register limit
    (GPU_MAX_REGISTERS) for the 16-bit forward with gelu / gelu_tanh / silu and the 16-bit
    bias-reducing backward with relu or gelu."""
    if forward:
        limited = cfg.act in TRANSCENDENTAL_ACTIVATIONS
    else:
        limited = reduce_bias and cfg.act in REGISTER_LIMITED_BACKWARD
    return (("maxnreg", GPU_MAX_REGISTERS),) if itemsize <= 2 and limited else ()


def prefetches(cfg: Config, itemsize: int, reduce_bias: bool) -> bool:
    """Whether the backward kernel loads row tile t + 1 before computing tile t: for the
    bias-reducing backward of 16-bit data with an activation, whose programs each loop over
    many tiles and would otherwise stall on every tile's loads (H100, bf16 [8192, 49152]:
    gelu 1.83 -> 1.54x floor, relu 1.27 -> 1.08x; no gain without an activation, and fp32
    was up to 4 % slower with it). BWD_PREFETCH turns it off (probes)."""
    return BWD_PREFETCH and reduce_bias and cfg.act != 0 and itemsize <= 2


BWD_PREFETCH = True


def _plan(shape, t: torch.Tensor, cfg: Config, reduce_bias: bool, forward: bool = False) -> _Plan:
    key = (shape, t.device, t.element_size(), cfg.masked, bool(cfg.shared), cfg.per_row, reduce_bias, cfg.act,
           forward)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _make_plan(shape, t.is_cuda, t.device, t.element_size(), cfg, reduce_bias, forward)
    return plan


def _mask_args(plan: _Plan, shape, seed: Optional[Seed], cfg: Config, device) -> tuple:
    """(seed tensor, seed value, int8 mask, int64 row offsets into it, its column stride)."""
    if plan.mode == MASK_NONE:
        return None, 0, None, None, 0
    if plan.mode != MASK_FROM_PTR:
        return seed.tensor, seed.value, None, None, 0
    mask_shape = mask_shape_of(shape, cfg.shared)
    mask = dropout_mask_tensor(mask_shape, cfg.p, seed, cfg.per_row, device).view(torch.int8)
    index = torch.arange(mask.numel(), device=device, dtype=torch.int64).view(mask_shape).expand(shape)
    row_offsets = (index[..., :1] if len(shape) else index).reshape(-1).contiguous()  # R entries
    col_stride = 0 if len(shape) - 1 in cfg.shared else 1
    return None, 0, mask, row_offsets, col_stride


@functools.lru_cache(maxsize=256)
def _p_constants(p: float) -> tuple:
    return stream.threshold(p), scale_halves(p)


class _Kernel(FastKernel):
    """FastKernel compiling with fp fusion off where results must be bitwise equal to the
    unfused ops (no activation, relu: a * m + r must round the product first, as spec v1
    does, not contract to an fma); on for gelu / gelu_tanh / silu, whose results are
    compared within a tolerance anyway and whose kernels are compute bound."""

    def _jit_launch(self, grid, args, num_warps, options):
        kwargs = dict(zip(self.names, args))
        fusion = kwargs["ACT"] in TRANSCENDENTAL_ACTIVATIONS
        return self.fn[(grid,)](**kwargs, num_warps=num_warps, enable_fp_fusion=fusion, **options)


# gelu, gelu_tanh, silu: compute-bound kernels (fp fusion on, narrow bias-reducing tiles in 16-bit)
TRANSCENDENTAL_ACTIVATIONS = (2, 3, 4)


_FWD = _Kernel(_dropout_add_fwd_kernel) if stream.HAS_TRITON else None
_BWD = _Kernel(_dropout_add_bwd_kernel) if stream.HAS_TRITON else None


def _cdt(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _prepare_forward(x: torch.Tensor, residual: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                     seed: Optional[Seed], cfg: Config) -> tuple:
    """(key, plan, kernel arguments) of the forward launch."""
    shape = x.shape
    plan = _plan(shape, out, cfg, False, forward=True)
    seed_t, seed_v, mask, row_off, col_stride = _mask_args(plan, shape, seed, cfg, x.device)
    threshold, scale = _p_constants(cfg.p)
    key = (shape, x.dtype, residual.dtype, out.dtype, None if bias is None else bias.dtype, cfg.act, plan.mode,
           seed_t is not None, col_stride, plan.flat, plan.block_r, plan.block_g, x.device)
    args = (x, residual, bias, out, seed_t, seed_v, mask, row_off, col_stride,
            plan.R, plan.C, plan.R * plan.C, threshold, *scale,
            cfg.act, bias is not None, plan.mode, seed_t is not None, plan.flat, _cdt(out.dtype),
            not out.is_cuda, plan.block_r, plan.block_g)
    return key, plan, args


def launch_forward(x: torch.Tensor, residual: torch.Tensor, bias: Optional[torch.Tensor], out: torch.Tensor,
                   seed: Optional[Seed], cfg: Config) -> None:
    """out = residual + dropout(act(x + bias)); x, residual, out contiguous of one shape."""
    key, plan, args = _prepare_forward(x, residual, bias, out, seed, cfg)
    _FWD.launch(key, plan.grid, args, plan.num_warps, **dict(plan.options))


def empty_workspace(shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """The bias-gradient workspace (every entry is written by the kernel; tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _prepare_backward(grad: torch.Tensor, x: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      grad_x: torch.Tensor, seed: Optional[Seed], cfg: Config, reduce_bias: bool) -> tuple:
    """(key, plan, kernel arguments, bias-gradient workspace or None) of the backward launch."""
    shape = grad.shape
    plan = _plan(shape, grad, cfg, reduce_bias)
    seed_t, seed_v, mask, row_off, col_stride = _mask_args(plan, shape, seed, cfg, grad.device)
    threshold, scale = _p_constants(cfg.p)
    partial = None
    if reduce_bias:
        partial = empty_workspace((plan.n_chunks, plan.C), compute_dtype(grad.dtype), grad.device)
    if cfg.act == 0:
        x = bias = None  # act'(z) = 1: x + bias is not read
    key = (shape, grad.dtype, None if x is None else x.dtype, grad_x.dtype, None if bias is None else bias.dtype,
           cfg.act, reduce_bias, plan.mode, seed_t is not None, col_stride, plan.flat,
           plan.block_r, plan.block_g, grad.device, plan.prefetch,
           plan.tiles_per_program == 1, plan.tiles_per_program % 16 == 0)  # Triton specializes on these
    args = (grad, x, bias, grad_x, partial, seed_t, seed_v, mask, row_off, col_stride,
            plan.R, plan.C, plan.R * plan.C, plan.tiles_per_program, threshold, *scale,
            cfg.act, bias is not None, reduce_bias, plan.mode, seed_t is not None, plan.flat,
            _cdt(grad.dtype), not grad.is_cuda, plan.prefetch, plan.block_r, plan.block_g)
    return key, plan, args, partial


def launch_backward(grad: torch.Tensor, x: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    grad_x: torch.Tensor, seed: Optional[Seed], cfg: Config,
                    reduce_bias: bool) -> Optional[torch.Tensor]:
    """grad_x = grad * multiplier * act'(x + bias) (grad, x, grad_x contiguous of one shape).
    Returns the [n_chunks, C] workspace of bias-gradient partial sums when reduce_bias."""
    key, plan, args, partial = _prepare_backward(grad, x, bias, grad_x, seed, cfg, reduce_bias)
    _BWD.launch(key, plan.grid, args, plan.num_warps, **dict(plan.options))
    return partial


# Kernel parameters the C++ launcher fills in per call (csrc/fast_dropout.cpp: Source).
_FWD_PARAM_SOURCES = {"x_ptr": 1, "out_ptr": 2, "seed_ptr": 3, "seed_value": 4, "threshold": 5, "scale_hi": 6,
                      "scale_lo": 7, "res_ptr": 8, "bias_ptr": 9}
_BWD_PARAM_SOURCES = {"g_ptr": 1, "gx_ptr": 2, "seed_ptr": 3, "seed_value": 4, "threshold": 5, "scale_hi": 6,
                      "scale_lo": 7, "x_ptr": 8, "bias_ptr": 9, "partial_ptr": 10}


def plan_forward_for_extension(x, residual, bias, out, seed_tensor, seed_value, p, masked, act):
    """The C++ launcher's planner for a forward layout it has not seen (x, residual, out
    contiguous of one shape; no shared dims or per-row seeds): runs the launch, returns
    its recipe (None: not replayable)."""
    cfg = Config(p, masked, (), False, act)
    seed = Seed(seed_tensor, seed_value) if masked else None
    if not use_triton(x):
        apply_dropout_add(x, residual, bias, seed, cfg, out=out)
        return None
    key, plan, args = _prepare_forward(x, residual, bias, out, seed, cfg)
    return _FWD.launch_for_recipe(key, plan.grid, args, plan.num_warps, _FWD_PARAM_SOURCES, **dict(plan.options))


def plan_backward_for_extension(grad, x, bias, grad_x, seed_tensor, seed_value, p, masked, act, reduce_bias):
    """The same for the backward (grad contiguous): (recipe or None, the bias-gradient
    workspace of this call or None); replays allocate a workspace of its shape and dtype."""
    cfg = Config(p, masked, (), False, act)
    seed = Seed(seed_tensor, seed_value) if masked else None
    if not use_triton(grad):
        _, bias_sum = apply_dropout_add_backward(grad, x, bias, seed, cfg, grad_x.dtype, reduce_bias, grad_x=grad_x)
        return None, (bias_sum[None] if reduce_bias else None)
    key, plan, args, partial = _prepare_backward(grad, x, bias, grad_x, seed, cfg, reduce_bias)
    return (_BWD.launch_for_recipe(key, plan.grid, args, plan.num_warps, _BWD_PARAM_SOURCES, **dict(plan.options)),
            partial)


# --------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------
TORCH_ACTIVATIONS = {  # the activations by name, as torch computes them
    None: lambda z: z,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
}

_TORCH_ACTIVATION_GRADS = {
    1: lambda g, z: torch.ops.aten.threshold_backward(g, z, 0),
    2: lambda g, z: torch.ops.aten.gelu_backward(g, z, approximate="none"),
    3: lambda g, z: torch.ops.aten.gelu_backward(g, z, approximate="tanh"),
    4: lambda g, z: torch.ops.aten.silu_backward(g, z),
}


def _pre_activation(x: torch.Tensor, bias: Optional[torch.Tensor], cdt: torch.dtype) -> torch.Tensor:
    z = x.to(cdt)
    return z + bias.to(cdt) if bias is not None else z


def dropout_add_reference(x: torch.Tensor, residual: torch.Tensor, bias: Optional[torch.Tensor],
                          seed: Optional[Seed], cfg: Config, out_dtype: torch.dtype) -> torch.Tensor:
    """residual + dropout(act(x + bias)) with PyTorch ops, in fp32 (fp64 when out_dtype is
    float64), rounded once to out_dtype."""
    cdt = compute_dtype(out_dtype)
    a = _pre_activation(x, bias, cdt)
    if cfg.act:
        a = TORCH_ACTIVATIONS[ACTIVATIONS[cfg.act]](a)
    if cfg.masked:
        a = dropout_reference(a, cfg.p, seed, cfg.shared, cfg.per_row)
    return (residual.to(cdt) + a).to(out_dtype)


def dropout_add_backward_reference(grad: torch.Tensor, x: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                                   seed: Optional[Seed], cfg: Config, x_dtype: torch.dtype,
                                   reduce_bias: bool) -> tuple:
    """(grad_x in x_dtype, bias-gradient column sums in the compute dtype or None)."""
    cdt = compute_dtype(grad.dtype)
    gz = grad.to(cdt)
    if cfg.masked:
        gz = dropout_reference(gz, cfg.p, seed, cfg.shared, cfg.per_row)
    if cfg.act:
        gz = _TORCH_ACTIVATION_GRADS[cfg.act](gz, _pre_activation(x, bias, cdt))
    partial = gz.reshape(-1, gz.shape[-1]).sum(0) if reduce_bias else None
    return gz.to(x_dtype), partial


# --------------------------------------------------------------------------
# dispatch + autograd
# --------------------------------------------------------------------------
def apply_dropout_add(x: torch.Tensor, residual: torch.Tensor, bias: Optional[torch.Tensor],
                      seed: Optional[Seed], cfg: Config, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Forward of a validated call. residual broadcasts to x's shape; out (default: a new
    contiguous tensor of x's shape and the promoted dtype) must be contiguous."""
    out_dtype = torch.promote_types(x.dtype, residual.dtype)
    if out is None:
        out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if x.numel() == 0:
        return out
    if not use_triton(x):
        return out.copy_(dropout_add_reference(x, residual, bias, seed, cfg, out_dtype))
    if residual.shape != x.shape:
        residual = residual.expand(x.shape)
    bias = bias.contiguous() if bias is not None else None
    launch_forward(x.contiguous(), residual.contiguous(), bias, out, seed, cfg)
    return out


def apply_dropout_add_backward(grad: torch.Tensor, x: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                               seed: Optional[Seed], cfg: Config, x_dtype: torch.dtype, reduce_bias: bool,
                               grad_x: Optional[torch.Tensor] = None) -> tuple:
    """(grad_x, bias-gradient column sums in the compute dtype or None) for grad_out `grad`.
    x and bias are needed only when cfg.act is set; grad_x (if given) must be contiguous."""
    if grad_x is None:
        grad_x = torch.empty(grad.shape, dtype=x_dtype, device=grad.device)
    C = grad.shape[-1] if grad.dim() else 1
    if grad.numel() == 0:
        return grad_x, (torch.zeros(C, dtype=compute_dtype(grad.dtype), device=grad.device)
                        if reduce_bias else None)
    if not use_triton(grad):
        gx, bias_sum = dropout_add_backward_reference(grad, x, bias, seed, cfg, x_dtype, reduce_bias)
        return grad_x.copy_(gx), bias_sum
    partial = launch_backward(grad.contiguous(), x.contiguous() if x is not None else None,
                              bias.contiguous() if bias is not None else None, grad_x, seed, cfg, reduce_bias)
    return grad_x, partial.sum(0) if reduce_bias else None  # fixed-order reduction of the chunks


def check_first_order(grad: torch.Tensor, x: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> None:
    """The backward kernels record no graph: refuse create_graph=True where a second-order
    gradient would depend on them, instead of leaving it silently out."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (grad, x, bias)):
        raise RuntimeError("seeddrop.dropout_add: its backward is not differentiable (create_graph=True through "
                           "dropout_add is not supported)")


class DropoutAddFunction(torch.autograd.Function):
    """Autograd for dropout_add. Saved for backward: the seed (an int, or the seed tensor),
    plus x and bias only when an activation is set (its derivative needs x + bias); with
    activation None nothing of x's size is kept. The mask is regenerated from the seed."""

    @staticmethod
    def forward(ctx, x, residual, bias, seed_tensor, seed_value, cfg):
        seed = Seed(seed_tensor, seed_value) if cfg.masked else None
        out = apply_dropout_add(x, residual, bias, seed, cfg)
        keep_inputs = cfg.act != 0
        ctx.save_for_backward(seed_tensor, x if keep_inputs else None, bias if keep_inputs else None)
        ctx.seed_value, ctx.cfg = seed_value, cfg
        ctx.x_dtype, ctx.residual_dtype, ctx.residual_shape = x.dtype, residual.dtype, residual.shape
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    def backward(ctx, grad):
        seed_tensor, x, bias = ctx.saved_tensors
        check_first_order(grad, x, bias)
        cfg = ctx.cfg
        need_x, need_residual, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_residual = grad_bias = None
        if need_x or need_bias:
            seed = Seed(seed_tensor, ctx.seed_value) if cfg.masked else None
            grad_x, bias_sum = apply_dropout_add_backward(grad, x, bias, seed, cfg, ctx.x_dtype, need_bias)
            if need_bias:
                grad_bias = bias_sum.to(ctx.bias_dtype)
        if need_residual:
            grad_residual = grad.to(ctx.residual_dtype)
            if grad_residual.shape != ctx.residual_shape:
                grad_residual = grad_residual.sum_to_size(ctx.residual_shape)
        return grad_x, grad_residual, grad_bias, None, None, None


_apply_dropout_add_function = lean_apply(DropoutAddFunction)


# torch.compile sees these ops (eager calls skip the dispatcher and use DropoutAddFunction).
# Their Python kernels below serve CPU tensors, CUDA tensors until the C++ host path is
# loaded (they load it), and then the calls its kernels leave to Python (csrc/fast_dropout.cpp).
def dropout_add_op_impl(x, residual, bias, seed_tensor, seed_value, p, masked, shared, per_row, act):
    _extension.load_for(x)
    cfg = Config(p, masked, tuple(shared), per_row, act)
    return apply_dropout_add(x, residual, bias, Seed(seed_tensor, seed_value) if masked else None, cfg)


def _dropout_add_op_fake(x, residual, bias, seed_tensor, seed_value, p, masked, shared, per_row, act):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))


def dropout_add_backward_op_impl(grad, x, bias, seed_tensor, seed_value, p, masked, shared, per_row, act,
                                  x_dtype, reduce_bias):
    """(grad_x, bias-gradient column sums; an empty tensor when reduce_bias is False)."""
    _extension.load_for(grad)
    cfg = Config(p, masked, tuple(shared), per_row, act)
    seed = Seed(seed_tensor, seed_value) if masked else None
    grad_x, bias_sum = apply_dropout_add_backward(grad, x, bias, seed, cfg, x_dtype, reduce_bias)
    return grad_x, bias_sum if reduce_bias else grad.new_empty(0, dtype=compute_dtype(grad.dtype))


def _dropout_add_backward_op_fake(grad, x, bias, seed_tensor, seed_value, p, masked, shared, per_row, act,
                                  x_dtype, reduce_bias):
    columns = (grad.shape[-1] if grad.dim() else 1) if reduce_bias else 0
    return grad.new_empty(grad.shape, dtype=x_dtype), grad.new_empty(columns, dtype=compute_dtype(grad.dtype))


_OP_ARGS = ("Tensor? seed_tensor, SymInt seed_value, float p, bool masked, SymInt[] shared, bool per_row, "
            "SymInt act")
dropout_add_backward_op = define_op(
    "dropout_add_backward", f"(Tensor grad, Tensor? x, Tensor? bias, {_OP_ARGS}, ScalarType x_dtype, "
    "bool reduce_bias) -> (Tensor, Tensor)", dropout_add_backward_op_impl, _dropout_add_backward_op_fake)


def _dropout_add_op_setup(ctx, inputs, output):
    x, residual, bias, seed_tensor, *ctx.op_args = inputs
    keep_inputs = ctx.op_args[-1] != 0  # act
    ctx.save_for_backward(seed_tensor, x if keep_inputs else None, bias if keep_inputs else None)
    ctx.x_dtype, ctx.residual_dtype, ctx.residual_shape = x.dtype, residual.dtype, residual.shape
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _dropout_add_op_backward(ctx, grad):
    seed_tensor, x, bias = ctx.saved_tensors
    need_x, need_residual, need_bias = ctx.needs_input_grad[:3]
    grad_x = grad_residual = grad_bias = None
    if need_x or need_bias:
        grad_x, bias_sum = dropout_add_backward_op(grad, x, bias, seed_tensor, *ctx.op_args, ctx.x_dtype, need_bias)
        if need_bias:
            grad_bias = bias_sum.to(ctx.bias_dtype)
    if need_residual:
        grad_residual = grad.to(ctx.residual_dtype).sum_to_size(ctx.residual_shape)
    return (grad_x, grad_residual, grad_bias) + (None,) * 7


dropout_add_op = define_op("dropout_add", f"(Tensor x, Tensor residual, Tensor? bias, {_OP_ARGS}) -> Tensor",
                           dropout_add_op_impl, _dropout_add_op_fake, _dropout_add_op_setup, _dropout_add_op_backward)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def check_activation(activation) -> int:
    """The kernel code of `activation` (None, "relu", "gelu", "gelu_tanh" or "silu")."""
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be None or a str, but got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, but got {activation!r}")
    return ACTIVATIONS.index(activation)


def _broadcasts_to(shape, target) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _check_operands(x: torch.Tensor, residual: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    check_float_tensor(x, "x")
    check_float_tensor(residual, "residual")
    if residual.device != x.device:
        raise ValueError(f"residual must be on x's device {x.device}, but is on {residual.device}")
    if residual.shape != x.shape and not _broadcasts_to(residual.shape, x.shape):
        raise ValueError(f"residual must have x's shape {tuple(x.shape)} or broadcast to it, "
                         f"but got shape {tuple(residual.shape)}")
    if bias is not None:
        check_float_tensor(bias, "bias")
        if bias.device != x.device:
            raise ValueError(f"bias must be on x's device {x.device}, but is on {bias.device}")
        if x.dim() == 0 or tuple(bias.shape) != (x.shape[-1],):
            expected = f"[{x.shape[-1]}]" if x.dim() else "[x.shape[-1]] (x is 0-d, so no bias is possible)"
            raise ValueError(f"bias must have shape {expected}, but got shape {tuple(bias.shape)}")


def _extension_layout(x: torch.Tensor, residual: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """The layouts the C++ host path takes: non-empty contiguous x and residual of one
    shape, bias None or contiguous."""
    return (x.is_contiguous() and residual.shape == x.shape and residual.is_contiguous()
            and (bias is None or bias.is_contiguous()) and x.numel() > 0)


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float = 0.5, training: bool = True, *,
                bias: Optional[torch.Tensor] = None, activation: Optional[str] = None, seed=None,
                shared_dims=()) -> torch.Tensor:
    """residual + dropout(act(x + bias), p), fused into one kernel (forward and backward).

    x: float tensor of any shape; residual: float tensor of x's shape (or broadcasting to
    it); bias: None or shape [x.shape[-1]], any float dtype; activation: None, "relu",
    "gelu" (erf), "gelu_tanh" or "silu" (torch's formulas). The mask is the spec-v1 mask
    of x's shape for `seed` and `shared_dims`, exactly as `seeddrop.dropout` applies it
    (seed: int, one-value integer tensor, per-row integer tensor of shape
    mask_shape[:-1], or None = drawn from torch's generator). training=False or p=0:
    residual + act(x + bias), still fused.

    Output: contiguous, x's shape, dtype torch.promote_types(x.dtype, residual.dtype);
    computed in fp32 (fp64 when that dtype is float64), kept values multiplied by
    1/(1-p) in that precision, rounded once. Backward saves the seed, plus x and bias
    when an activation is set.
    """
    p = check_p(p)
    act = check_activation(activation)
    _check_operands(x, residual, bias)
    shared = normalize_dims(shared_dims, x.dim()) if shared_dims else ()
    masked = bool(training) and p > 0.0
    fast = None
    if x.is_cuda and not shared and not torch.compiler.is_compiling() and _extension_layout(x, residual, bias):
        fast = _extension.load()
        if fast is not None and masked and seed is None and eager_host_draw_allowed():
            return fast.dropout_add_forward(x, residual, bias, None, 0, True, p, True, act)
    if masked:
        rows_shape = mask_shape_of(x.shape, shared)[:-1] if x.dim() and isinstance(seed, torch.Tensor) else None
        seed = resolve_seed(seed, x.device, rows_shape)
        per_row = seed.tensor is not None and seed.tensor.dim() == 1
    else:
        seed, per_row = Seed(None, 0), False
    if fast is not None and not per_row:  # (never while compiling)
        return fast.dropout_add_forward(x, residual, bias, seed.tensor, seed.value, False, p, masked, act)
    cfg = Config(p, masked, shared, per_row, act)
    if torch.compiler.is_compiling():
        return dropout_add_op(x, residual, bias, seed.tensor, seed.value, p, masked, list(shared), per_row, act)
    needs_grad = x.requires_grad or residual.requires_grad or (bias is not None and bias.requires_grad)
    if needs_grad and torch.is_grad_enabled():
        return _apply_dropout_add_function(x, residual, bias, seed.tensor, seed.value, cfg)
    return apply_dropout_add(x, residual, bias, seed if masked else None, cfg)
