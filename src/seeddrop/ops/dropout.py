"""Seeded dropout: Triton kernel, launcher, PyTorch reference and autograd Function.

Covers plain dropout, per-row seed vectors and variational (shared-dims) dropout:
all three are one kernel over a [P, S, Q] view of the tensor (see _common.View).
The only state kept for backward is the seed. On CUDA, calls go through the C++ host path
(csrc/fast_dropout.cpp), which replays launches planned here (plan_for_extension).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch

from .. import stream
from .._common import (
    lean_apply,
    Seed,
    View,
    check_float_tensor,
    check_no_internal_overlap,
    cdiv,
    check_p,
    compute_dtype,
    mask_shape_of,
    next_pow2,
    normalize_dims,
    plan_view,
    resolve_seed,
    eager_host_draw_allowed,
    scale_halves,
    seed_as_tensor,
    sm_count,
    use_triton,
)
from .. import _extension
from .._launch import FastKernel
from .._library import define_op

if stream.HAS_TRITON:
    import triton
    import triton.language as tl
    # Stream helpers imported by bare name (what Inductor needs to copy a user kernel's jit
    # dependencies, should these kernels be handed to torch.compile as triton_ops).
    from ..stream import float64_from_halves, group_keep_tile, keep_at_index, round_to

    @triton.jit(do_not_specialize=["seed_value", "index_offset", "threshold", "scale_hi", "scale_lo"])
    def _dropout_kernel(
        x_ptr, out_ptr, seed_ptr, seed_value: tl.int64, index_offset: tl.int64,
        P, S, Q, s_per_program,
        x_sp, x_ss, x_sq, o_sp, o_ss, o_sq, seed_stride,
        threshold, scale_hi, scale_lo,
        SEED_FROM_PTR: tl.constexpr, PER_ROW: tl.constexpr, ALIGNED: tl.constexpr,
        MASK_ONLY: tl.constexpr, SOFTWARE_BF16: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        """One program: a [BLOCK_P, BLOCK_G * 8] tile of mask coordinates (p, q), its
        mask computed once and applied to s_per_program slices along S."""
        pid = tl.program_id(0).to(tl.int64)
        n_q = tl.cdiv(Q, BLOCK_G * 8)
        n_p = tl.cdiv(P, BLOCK_P)
        pid_q = pid % n_q
        pid_p = (pid // n_q) % n_p
        pid_s = pid // (n_q * n_p)

        rows = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
        groups = pid_q * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64)
        r3 = rows[:, None, None]
        cols = groups[None, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        in_bounds = (r3 < P) & (cols < Q)

        if SEED_FROM_PTR:
            if PER_ROW:
                seed = tl.load(seed_ptr + rows * seed_stride, mask=rows < P, other=0)[:, None]
            else:
                seed = tl.load(seed_ptr)
        else:
            seed = seed_value
        if ALIGNED:  # whole 8-element groups: one Philox call per 8 elements
            group_idx = index_offset // 8 + groups[None, :]
            if PER_ROW:
                group_idx += tl.zeros([BLOCK_P, 1], tl.int64)
            else:
                group_idx += rows[:, None] * (Q // 8)
            keep = group_keep_tile(seed, group_idx, threshold)
        else:
            index = index_offset + cols
            if PER_ROW:
                keep = keep_at_index(seed[:, :, None], index + 0 * r3, threshold)
            else:
                keep = keep_at_index(seed, index + r3 * Q, threshold)

        o_off = r3 * o_sp + cols * o_sq
        if MASK_ONLY:
            tl.store(out_ptr + o_off, keep.to(tl.int8), mask=in_bounds)
        else:
            scale = float64_from_halves(scale_hi, scale_lo)
            if x_ptr.dtype.element_ty != tl.float64:
                scale = scale.to(tl.float32)
            multiplier = tl.where(keep, scale, 0.0)
            x_off = r3 * x_sp + cols * x_sq
            s = pid_s * s_per_program
            s_end = s + s_per_program
            while s < s_end:  # a while loop: Triton's interpreter cannot range() over an argument
                live = in_bounds & (s < S)
                x = tl.load(x_ptr + s * x_ss + x_off, mask=live)
                y = x.to(multiplier.dtype) * multiplier
                tl.store(out_ptr + s * o_ss + o_off, round_to(y, out_ptr.dtype.element_ty, SOFTWARE_BF16), mask=live)
                s += 1


class _Config(NamedTuple):
    view: View
    grid: int
    s_per_program: int
    constexprs: tuple  # ALIGNED, BLOCK_P, BLOCK_G
    num_warps: int


def _configure(view: View, itemsize: int, on_cuda: bool, device, mask_only: bool, per_row: bool,
               index_offset: int) -> _Config:
    """Tile shape and grid for a view: tiles of about 8 KiB-16 KiB of input, coalesced along
    whichever of p or q is contiguous in memory, S split so the GPU gets enough programs."""
    num_warps = None
    if not on_cuda:
        elements = 16384
    elif view.S > 1:
        elements, num_warps = SHARED_DIMS_TILES[itemsize]
    else:
        elements = 8192 if itemsize <= 2 else 4096 if itemsize == 4 else 2048
    q_groups = next_pow2(cdiv(view.Q, 8))
    if view.x_strides[2] != 1 and view.x_strides[0] == 1 and view.P > 1:
        block_g = min(q_groups, 8)
    else:
        block_g = min(q_groups, elements // 8)
    block_p = min(next_pow2(view.P), max(1, elements // (8 * block_g)))
    tiles = cdiv(view.P, block_p) * cdiv(view.Q, block_g * 8)
    if mask_only or not on_cuda:  # the interpreter runs programs one after another
        s_chunks = 1
    else:
        s_chunks = min(view.S, max(1, cdiv(PROGRAMS_PER_SM * sm_count(device), tiles)))
    s_per_program = cdiv(view.S, s_chunks)
    s_chunks = cdiv(view.S, s_per_program)
    aligned = index_offset % 8 == 0 and (per_row or view.P == 1 or view.Q % 8 == 0)
    if num_warps is None:
        num_warps = 4 if block_p * block_g * 8 <= 4096 else 8
    return _Config(view, tiles * s_chunks, s_per_program, (aligned, block_p, block_g), num_warps)


_CONFIGS = {}
# Shared dims (S > 1) on CUDA: (tile elements, num_warps) by itemsize, and programs wanted per
# SM when S is split across programs. Sweep on an H100 (benchmarks/tune_variational.py,
# [N, 64, 768] shared over N, N = 2048 / 8192): many programs (the mask tile regenerated
# for every one or two slices) beat long loops over S. `seeddrop bench` afterwards, with
# (2048, 8) for itemsize <= 4: 0.99-1.01x copy in every dtype. The table is not per device;
# since 2026-12-01 it holds the H200's choice (the device the project is lent), not
# re-measured on an H100. H200 (public call, x3 each): bf16 N = 2048 / 8192 at (2048, 4)
# 1.005 / 1.02x copy, at (2048, 8) 1.10-1.14x through `seeddrop bench`; fp32 at (4096, 8)
# 1.01 / 1.01x, (1024, 4) 1.00 / 1.02x, (2048, 8) 1.03 / 1.05x, (1024, 8) 1.14 / 1.01x; fp64
# at (4096, 4) 1.04 / 1.03x, no better tile among 1024-8192 elements and 4 / 8 warps.
# (Itemsize 1 follows 16-bit; no float dtype has it, and mask-only calls have S = 1.)
SHARED_DIMS_TILES = {1: (2048, 4), 2: (2048, 4), 4: (4096, 8), 8: (4096, 4)}
PROGRAMS_PER_SM = 1024


@functools.lru_cache(maxsize=256)
def _p_constants(p: float):
    return stream.threshold(p), scale_halves(p)

_KERNEL = FastKernel(_dropout_kernel) if stream.HAS_TRITON else None


def _prepare(src: Optional[torch.Tensor], out: torch.Tensor, shared: tuple, seed: Seed, p: float,
             per_row: bool, index_offset: int):
    """(key, config, kernel arguments) of a launch, or None when the strides do not
    collapse to a [P, S, Q] view."""
    mask_only = src is None
    x = out if mask_only else src
    from_ptr = seed.tensor is not None
    key = (x.shape, x.stride(), out.stride(), out.dtype, shared, per_row, from_ptr, mask_only,
           index_offset % 8 == 0, out.device)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        view = plan_view(x.shape, x.stride(), out.stride(), shared, per_row)
        if view is None:
            return None
        cfg = _configure(view, out.element_size(), out.is_cuda, out.device, mask_only, per_row, index_offset)
        _CONFIGS[key] = cfg
    v = cfg.view
    threshold, scale = _p_constants(p)
    args = (x, out, seed.tensor, seed.value, index_offset, v.P, v.S, v.Q, cfg.s_per_program,
            *v.x_strides, *v.out_strides, 1, threshold, *scale,
            from_ptr, per_row, *cfg.constexprs[:1], mask_only, not out.is_cuda, *cfg.constexprs[1:])
    return key, cfg, args


def launch(src: Optional[torch.Tensor], out: torch.Tensor, shared: tuple, seed: Seed, p: float,
           per_row: bool, index_offset: int = 0) -> bool:
    """Run the dropout kernel: out = src * mask (out = int8 mask when src is None).
    Returns False (launching nothing) when the strides do not collapse to a [P, S, Q] view."""
    prepared = _prepare(src, out, shared, seed, p, per_row, index_offset)
    if prepared is None:
        return False
    key, cfg, args = prepared
    _KERNEL.launch(key, cfg.grid, args, cfg.num_warps)
    return True


# Kernel parameters whose values the C++ launcher fills in per call (its Source enum).
_PARAM_SOURCES = {"x_ptr": 1, "out_ptr": 2, "seed_ptr": 3, "seed_value": 4, "threshold": 5,
                  "scale_hi": 6, "scale_lo": 7}


def plan_for_extension(x, out, seed_tensor, seed_value, p, shared, per_row):
    """The C++ launcher's planner (csrc/fast_dropout.cpp), for a layout it has not seen:
    runs out = dropout(x) here, then returns the recipe replaying that launch for later
    calls with the same layout, or None (e.g. strides that need a copy)."""
    seed = Seed(seed_tensor, seed_value)
    prepared = _prepare(x, out, shared, seed, p, per_row, 0)
    if prepared is None:
        apply_dropout(x, p, seed, shared, per_row, out=out)
        return None
    key, cfg, args = prepared
    return _KERNEL.launch_for_recipe(key, cfg.grid, args, cfg.num_warps, _PARAM_SOURCES)


def p_constants(p: float) -> tuple:
    """(threshold, scale_hi, scale_lo) of the kernel for dropout probability p."""
    threshold, (hi, lo) = _p_constants(p)
    return threshold, hi, lo


# --------------------------------------------------------------------------
# PyTorch reference
# --------------------------------------------------------------------------
def mask_reference(mask_shape: tuple, p: float, seed: Seed, per_row: bool, device) -> torch.Tensor:
    """Bool keep mask of `mask_shape` (spec v1), computed with PyTorch ops."""
    seed_t = seed_as_tensor(seed, device)
    if per_row:
        cols = mask_shape[-1]
        keep = stream.keep_rows(seed_t, seed_t.numel(), cols, p)
    else:
        keep = stream.keep_rows(seed_t, 1, max(1, _numel(mask_shape)), p)
        keep = keep.flatten()[: _numel(mask_shape)]
    return keep.reshape(mask_shape)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def dropout_reference(x: torch.Tensor, p: float, seed: Seed, shared: tuple = (), per_row: bool = False,
                      out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x * mask / (1 - p) in PyTorch: product in fp32 (fp64 for float64), rounded once."""
    keep = mask_reference(mask_shape_of(x.shape, shared), p, seed, per_row, x.device)
    cdt = compute_dtype(x.dtype)
    scale = torch.tensor(0.0 if p >= 1 else 1.0 / (1.0 - p), dtype=torch.float64).to(cdt)
    y = (x.to(cdt) * torch.where(keep, scale, torch.zeros((), dtype=cdt))).to(x.dtype)
    if out is None:
        out = torch.empty_like(x)
    return out.copy_(y)


# --------------------------------------------------------------------------
# dispatch + autograd
# --------------------------------------------------------------------------
def apply_dropout(x: torch.Tensor, p: float, seed: Seed, shared: tuple, per_row: bool,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """out (default: empty_like(x)) = dropout(x) for an already validated call."""
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    if not use_triton(x):
        return dropout_reference(x, p, seed, shared, per_row, out=out)
    if launch(x, out, shared, seed, p, per_row):
        return out
    # Strides that do not collapse to [P, S, Q]: run on a canonical copy.
    order = list(shared) + [d for d in range(x.dim()) if d not in shared]
    src = x.permute(order).contiguous()
    tmp = torch.empty_like(src)
    launch(src, tmp, tuple(range(len(shared))), seed, p, per_row)
    inverse = [order.index(d) for d in range(x.dim())]
    return out.copy_(tmp.permute(inverse))


def dropout_mask_tensor(mask_shape: tuple, p: float, seed: Seed, per_row: bool, device) -> torch.Tensor:
    """Bool keep mask of `mask_shape` on `device` (kernel on CUDA / interpreter)."""
    probe = torch.empty((), device=device)
    if not use_triton(probe):
        return mask_reference(mask_shape, p, seed, per_row, device)
    out = torch.empty(mask_shape, dtype=torch.int8, device=device)
    if out.numel():
        launch(None, out, (), seed, p, per_row)
    return out.view(torch.bool)


class DropoutFunction(torch.autograd.Function):
    """Autograd for seeded dropout. Saved for backward: the seed only (an int, or the
    seed tensor of shape [] / [rows]); the mask is regenerated."""

    @staticmethod
    def forward(ctx, x, seed_tensor, seed_value, p, shared, per_row, inplace):
        seed = Seed(seed_tensor, seed_value)
        out = apply_dropout(x, p, seed, shared, per_row, out=x if inplace else None)
        if inplace:
            ctx.mark_dirty(x)
        if seed_tensor is not None:
            ctx.save_for_backward(seed_tensor)
            ctx.seed = None
        else:
            ctx.seed = seed
        ctx.p, ctx.shared, ctx.per_row = p, shared, per_row
        return out

    @staticmethod
    def backward(ctx, grad):
        seed = ctx.seed if ctx.seed is not None else Seed(ctx.saved_tensors[0], 0)
        return apply_dropout(grad, ctx.p, seed, ctx.shared, ctx.per_row), None, None, None, None, None, None


_apply_dropout_function = lean_apply(DropoutFunction)


# The op torch.compile sees (eager calls skip the dispatcher: on CUDA they enter the C++
# host path, elsewhere DropoutFunction). On CUDA, once the extension is built, its C++
# kernels replace this Python one and the Autograd kernel of _library.define_op. An opaque
# op, not a triton_op: see docs/benchmarks.md (GPT-2 step, 2026-11-23).
def _dropout_op_impl(x, seed_tensor, seed_value, p, shared, per_row):
    _extension.load_for(x)
    return apply_dropout(x, p, Seed(seed_tensor, seed_value), tuple(shared), per_row)


def _dropout_op_fake(x, seed_tensor, seed_value, p, shared, per_row):
    return torch.empty_like(x)


def _dropout_op_setup(ctx, inputs, output):
    _, seed_tensor, ctx.seed_value, ctx.p, ctx.shared, ctx.per_row = inputs
    ctx.save_for_backward(seed_tensor)


def _dropout_op_backward(ctx, grad):
    (seed_tensor,) = ctx.saved_tensors
    return dropout_op(grad, seed_tensor, ctx.seed_value, ctx.p, ctx.shared, ctx.per_row), None, None, None, None, None


dropout_op = define_op("dropout", "(Tensor x, Tensor? seed_tensor, SymInt seed_value, float p, SymInt[] shared, "
                       "bool per_row) -> Tensor", _dropout_op_impl, _dropout_op_fake, _dropout_op_setup,
                       _dropout_op_backward)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            seed=None, shared_dims=()) -> torch.Tensor:
    """Seeded drop-in for torch.nn.functional.dropout.

    x: float16/bfloat16/float32/float64 tensor of any shape and strides. seed: int in
    [-2**63, 2**64), an integer tensor with one value, an integer tensor of shape
    mask_shape[:-1] (one seed per row), or None (drawn from torch's generator).
    shared_dims: dims along which the mask is shared (variational dropout).
    Returns a tensor laid out like torch.empty_like(x) (x itself when inplace).
    Backward saves only the seed.
    """
    p = check_p(p)
    check_float_tensor(x)
    shared = normalize_dims(shared_dims, x.dim()) if shared_dims else ()
    if not training or p == 0.0:
        return x
    if inplace:
        check_no_internal_overlap(x)
    fast = _extension.load() if x.is_cuda and not inplace and not torch.compiler.is_compiling() else None
    if fast is not None and seed is None and eager_host_draw_allowed():
        return fast.dropout_forward(x, None, 0, True, p, shared, False)
    rows_shape = mask_shape_of(x.shape, shared)[:-1] if x.dim() and isinstance(seed, torch.Tensor) else None
    seed = resolve_seed(seed, x.device, rows_shape)
    per_row = seed.tensor is not None and seed.tensor.dim() == 1
    if fast is not None:  # (never while compiling)
        return fast.dropout_forward(x, seed.tensor, seed.value, False, p, shared, per_row)
    if torch.compiler.is_compiling():
        out = dropout_op(x, seed.tensor, seed.value, p, list(shared), per_row)
        return x.copy_(out) if inplace else out
    if x.requires_grad and torch.is_grad_enabled():
        return _apply_dropout_function(x, seed.tensor, seed.value, p, shared, per_row, inplace)
    return apply_dropout(x, p, seed, shared, per_row, out=x if inplace else None)


def dropout_mask(shape, p: float, seed, *, device=None, shared_dims=()) -> torch.Tensor:
    """Bool tensor of `shape` (True = kept): the keep decisions `dropout` applies for this
    shape, p, seed and shared_dims (a broadcast view when shared_dims is given)."""
    p = check_p(p)
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must not have negative sizes, but got {shape}")
    if seed is None:
        raise ValueError("dropout_mask needs an explicit seed (an int or an integer tensor)")
    device = torch.device(device) if device is not None else (
        seed.device if isinstance(seed, torch.Tensor) else torch.device("cpu"))
    shared = normalize_dims(shared_dims, len(shape)) if shared_dims else ()
    mask_shape = mask_shape_of(shape, shared)
    seed = resolve_seed(seed, device, mask_shape[:-1] if mask_shape else None)
    per_row = seed.tensor is not None and seed.tensor.dim() == 1
    return dropout_mask_tensor(mask_shape, p, seed, per_row, device).expand(shape)
