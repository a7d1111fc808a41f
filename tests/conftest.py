"""Shared test helpers: an independent NumPy implementation of mask stream spec v1
(docs/mask_stream.md, issue 2) and the spec's rounding rule, written from the spec and
the Philox paper without using anything from seeddrop.stream.

Every test file compares seeddrop against these functions; test_stream.py checks them
against Random123's known-answer vectors first.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import seeddrop._common

# True: CPU tensors run the Triton kernels in Triton's interpreter; False: the PyTorch reference.
INTERPRET = seeddrop._common.TRITON_INTERPRET

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# ---------------------------------------------------------------------------
# Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as
# 1, 2, 3", SC 2011), in NumPy uint64 arithmetic.
# ---------------------------------------------------------------------------
_U32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)  # Random123 PHILOX_M4x32_0/1
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)  # Random123 PHILOX_W32_0/1 (key bumps)


def np_philox4x32_10(ctr, key):
    """Random123 philox4x32_10(ctr, key) on arrays of uint32 values (held as uint64).

    ctr: 4 array-likes, key: 2 array-likes (broadcast together). Returns 4 uint64 arrays.
    Round function: (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0) with (hi0, lo0) = M0 * c0,
    (hi1, lo1) = M1 * c2; the key is bumped by (W0, W1) before rounds 2..10.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in ctr)
    k0, k1 = (np.asarray(k, dtype=np.uint64) for k in key)
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + _W0) & _U32
            k1 = (k1 + _W1) & _U32
        prod0 = _M0 * c0  # < 2**64: exact in uint64
        prod1 = _M1 * c2
        c0, c1, c2, c3 = (
            (prod1 >> _SHIFT32) ^ c1 ^ k0,
            prod1 & _U32,
            (prod0 >> _SHIFT32) ^ c3 ^ k1,
            prod0 & _U32,
        )
    return c0, c1, c2, c3


def np_threshold(p: float) -> int:
    """T = floor(p * 65536 + 1/2), evaluated exactly (p is a binary64 value)."""
    return math.floor(Fraction(p) * 65536 + Fraction(1, 2))


def np_draws(seed: int, index) -> np.ndarray:
    """The 16-bit draws u (int64 array) of logical indices `index` under `seed` (spec v1)."""
    seed %= 1 << 64
    index = np.asarray(index, dtype=np.uint64)
    q = index >> np.uint64(3)
    lane = (index & np.uint64(7)).astype(np.int64)
    zero = np.zeros_like(q)
    words = np.stack(
        np_philox4x32_10((q & _U32, q >> _SHIFT32, zero, zero), (seed & 0xFFFFFFFF, seed >> 32)), axis=-1
    )
    word = np.take_along_axis(words, (lane >> 1)[..., None], axis=-1)[..., 0]
    return ((word >> (np.uint64(16) * (lane & 1).astype(np.uint64))) & np.uint64(0xFFFF)).astype(np.int64)


def np_keep(seed: int, index, p: float) -> np.ndarray:
    """Spec v1 keep decisions (bool array) for logical indices `index` (ints >= 0, < 2**64)
    under the 64-bit `seed` (any int; taken modulo 2**64): kept iff u >= T."""
    return np_draws(seed, index) >= np_threshold(p)


def mask_shape(shape, shared_dims=()) -> tuple:
    nd = len(shape)
    shared = {d % nd for d in shared_dims}
    return tuple(1 if d in shared else s for d, s in enumerate(shape))


def np_mask(shape, p: float, seed, shared_dims=()) -> torch.Tensor:
    """Bool torch tensor of `shape`: the spec's mask (broadcast along shared_dims).

    seed: an int or a one-value integer tensor (one key, row-major logical index over the
    mask shape) or an integer tensor of shape mask_shape[:-1] (per-row keys; index = column)."""
    mshape = mask_shape(shape, shared_dims)
    n = math.prod(mshape)
    if isinstance(seed, torch.Tensor) and seed.dtype == torch.uint64:
        seed = seed.view(torch.int64)  # same bits; int() of a uint64 >= 2**63 fails
    if isinstance(seed, torch.Tensor) and seed.numel() == 1:
        seed = int(seed.reshape(()))
    if isinstance(seed, torch.Tensor):
        assert tuple(seed.shape) == mshape[:-1], (seed.shape, mshape)
        cols = mshape[-1]
        seeds = [int(s) for s in seed.reshape(-1)]
        rows = [np_keep(s, np.arange(cols, dtype=np.uint64), p) for s in seeds]
        flat = np.concatenate(rows) if rows else np.zeros(0, dtype=bool)
    else:
        flat = np_keep(int(seed), np.arange(n, dtype=np.uint64), p)
    return torch.from_numpy(flat.reshape(mshape).copy()).expand(shape)


def spec_dropout(x: torch.Tensor, p: float, mask: torch.Tensor) -> torch.Tensor:
    """Spec rounding: kept -> x * (1/(1-p)) and dropped -> x * 0, products in fp32 (fp64
    for float64 x) with the scale rounded to that type, rounded once to x's dtype."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(cdt)
    scale = torch.tensor(1.0 / (1.0 - p) if p < 1 else 0.0, dtype=torch.float64).to(cdt)
    return torch.where(mask, xc * scale, xc * 0.0).to(x.dtype)


_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def assert_bitwise_equal(got: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Same dtype, shape and bits (signed zeros included); NaNs must sit at the same
    positions (their payload is not specified)."""
    assert got.dtype == expected.dtype, msg
    assert got.shape == expected.shape, msg
    g, e = got.contiguous(), expected.contiguous()
    if not g.dtype.is_floating_point:
        assert torch.equal(g, e), msg
        return
    nan_g, nan_e = torch.isnan(g), torch.isnan(e)
    assert torch.equal(nan_g, nan_e), f"{msg}: NaN positions differ"
    ok = nan_e | (g.view(_INT_VIEW[g.dtype]) == e.view(_INT_VIEW[e.dtype]))
    if not bool(ok.all()):
        bad = (~ok).nonzero()[:5].tolist()
        raise AssertionError(f"{msg}: {int((~ok).sum())} elements differ, first at {bad}")


def binomial_bound(n: int, prob: float, sigmas: float = 6.0) -> float:
    """sigmas * standard deviation of a Binomial(n, prob) count."""
    return sigmas * math.sqrt(n * prob * (1.0 - prob))


needs_interpreter = pytest.mark.skipif(
    not INTERPRET, reason="kernel-level check: needs TRITON_INTERPRET=1 (the Triton interpreter)"
)

