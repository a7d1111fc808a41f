"""The two baseline kernels of Triton's "low-memory dropout" tutorial, used only by
the benchmark (``python -m seeddrop bench``).

* :func:`masked_dropout` reads a keep mask that was computed beforehand and stored
  in memory (one byte per element here, as torch stores its dropout mask).
* :func:`philox_dropout` is the tutorial's seeded dropout: one Philox call per
  element through ``tl.rand(seed, offsets)`` and ``keep = rand > p``.

Both are written from the tutorial's description: contiguous tensors, int32
offsets (fewer than 2**31 elements), ``out = keep ? x / (1 - p) : 0``.
"""
from __future__ import annotations

import torch

from .stream import HAS_TRITON

BLOCK_SIZE = 1024  # the tutorial's choice

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _masked_dropout_kernel(x_ptr, keep_ptr, out_ptr, n_elements, p, BLOCK_SIZE: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        in_bounds = offsets < n_elements
        x = tl.load(x_ptr + offsets, mask=in_bounds)
        keep = tl.load(keep_ptr + offsets, mask=in_bounds)
        out = tl.where(keep != 0, x / (1 - p), 0.0)
        tl.store(out_ptr + offsets, out, mask=in_bounds)

    @triton.jit(do_not_specialize=["seed"])
    def _philox_dropout_kernel(x_ptr, out_ptr, n_elements, p, seed, BLOCK_SIZE: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        in_bounds = offsets < n_elements
        x = tl.load(x_ptr + offsets, mask=in_bounds)
        keep = tl.rand(seed, offsets) > p
        out = tl.where(keep, x / (1 - p), 0.0)
        tl.store(out_ptr + offsets, out, mask=in_bounds)


def _check(x: torch.Tensor, name: str) -> None:
    if not HAS_TRITON:
        raise RuntimeError("the tutorial baselines need triton; pip install triton")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (the tutorial kernels use flat offsets)")
    if x.numel() >= 2**31:
        raise ValueError(f"{name} has {x.numel()} elements; the tutorial kernels use int32 offsets (< 2**31)")


def masked_dropout(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """Tutorial baseline 1: ``keep ? x / (1 - p) : 0`` reading the precomputed mask
    ``keep`` (bool or integer tensor of x's shape, contiguous)."""
    _check(x, "x")
    if keep.shape != x.shape or not keep.is_contiguous():
        raise ValueError(f"keep must be contiguous with x's shape {tuple(x.shape)}, got {tuple(keep.shape)}")
    out = torch.empty_like(x)
    n = x.numel()
    _masked_dropout_kernel[(triton.cdiv(n, BLOCK_SIZE),)](x, keep, out, n, p, BLOCK_SIZE=BLOCK_SIZE)
    return out


def philox_dropout(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Tutorial baseline 2: seeded dropout with one Philox call per element
    (``tl.rand(seed, offsets) > p`` keeps an element); x contiguous."""
    _check(x, "x")
    out = torch.empty_like(x)
    n = x.numel()
    _philox_dropout_kernel[(triton.cdiv(n, BLOCK_SIZE),)](x, out, n, p, seed, BLOCK_SIZE=BLOCK_SIZE)
    return out

