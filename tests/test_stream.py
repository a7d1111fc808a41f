"""Mask stream spec v1 (seeddrop.stream): Philox known answers, the PyTorch and Triton
implementations against the independent NumPy reference in conftest.py, and 64-bit
index arithmetic at kernel level."""

import numpy as np
import pytest
import torch

import seeddrop
from seeddrop import stream
from seeddrop._common import Seed, plan_view
from seeddrop.ops.dropout import launch

from conftest import (
    INTERPRET,
    assert_bitwise_equal,
    needs_interpreter,
    np_draws,
    np_keep,
    np_philox4x32_10,
    np_threshold,
    spec_dropout,
)

if stream.HAS_TRITON:
    import triton
    import triton.language as tl

# Random123 known-answer vectors: github.com/DEShawResearch/random123, file
# tests/kat_vectors, the three "philox4x32 10" lines (columns: name, rounds,
# counter[4], key[2], expected output[4], all hex uint32).
PHILOX4X32_10_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# Seeds covering the whole accepted range [-2**63, 2**64) (taken modulo 2**64).
EDGE_SEEDS = [0, 1, -1, -(2**63), 2**63 - 1, 2**63, 2**63 + 12345, 2**64 - 1, 2**32, 2**32 - 1, -(2**32)]


def _int64(seed: int) -> int:
    seed %= 1 << 64
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _random_seeds(gen, n):
    return [int(v) for v in torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen)] + [
        int(v) + 2**63 for v in torch.randint(0, 2**63 - 1, (n,), generator=gen)
    ]


# The one binary64 p where evaluating floor(65536 p + 1/2) in floating point differs from
# the exact value: 65536 p = 1/2 - 2**-54, so 65536 p + 1/2 rounds (ties to even) up to 1.
P_FLOAT_HALF_TIE = 2.0**-17 - 2.0**-70


def _boundary_ps():
    """p values where T = floor(65536 p + 1/2) is exact (k/65536) or flips ((k+1/2)/65536),
    and one binary64 step either side of them (P_FLOAT_HALF_TIE has its own test)."""
    ps = []
    for k in (0, 1, 2, 3, 7, 1000, 16384, 32767, 32768, 49151, 65534, 65535):
        for base in (k / 65536, (k + 0.5) / 65536):
            if base <= 1.0:
                ps += [base, float(np.nextafter(base, 0.0)), float(np.nextafter(base, 1.0))]
    return sorted({p for p in ps if 0.0 <= p <= 1.0 and p != P_FLOAT_HALF_TIE} | {0.0, 1.0})


# ---------------------------------------------------------------------------
# Philox known answers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ctr,key,expected", PHILOX4X32_10_KAT)
def test_numpy_reference_philox_known_answers(ctr, key, expected):
    got = np_philox4x32_10(ctr, key)
    assert tuple(int(w) for w in got) == expected


@pytest.mark.parametrize("ctr,key,expected", PHILOX4X32_10_KAT)
def test_torch_philox_known_answers(ctr, key, expected):
    c = [torch.tensor(v, dtype=torch.int64) for v in ctr]
    k = [torch.tensor(v, dtype=torch.int64) for v in key]
    got = stream.philox4x32_10(*c, *k)
    assert tuple(int(w) for w in got) == expected


def test_torch_philox_matches_numpy_on_random_inputs():
    gen = torch.Generator().manual_seed(0)
    words = torch.randint(0, 2**32, (6, 4096), generator=gen, dtype=torch.int64)
    got = torch.stack(stream.philox4x32_10(*words))
    expected = np.stack(np_philox4x32_10(words[:4].numpy(), words[4:].numpy()))
    assert np.array_equal(got.numpy().astype(np.uint64), expected)


if stream.HAS_TRITON:

    @triton.jit
    def _philox_probe_kernel(ctr_ptr, seed_ptr, out_ptr, N: tl.constexpr):
        """out[i, :] = tl.philox(seed[i], ctr[i, 0..3]) (10 rounds), uint32 words as int64."""
        i = tl.arange(0, N)
        c0 = tl.load(ctr_ptr + i * 4 + 0).to(tl.uint32)
        c1 = tl.load(ctr_ptr + i * 4 + 1).to(tl.uint32)
        c2 = tl.load(ctr_ptr + i * 4 + 2).to(tl.uint32)
        c3 = tl.load(ctr_ptr + i * 4 + 3).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(tl.load(seed_ptr + i), c0, c1, c2, c3, 10)
        tl.store(out_ptr + i * 4 + 0, w0.to(tl.int64))
        tl.store(out_ptr + i * 4 + 1, w1.to(tl.int64))
        tl.store(out_ptr + i * 4 + 2, w2.to(tl.int64))
        tl.store(out_ptr + i * 4 + 3, w3.to(tl.int64))

    @triton.jit
    def _philox_words_probe_kernel(seed_ptr, counter_ptr, out_ptr, N: tl.constexpr):
        """out[i, :] = stream.philox_words(seed[i], counter[i]), uint32 words as int64."""
        i = tl.arange(0, N)
        w0, w1, w2, w3 = stream.philox_words(tl.load(seed_ptr + i), tl.load(counter_ptr + i))
        tl.store(out_ptr + i * 4 + 0, w0.to(tl.int64))
        tl.store(out_ptr + i * 4 + 1, w1.to(tl.int64))
        tl.store(out_ptr + i * 4 + 2, w2.to(tl.int64))
        tl.store(out_ptr + i * 4 + 3, w3.to(tl.int64))

    @triton.jit
    def _keep_at_index_probe_kernel(seed_ptr, index_ptr, out_ptr, threshold, N: tl.constexpr):
        i = tl.arange(0, N)
        keep = stream.keep_at_index(tl.load(seed_ptr + i), tl.load(index_ptr + i), threshold)
        tl.store(out_ptr + i, keep.to(tl.int8))

    @triton.jit
    def _group_tile_probe_kernel(seed_ptr, group_ptr, out_ptr, threshold, A: tl.constexpr, B: tl.constexpr):
        """out[a, b, l] = decision of element 8 * group[a, b] + l under key seed[a]."""
        a = tl.arange(0, A)[:, None]
        b = tl.arange(0, B)[None, :]
        seed = tl.load(seed_ptr + tl.arange(0, A))[:, None]
        keep = stream.group_keep_tile(seed, tl.load(group_ptr + a * B + b), threshold)
        off = (a * B + b)[:, :, None] * 8 + tl.arange(0, 8)[None, None, :]
        tl.store(out_ptr + off, keep.to(tl.int8))

    @triton.jit
    def _round_probe_kernel(y_ptr, out_ptr, N: tl.constexpr, SOFTWARE_BF16: tl.constexpr):
        i = tl.arange(0, N)
        y = tl.load(y_ptr + i)
        tl.store(out_ptr + i, stream.round_to(y, out_ptr.dtype.element_ty, SOFTWARE_BF16))


@needs_interpreter
def test_triton_philox_known_answers():
    """tl.philox is Random123's philox4x32-10 (stream.philox_words, which the kernels call,
    computes the same rounds: test_triton_philox_words_match_numpy_reference)."""
    n = 4
    rows = PHILOX4X32_10_KAT + [PHILOX4X32_10_KAT[0]]
    ctr = torch.tensor([list(c) for c, _, _ in rows], dtype=torch.int64)
    seed = torch.tensor([_int64(k[0] | (k[1] << 32)) for _, k, _ in rows], dtype=torch.int64)
    out = torch.full((n, 4), -1, dtype=torch.int64)
    _philox_probe_kernel[(1,)](ctr, seed, out, N=n)
    for row, (_, _, expected) in zip(out.tolist(), rows):
        assert tuple(row) == expected


def check_philox_words(device):
    """stream.philox_words (the kernels' Philox, with wide multiplies) == the NumPy
    Random123 reference for key = seed, counter = (low word, high word, 0, 0)."""
    gen = torch.Generator().manual_seed(1)
    n = 1024
    seed = torch.randint(-(2**63), 2**63 - 1, (n,), generator=gen, dtype=torch.int64)
    counter = torch.randint(0, 2**62, (n,), generator=gen, dtype=torch.int64)
    seed[:4] = torch.tensor([0, -1, 2**63 - 1, -(2**63)])
    counter[:5] = torch.tensor([0, 1, 2**32 - 1, 2**32, 2**61 + 12345])
    out = torch.full((n, 4), -1, dtype=torch.int64, device=device)
    _philox_words_probe_kernel[(1,)](seed.to(device), counter.to(device), out, N=n)
    key = seed.numpy().view(np.uint64)
    ctr = counter.numpy().view(np.uint64)
    expected = np.stack(np_philox4x32_10((ctr & 0xFFFFFFFF, ctr >> np.uint64(32), 0, 0),
                                         (key & 0xFFFFFFFF, key >> np.uint64(32))), axis=1)
    assert np.array_equal(out.cpu().numpy().astype(np.uint64), expected)


@needs_interpreter
def test_triton_philox_words_match_numpy_reference():
    check_philox_words("cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_philox_words_match_numpy_reference():
    check_philox_words("cuda")


# ---------------------------------------------------------------------------
# the stream against the NumPy reference
# ---------------------------------------------------------------------------
def test_numpy_reference_lane_layout():
    """Spot-check the reference's lane rule from the KAT: counter (0, 0, 0, 0), key (0, 0)
    is element group q = 0 of seed 0; lane l takes 16 bits of word l >> 1, low half first."""
    words = [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    expected = [(words[l >> 1] >> (16 * (l & 1))) & 0xFFFF for l in range(8)]
    assert np_draws(0, np.arange(8)).tolist() == expected
    # the last group, q = (2**64 - 1) >> 3, is counter (0xffffffff, 0x1fffffff, 0, 0)
    w = [int(v) for v in np_philox4x32_10((0xFFFFFFFF, 0x1FFFFFFF, 0, 0), (0x89ABCDEF, 0x01234567))]
    expected = [(w[l >> 1] >> (16 * (l & 1))) & 0xFFFF for l in range(8)]
    index = np.arange(2**64 - 8, 2**64, dtype=np.uint64)
    assert np_draws(0x0123456789ABCDEF, index).tolist() == expected


def test_threshold_matches_spec():
    for p in _boundary_ps() + [0.1, 0.25, 0.5, 1 / 3, 0.9, 0.999]:
        assert stream.threshold(p) == np_threshold(p), p


def test_threshold_exact_at_float_half_tie():
    """Spec v1: T = floor(p * 65536 + 0.5) as a real number. For p = 2**-17 - 2**-70,
    p * 65536 + 0.5 = 1 - 2**-54 exactly, so T = 0 (every draw kept); a float evaluation
    of p * 65536.0 + 0.5 rounds to 1.0 and gives T = 1."""
    assert float(np.nextafter(0.5 / 65536, 0.0)) == P_FLOAT_HALF_TIE
    assert np_threshold(P_FLOAT_HALF_TIE) == 0
    assert stream.threshold(P_FLOAT_HALF_TIE) == 0


@pytest.mark.parametrize("seed", EDGE_SEEDS)
def test_keep_at_indices_matches_reference(seed):
    gen = torch.Generator().manual_seed(abs(seed) % 1000 + 1)
    index = torch.cat([
        torch.arange(0, 64),
        torch.randint(0, 2**31, (64,), generator=gen),
        torch.randint(2**31 - 16, 2**31 + 16, (32,), generator=gen),
        torch.randint(2**32 - 16, 2**32 + 16, (32,), generator=gen),
        torch.randint(2**32, 2**62, (64,), generator=gen),
        torch.arange(2**63 - 40, 2**63 - 1),
        torch.tensor([2**63 - 1]),
    ])
    for p in (0.0, 0.1, 0.5, float(torch.rand((), generator=gen)), 0.999, 1.0):
        got = stream.keep_at_indices(torch.tensor(_int64(seed)), index, p)
        expected = np_keep(seed, index.numpy().astype(np.uint64), p)
        assert np.array_equal(got.numpy(), expected), (seed, p)


def test_keep_at_indices_broadcasts_seed():
    gen = torch.Generator().manual_seed(5)
    seeds = torch.randint(-(2**63), 2**63 - 1, (16, 1), generator=gen)
    index = torch.randint(0, 2**40, (1, 50), generator=gen)
    got = stream.keep_at_indices(seeds, index, 0.3)
    for r in range(16):
        assert np.array_equal(got[r].numpy(), np_keep(int(seeds[r, 0]), index[0].numpy().astype(np.uint64), 0.3))


@pytest.mark.parametrize("offset", [0, 3, 8, 2**31 - 5, 2**32 + 1, 2**40, 2**62 + 7, 2**63 - 200])
def test_keep_rows_matches_reference(offset):
    gen = torch.Generator().manual_seed(offset % 997)
    for seed in _random_seeds(gen, 2) + [0, 2**64 - 1]:
        p = float(torch.rand((), generator=gen))
        n_rows, n_cols = 3, 37
        # one key: rows continue the index
        got = stream.keep_rows(torch.tensor(_int64(seed)), n_rows, n_cols, p, index_offset=offset)
        expected = np_keep(seed, offset + np.arange(n_rows * n_cols, dtype=np.uint64), p).reshape(n_rows, n_cols)
        assert np.array_equal(got.numpy(), expected), (seed, p)
        # one key per row: every row starts at the offset
        seeds = torch.tensor([_int64(seed + r) for r in range(n_rows)])
        got = stream.keep_rows(seeds, n_rows, n_cols, p, index_offset=offset)
        for r in range(n_rows):
            assert np.array_equal(got[r].numpy(), np_keep(seed + r, offset + np.arange(n_cols, dtype=np.uint64), p))


def test_boundary_p_values_decide_exactly():
    """At p = k/65536 an element with u == k is kept; at p = (k+1/2)/65536 it is dropped;
    one binary64 step either side of those p changes nothing (checked on elements whose
    draw is k - 1, k and k + 1)."""
    seed = 2**63 + 99
    index = np.arange(1 << 16, dtype=np.uint64)
    u = np_draws(seed, index)
    ps = _boundary_ps()
    ks = sorted({np_threshold(p) for p in ps})
    chosen = np.concatenate([np.nonzero(np.isin(u, [k - 1, k, k + 1]))[0][:24] for k in ks])
    idx = torch.from_numpy(chosen.astype(np.int64))
    for p in ps:
        expected = u[chosen] >= np_threshold(p)
        got = stream.keep_at_indices(torch.tensor(_int64(seed)), idx, p)
        assert np.array_equal(got.numpy(), expected), p
        mask = seeddrop.dropout_mask((1 << 16,), p, seed)
        assert np.array_equal(mask.numpy()[chosen], expected), p


@pytest.mark.parametrize("seed", EDGE_SEEDS[:6] + [2**64 - 1])
def test_dropout_mask_matches_reference(seed):
    gen = torch.Generator().manual_seed(seed % 1009)
    n = 5000 if INTERPRET else 20000
    for p in (0.1, float(torch.rand((), generator=gen)), 0.5, 0.9):
        got = seeddrop.dropout_mask((n,), p, seed)
        assert got.dtype == torch.bool and got.shape == (n,)
        assert np.array_equal(got.numpy(), np_keep(seed, np.arange(n, dtype=np.uint64), p)), (seed, p)
    got = seeddrop.dropout_mask((7, 13, 3), 0.4, seed)
    assert np.array_equal(got.numpy().ravel(), np_keep(seed, np.arange(7 * 13 * 3, dtype=np.uint64), 0.4))


@needs_interpreter
def test_triton_keep_at_index_matches_reference():
    gen = torch.Generator().manual_seed(11)
    n = 512
    seeds = torch.tensor([_int64(s) for s in (EDGE_SEEDS * 50)[:n]])
    index = torch.cat([
        torch.randint(0, 2**32 + 64, (n // 4,), generator=gen),
        torch.randint(2**32, 2**62, (n // 4,), generator=gen),
        torch.randint(2**63 - 2**20, 2**63 - 1, (n // 4,), generator=gen),
        torch.arange(n // 4) + (2**31 - n // 8),
    ])
    for p in (0.0, 0.3, 0.5, 0.97, 1.0):
        out = torch.full((n,), -1, dtype=torch.int8)
        _keep_at_index_probe_kernel[(1,)](seeds, index, out, stream.threshold(p), N=n)
        expected = np.array([np_keep(int(s), np.array([int(i)], dtype=np.uint64), p)[0]
                             for s, i in zip(seeds, index)])
        assert np.array_equal(out.numpy().astype(bool), expected), p
        assert set(out.unique().tolist()) <= {0, 1}


@needs_interpreter
def test_triton_group_keep_tile_matches_reference():
    gen = torch.Generator().manual_seed(12)
    a, b = 4, 16
    seeds = torch.tensor([_int64(s) for s in (0, -1, 2**63 + 5, 123456789)])
    groups = torch.cat([
        torch.arange(b // 2).repeat(a, 1),
        torch.randint(2**29, 2**60, (a, b // 2), generator=gen),
    ], dim=1).contiguous()
    p = 0.37
    out = torch.full((a, b, 8), -1, dtype=torch.int8)
    _group_tile_probe_kernel[(1,)](seeds, groups, out, stream.threshold(p), A=a, B=b)
    for r in range(a):
        idx = (groups[r].numpy().astype(np.uint64)[:, None] * np.uint64(8) + np.arange(8, dtype=np.uint64))
        assert np.array_equal(out[r].numpy().astype(bool), np_keep(int(seeds[r]), idx, p))


@needs_interpreter
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype,software_bf16", [
    (torch.bfloat16, True), (torch.float16, False), (torch.float32, False), (torch.float64, False)])
def test_triton_round_to_is_round_to_nearest_even(dtype, software_bf16):
    """stream.round_to rounds fp32 (fp64 for float64) like torch's .to(dtype), including ties,
    overflow to inf, subnormals, inf and NaN (NaN payloads are not compared)."""
    gen = torch.Generator().manual_seed(3)
    n = 4096
    src_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if src_dtype == torch.float32:
        bits = torch.randint(-(2**31), 2**31, (n,), generator=gen, dtype=torch.int64).to(torch.int32)
        # exact ties and neighbours of ties for bf16 (low 16 bits around 0x8000) and fp16
        bits[:512] = (bits[:512] & ~0xFFFF) | 0x8000
        bits[512:768] = (bits[512:768] & ~0x1FFF) | 0x1000
        y = bits.view(torch.float32)
        y[768:776] = torch.tensor([float("inf"), -float("inf"), float("nan"), 0.0, -0.0,
                                   3.4028234663852886e38, 65520.0, -65519.0])
    else:
        y = torch.randn(n, generator=gen, dtype=torch.float64) * 1e3
    out = torch.empty(n, dtype=dtype)
    _round_probe_kernel[(1,)](y, out, N=n, SOFTWARE_BF16=software_bf16)
    assert_bitwise_equal(out, y.to(dtype))


# ---------------------------------------------------------------------------
# 64-bit index arithmetic inside the dropout kernel (CPU, Triton interpreter)
# ---------------------------------------------------------------------------
OFFSETS = [2**31 - 8, 2**31 - 3, 2**31, 2**32 - 16, 2**32 + 5, 2**40, 2**40 + 1, 2**62, 2**62 + 3]


def _views():
    """(name, x) whose [P, S, Q] plans exercise the P == 1 path, the aligned row path
    (Q % 8 == 0) and the unaligned row path."""
    base = torch.randn(5, 40)
    yield "flat", torch.randn(203), (1, 1, 203)
    yield "rows_aligned", base[:, :24], (5, 1, 24)
    yield "rows_unaligned", base[:, 1:14], (5, 1, 13)


@needs_interpreter
@pytest.mark.parametrize("offset", OFFSETS)
def test_kernel_index_offset_64bit(offset):
    """launch(..., index_offset=K): element e of the tensor takes logical index K + e."""
    gen = torch.Generator().manual_seed(offset % 1013)
    for name, x, pqs in _views():
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        assert tuple(plan_view(x.shape, x.stride(), out.stride(), (), False)[:3]) == pqs
        for seed_value in (_int64(2**63 + 77), -5, 2**31 + 9):
            p = float(torch.rand((), generator=gen))
            idx = offset + np.arange(x.numel(), dtype=np.uint64)
            mask = torch.from_numpy(np_keep(seed_value, idx, p).reshape(x.shape))
            for seed in (Seed(None, seed_value), Seed(torch.tensor(seed_value), 0)):
                out.fill_(float("nan"))
                assert launch(x, out, (), seed, p, per_row=False, index_offset=offset)
                assert_bitwise_equal(out, spec_dropout(x, p, mask), f"{name} offset={offset} seed={seed}")
            # mask-only launch (dropout_mask's kernel path)
            m = torch.full(x.shape, 7, dtype=torch.int8)
            assert launch(None, m, (), Seed(None, seed_value), p, per_row=False, index_offset=offset)
            assert torch.equal(m, mask.to(torch.int8)), f"mask-only {name} offset={offset}"


@needs_interpreter
@pytest.mark.parametrize("offset", [2**32, 2**40 + 8, 2**40 + 3, 2**62 + 5])
def test_kernel_index_offset_64bit_per_row(offset):
    """Per-row launch: row r uses key seeds[r] and logical indices K .. K + Q - 1."""
    x = torch.randn(4, 21)
    seeds = torch.tensor([_int64(s) for s in (0, -1, 2**63 + 1, 987654321)])
    out = torch.full_like(x, float("nan"))
    assert launch(x, out, (), Seed(seeds, 0), 0.4, per_row=True, index_offset=offset)
    idx = offset + np.arange(21, dtype=np.uint64)
    mask = torch.from_numpy(np.stack([np_keep(int(s), idx, 0.4) for s in seeds]))
    assert_bitwise_equal(out, spec_dropout(x, 0.4, mask), f"offset={offset}")
