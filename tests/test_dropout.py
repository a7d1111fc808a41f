"""seeddrop.dropout / seeddrop.dropout_mask (src/seeddrop/ops/dropout.py): plain seeded
dropout (issue 2), per-row seed vectors and variational dropout (issue 3), against the
independent spec v1 reference in conftest.py. Runs on the PyTorch reference, and on the
Triton kernels under TRITON_INTERPRET=1.

Statistical checks: a count k of n independent events of probability q is
Binomial(n, q); every check asserts |k - n q| <= 6 sqrt(n q (1 - q)) (a false alarm has
probability about 2e-9 per check).
"""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seeddrop import dropout, dropout_mask
from seeddrop._common import Seed
from seeddrop.ops.dropout import apply_dropout

from conftest import (
    DTYPES,
    INTERPRET,
    assert_bitwise_equal,
    binomial_bound,
    mask_shape,
    np_keep,
    np_mask,
    np_threshold,
    spec_dropout,
)

# Element counts for the statistics: the interpreter runs the Triton kernels in NumPy.
N_STATS = 20_000 if INTERPRET else 250_000


def _rand_seed(gen) -> int:
    """A seed anywhere in [-2**63, 2**64)."""
    kind = int(torch.randint(0, 4, (), generator=gen))
    v = int(torch.randint(-(2**63), 2**63 - 1, (), generator=gen))
    return [v, v + 2**63 if v < 0 else v + 2**63 - 1, v % 2**32, -(abs(v) % 2**31)][kind]


def _keep_prob(p: float) -> float:
    return 1.0 - np_threshold(p) / 65536


def _assert_binomial(k: int, n: int, q: float, what: str) -> None:
    bound = binomial_bound(n, q)
    assert abs(k - n * q) <= bound, f"{what}: {k} of {n}, expected {n * q:.1f} +- {bound:.1f} (6 sigma)"


def _expected(x, p, seed, shared_dims=()):
    return spec_dropout(x, p, np_mask(tuple(x.shape), p, seed, shared_dims))


SHAPES = [(), (0,), (3, 0, 5), (1,), (7,), (64,), (1001,), (4, 9), (33, 17), (3, 5, 7), (2, 3, 4, 5),
          (1, 1, 13), (2, 1, 9, 1)]


# ---------------------------------------------------------------------------
# values: dropout == reference, bit for bit
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_random_shapes(dtype):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    for shape in SHAPES:
        x = (torch.randn(shape) * 3).to(dtype)
        for p in (float(torch.rand((), generator=gen)), 0.5):
            seed = _rand_seed(gen)
            out = dropout(x, p, seed=seed)
            assert out is not x and out.shape == x.shape and out.dtype == dtype
            assert_bitwise_equal(out, _expected(x, p, seed), f"{shape} p={p} seed={seed}")


@pytest.mark.parametrize("seed", [0, -1, 2**31, 2**31 + 5, 2**32 - 1, 2**32, -(2**63), 2**63, 2**64 - 1])
def test_edge_seeds(seed):
    torch.manual_seed(3)
    x = torch.randn(3, 341)
    assert_bitwise_equal(dropout(x, 0.3, seed=seed), _expected(x, 0.3, seed), str(seed))


SEED_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
               torch.uint64]


@pytest.mark.parametrize("seed_dtype", SEED_DTYPES)
def test_seed_tensor_forms(seed_dtype):
    """A one-value integer tensor (shape [], [1] or [1, 1], any int dtype) is the seed it holds."""
    torch.manual_seed(4)
    x = torch.randn(5, 77)
    info = torch.iinfo(seed_dtype)
    for value in (info.min, info.max, 1 + info.max // 3):
        if seed_dtype == torch.uint64:  # torch.tensor cannot build large uint64 values directly
            t = torch.tensor(value - 2**64 if value >= 2**63 else value, dtype=torch.int64).view(torch.uint64)
        else:
            t = torch.tensor(value, dtype=seed_dtype)
        expected = _expected(x, 0.4, value)
        assert_bitwise_equal(dropout(x, 0.4, seed=value), expected, f"int {value}")
        for form in (t, t.reshape(1), t.reshape(1, 1)):
            assert_bitwise_equal(dropout(x, 0.4, seed=form), expected, f"{seed_dtype} {tuple(form.shape)}")
        assert torch.equal(dropout_mask(x.shape, 0.4, t), np_mask(x.shape, 0.4, value))


def test_seed_none_draws_from_torch_generator():
    x = torch.randn(4, 500)
    torch.manual_seed(5)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(5)
    a2, b2 = dropout(x, 0.5), dropout(x, 0.5)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a, b)  # 2000 elements at p = 0.5: equal masks have probability 2**-2000
    # every output is x * 0 or x * 2 (some seed's mask)
    assert bool(((a == 0) | (a == x * 2)).all())


def test_special_rounding_cases_bf16_fp16():
    """Kept values are rounded once, to nearest even: with p = 3/259 the fp32 scale is
    1 + 3 * 2**-8, a bf16 tie that rounds up to 1 + 2**-6 (truncation would give 1 + 2**-7);
    with p = 3/2051 the scale 1 + 3 * 2**-11 is an fp16 tie that rounds up to 1 + 2**-9."""
    for dtype, p, up in ((torch.bfloat16, 3 / 259, 1 + 2**-6), (torch.float16, 3 / 2051, 1 + 2**-9)):
        x = torch.ones(4096, dtype=dtype)
        x[1::2] = -1
        out = dropout(x, p, seed=42)
        mask = np_mask(x.shape, p, 42)
        assert torch.equal(out[mask].abs(), torch.full((int(mask.sum()),), up, dtype=dtype)), dtype
        assert_bitwise_equal(out, _expected(x, p, 42), str(dtype))


# ---------------------------------------------------------------------------
# strides and layout
# ---------------------------------------------------------------------------
def _strided_inputs(dtype):
    base = (torch.randn(37, 29, 11) * 2).to(dtype)
    yield "transposed", base[:, :, 0].t()
    yield "permuted", base.permute(2, 0, 1)
    yield "sliced", base[::2, 1::3, :]
    yield "sliced_last", base[:, :, 1::2]
    yield "offset", base[3:, 5:]
    yield "expanded", torch.randn(1, 29, 1).to(dtype).expand(37, 29, 11)
    yield "channels_last", torch.randn(3, 5, 4, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    yield "transposed_sliced", base[::3, :, 2].t()


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs(dtype):
    torch.manual_seed(6)
    gen = torch.Generator().manual_seed(7)
    for name, x in _strided_inputs(dtype):
        p, seed = float(torch.rand((), generator=gen)), _rand_seed(gen)
        out = dropout(x, p, seed=seed)
        assert out.stride() == torch.empty_like(x).stride(), name
        assert_bitwise_equal(out, dropout(x.contiguous(), p, seed=seed), name)
        assert_bitwise_equal(out, _expected(x, p, seed), name)
        assert torch.equal(dropout_mask(x.shape, p, seed), np_mask(x.shape, p, seed)), name


def test_every_output_element_written():
    """The output buffer is poisoned with NaN; every element must be overwritten (inputs are
    NaN-free), for each layout, shared-dims and per-row path."""
    torch.manual_seed(8)
    x3 = torch.randn(6, 10, 35)
    xs = torch.randn(3, 4, 21)  # shared-dims cases: the interpreter runs one program per shared slice
    cases = [
        ("flat", torch.randn(1003), (), None),
        ("rows", x3, (), None),
        ("transposed", x3[:, :, 0].t(), (), None),
        ("sliced", x3[::2, 1::3], (), None),
        ("shared1", xs, (1,), None),
        ("shared02", torch.randn(2, 5, 3), (0, 2), None),
        ("per_row", x3, (), torch.arange(60).reshape(6, 10)),
        ("per_row_shared", xs, (1,), torch.arange(3).reshape(3, 1) * 7 - 20),
    ]
    for name, x, shared, seeds in cases:
        for out_layout in ("like", "contiguous"):
            out = torch.empty_like(x) if out_layout == "like" else torch.empty(x.shape)
            out.fill_(float("nan"))
            if seeds is None:
                seed, ref_seed = Seed(None, 12345), 12345
            else:
                seed, ref_seed = Seed(seeds.reshape(-1).contiguous(), 0), seeds
            res = apply_dropout(x, 0.3, seed, shared, seeds is not None, out=out)
            assert res is out
            assert_bitwise_equal(out, _expected(x, 0.3, ref_seed, shared), f"{name} {out_layout}")


# ---------------------------------------------------------------------------
# inplace
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace(dtype):
    torch.manual_seed(9)
    base = torch.randn(6, 29, 11).to(dtype)
    views = {
        "contiguous": lambda b: b,
        "transposed": lambda b: b[:, :, 0].t(),
        "sliced": lambda b: b[::2, 1::3, :],
        "permuted": lambda b: b.permute(1, 2, 0),
    }
    for name, make in views.items():
        for shared in ((), (-1,)):
            b = base.clone()
            x = make(b)
            expected = _expected(x.clone(), 0.35, -77, shared)
            untouched = b.clone()
            touched = torch.zeros_like(b, dtype=torch.bool)
            make(touched).fill_(True)
            res = dropout(x, 0.35, inplace=True, seed=-77, shared_dims=shared)
            assert res is x, name
            assert_bitwise_equal(x, expected, f"{name} {shared}")
            assert torch.equal(b[~touched], untouched[~touched]), f"{name}: wrote outside the view"


def test_inplace_rejects_overlapping_input():
    x = torch.randn(1, 5).expand(4, 5)
    with pytest.raises(ValueError, match="single memory location"):
        dropout(x, 0.5, inplace=True, seed=1)
    # as torch: not writing is fine
    assert dropout(x, 0.5, training=False, inplace=True) is x


# ---------------------------------------------------------------------------
# semantics shared with torch
# ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0
def test_nan_inf_propagate_like_torch():
    torch.manual_seed(10)
    for dtype in DTYPES:
        x = torch.randn(2000).to(dtype)
        x[::7] = float("inf")
        x[3::7] = -float("inf")
        x[5::11] = float("nan")
        out = dropout(x, 0.4, seed=2**40 + 3)
        mask = np_mask(x.shape, 0.4, 2**40 + 3)
        assert_bitwise_equal(out, _expected(x, 0.4, 2**40 + 3), str(dtype))
        # x * 0 at dropped positions: inf and nan give nan; kept inf stays inf
        assert bool(torch.isnan(out[~mask & ~torch.isfinite(x)]).all())
        assert torch.equal(out[mask & torch.isinf(x)], x[mask & torch.isinf(x)])
        # torch's own dropout with p = 1 and the same inputs behaves the same way
        assert torch.equal(torch.isnan(dropout(x, 1.0, seed=0)), torch.isnan(F.dropout(x, 1.0)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_false_and_p0_return_input(dtype):
    x = torch.randn(3, 4).to(dtype)
    assert dropout(x, 0.5, training=False, seed=1) is x
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, seed=1) is x
    assert dropout(x, 0, seed=None) is x
    assert dropout(x, 0.0, inplace=True, seed=1) is x
    assert dropout(x, 0.5, training=False, inplace=True) is x
    assert F.dropout(x, 0.0) is x  # the torch behaviour being matched


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf * 0
@pytest.mark.parametrize("dtype", DTYPES)
def test_p1_gives_x_times_zero(dtype):
    x = torch.randn(5, 13).to(dtype)
    x[0, :3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    out = dropout(x, 1.0, seed=7)
    assert_bitwise_equal(out, x * 0)
    assert_bitwise_equal(out, F.dropout(x, 1.0))


def test_empty_and_0d():
    for dtype in DTYPES:
        for shape in ((0,), (4, 0), (0, 3, 2)):
            x = torch.empty(shape, dtype=dtype)
            out = dropout(x, 0.5, seed=1)
            assert out.shape == shape and out.dtype == dtype
            assert dropout(x, 0.5, inplace=True, seed=1) is x
            assert dropout_mask(shape, 0.5, 1).shape == shape
        x = torch.tensor(3.0, dtype=dtype)
        out = dropout(x, 0.5, seed=0)
        assert out.shape == () and out.dtype == dtype
        assert_bitwise_equal(out, _expected(x, 0.5, 0))


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("p", [-0.1, 1.5, 1.0000001, float("inf"), -float("inf")])
def test_bad_p_message_matches_torch(p):
    x = torch.randn(3)
    with pytest.raises(ValueError) as torch_err:
        F.dropout(x, p)
    with pytest.raises(ValueError) as ours:
        dropout(x, p, seed=1)
    assert str(ours.value) == str(torch_err.value)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        dropout(x, p, training=False)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        dropout_mask((3,), p, 1)


def test_nan_p():
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got nan"):
        dropout(torch.randn(3), float("nan"), seed=1)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got nan"):
        dropout_mask((3,), float("nan"), 1)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_bad_input_dtype(dtype):
    x = torch.zeros(4, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype).replace(".", r"\.")):
        dropout(x, 0.5, seed=1)


def test_bad_input_type():
    with pytest.raises(TypeError):
        dropout([1.0, 2.0], 0.5, seed=1)


@pytest.mark.parametrize("seed", [1.5, 2.0, "3", torch.tensor(1.0), torch.tensor([1.0, 2.0]),
                                  torch.tensor(True), torch.tensor(1 + 1j)])
def test_bad_seed_type(seed):
    with pytest.raises(TypeError, match="seed"):
        dropout(torch.randn(4), 0.5, seed=seed)
    with pytest.raises(TypeError, match="seed"):
        dropout_mask((4,), 0.5, seed)


@pytest.mark.parametrize("seed", [2**64, 2**65, -(2**63) - 1, -(2**64)])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed"):
        dropout(torch.randn(4), 0.5, seed=seed)
    with pytest.raises(ValueError, match="seed"):
        dropout_mask((4,), 0.5, seed)


def test_seed_tensor_wrong_shape():
    x = torch.randn(4, 5)
    for bad in (torch.zeros(5, dtype=torch.int64), torch.zeros(4, 5, dtype=torch.int64),
                torch.zeros(4, 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                torch.zeros(2, 2, dtype=torch.int64)):
        with pytest.raises(ValueError, match=r"\(4,\)"):
            dropout(x, 0.5, seed=bad)
        with pytest.raises(ValueError, match=r"\(4,\)"):
            dropout_mask((4, 5), 0.5, bad)
    with pytest.raises(ValueError, match="seed"):  # a 1-d x has no rows: one value only
        dropout(torch.randn(5), 0.5, seed=torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match="seed"):
        dropout(torch.tensor(1.0), 0.5, seed=torch.zeros(2, dtype=torch.int64))


@pytest.mark.parametrize("dims", [(1, 1), (0, -3), (3,), (-4,), (0, 5)])
def test_bad_shared_dims(dims):
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="shared_dims"):
        dropout(x, 0.5, seed=1, shared_dims=dims)
    with pytest.raises(ValueError, match="shared_dims"):
        dropout_mask((2, 3, 4), 0.5, 1, shared_dims=dims)


def test_other_devices_rejected():
    x = torch.empty(4, 5, device="meta")
    with pytest.raises(ValueError, match="meta"):
        dropout(x, 0.5, seed=1)
    with pytest.raises(ValueError, match="meta"):
        dropout(x, 0.5)
    with pytest.raises(ValueError, match="meta"):
        dropout_mask((4, 5), 0.5, 1, device="meta")


def test_dropout_mask_needs_seed_and_valid_shape():
    with pytest.raises(ValueError):
        dropout_mask((3, 4), 0.5, None)
    with pytest.raises(ValueError):
        dropout_mask((3, -1), 0.5, 1)


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_keep_fraction(p):
    q = _keep_prob(p)
    for seed in (0, 2**63 + 11, -12345):
        mask = dropout_mask((N_STATS,), p, seed)
        _assert_binomial(int(mask.sum()), N_STATS, q, f"p={p} seed={seed}")
    # dropout itself keeps the same fraction (its output equals the mask, scaled)
    n = N_STATS // 10
    out = dropout(torch.ones(n), p, seed=99)
    _assert_binomial(int((out != 0).sum()), n, q, f"dropout p={p}")


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_independence_across_seeds(p):
    """Masks of related seeds agree on each element with probability q**2 + (1 - q)**2."""
    q = _keep_prob(p)
    agree_prob = q * q + (1 - q) * (1 - q)
    s = 0x1234_5678_9ABC_DEF0
    for other in (s + 1, s ^ (1 << 32), s ^ (1 << 63), s + 8, -s):
        a = dropout_mask((N_STATS,), p, s)
        b = dropout_mask((N_STATS,), p, other)
        _assert_binomial(int((a == b).sum()), N_STATS, agree_prob, f"seeds {s:#x} vs {other:#x}")
        _assert_binomial(int((a & b).sum()), N_STATS, q * q, f"both kept, {s:#x} vs {other:#x}")


@pytest.mark.parametrize("p", [0.5, 0.1])
def test_independence_across_neighbouring_indices(p):
    """Element pairs (i, i + lag), lag 1..8, taken disjoint (blocks of 2 * lag) so the
    counts are binomial: both kept with probability q**2. For lag <= 4 every pair lies in
    one Philox call (same i >> 3); lag 8 pairs the same lane of consecutive calls."""
    q = _keep_prob(p)
    mask = dropout_mask((N_STATS,), p, 31337)
    for lag in range(1, 9):
        n_blocks = N_STATS // (2 * lag)
        blocks = mask[: n_blocks * 2 * lag].reshape(n_blocks, 2 * lag)
        both = blocks[:, :lag] & blocks[:, lag:]
        _assert_binomial(int(both.sum()), n_blocks * lag, q * q, f"lag {lag}")
        agree = blocks[:, :lag] == blocks[:, lag:]
        _assert_binomial(int(agree.sum()), n_blocks * lag, q * q + (1 - q) ** 2, f"lag {lag} agreement")


def test_independence_of_lanes_within_a_philox_call():
    """Each of the 28 lane pairs (a, b) of one Philox call: over the calls, both kept with
    probability q**2 (catches lanes that share or correlate bits, e.g. the two halves of a word)."""
    p = 0.5
    q = _keep_prob(p)
    groups = dropout_mask((N_STATS // 8 * 8,), p, 2**64 - 5).reshape(-1, 8)
    n = groups.shape[0]
    for a in range(8):
        _assert_binomial(int(groups[:, a].sum()), n, q, f"lane {a}")
        for b in range(a + 1, 8):
            _assert_binomial(int((groups[:, a] & groups[:, b]).sum()), n, q * q, f"lanes {a},{b}")


# ---------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_backward_regenerates_mask(dtype):
    torch.manual_seed(11)
    x = torch.randn(13, 57).to(dtype).requires_grad_()
    g = torch.randn(13, 57).to(dtype)
    for seed in (5, torch.tensor(-5), 2**63 + 1):
        x.grad = None
        y = dropout(x, 0.3, seed=seed)
        assert_bitwise_equal(y.detach(), _expected(x.detach(), 0.3, seed))
        y.backward(g)
        assert_bitwise_equal(x.grad, _expected(g, 0.3, seed), str(seed))


def test_backward_with_drawn_seed_uses_forward_mask():
    x = torch.ones(7, 301, requires_grad=True)
    torch.manual_seed(12)
    y = dropout(x, 0.5)
    torch.rand(100)  # the generator moves on between forward and backward
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, y.detach())


def test_backward_strided_and_shared():
    torch.manual_seed(13)
    base = torch.randn(6, 7, 9, requires_grad=True)
    g = torch.randn(7, 9, 6)
    y = dropout(base.permute(1, 2, 0), 0.4, seed=77, shared_dims=(1,))
    y.backward(g)
    mask = np_mask((7, 9, 6), 0.4, 77, (1,))
    assert_bitwise_equal(base.grad, spec_dropout(g, 0.4, mask).permute(2, 0, 1))


@pytest.mark.parametrize("case", ["plain", "per_row", "shared", "per_row_shared"])
def test_gradcheck_float64(case):
    torch.manual_seed(14)
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    kwargs = {
        "plain": dict(seed=2**63 + 9),
        "per_row": dict(seed=torch.tensor([[1, 2, 3], [-4, 5, 2**40]])),
        "shared": dict(seed=-3, shared_dims=(1,)),
        "per_row_shared": dict(seed=torch.tensor([[7], [8]]), shared_dims=(1,)),
    }[case]
    # fast mode (a random projection of the Jacobian) keeps the interpreter run short
    assert torch.autograd.gradcheck(lambda t: dropout(t, 0.4, **kwargs), (x,), fast_mode=INTERPRET)


def test_inplace_autograd_on_non_leaf():
    torch.manual_seed(15)
    x = torch.randn(9, 33, requires_grad=True)
    h = x * 2
    y = dropout(h, 0.25, inplace=True, seed=2024)
    assert y is h
    g = torch.randn(9, 33)
    y.backward(g)
    mask = np_mask((9, 33), 0.25, 2024)
    assert_bitwise_equal(y.detach(), spec_dropout(x.detach() * 2, 0.25, mask))
    assert_bitwise_equal(x.grad, spec_dropout(g, 0.25, mask) * 2)


def test_inplace_on_leaf_requiring_grad_is_refused_like_torch():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError):
        F.dropout(x, 0.5, inplace=True)
    with pytest.raises(RuntimeError):
        dropout(x, 0.5, inplace=True, seed=1)


def _saved_between_forward_and_backward(fn):
    """Shapes of every tensor autograd saves while running fn()."""
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def test_backward_saves_only_the_seed():
    x = torch.randn(4, 3, 80, requires_grad=True)
    cases = [
        (dict(seed=123), []),
        (dict(seed=torch.tensor(123)), [()]),
        (dict(seed=None), [()]),
        (dict(seed=torch.arange(12).reshape(4, 3)), [(12,)]),
        (dict(seed=torch.arange(12, dtype=torch.int32).reshape(4, 3)), [(12,)]),
        (dict(seed=5, shared_dims=(1,)), []),
        (dict(seed=torch.arange(4).reshape(4, 1), shared_dims=(1,)), [(4,)]),
    ]
    for kwargs, expected in cases:
        y, saved = _saved_between_forward_and_backward(lambda: dropout(x, 0.5, **kwargs))
        assert saved == expected, kwargs
        y.sum().backward()  # backward still works from the seed alone


def test_no_graph_under_no_grad():
    x = torch.randn(4, 4, requires_grad=True)
    with torch.no_grad():
        y = dropout(x, 0.5, seed=1)
    assert not y.requires_grad


# ---------------------------------------------------------------------------
# per-row seeds (issue 3)
# ---------------------------------------------------------------------------
def _seed_tensor(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int64 values stored in `dtype` (uint64 by reinterpreting the bits)."""
    return values.view(torch.uint64) if dtype == torch.uint64 else values.to(dtype)


@pytest.mark.parametrize("seed_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8,
                                        torch.uint64])
def test_per_row_rows_equal_single_seed_calls(seed_dtype):
    torch.manual_seed(16)
    x = torch.randn(6, 45)
    seeds = _seed_tensor(torch.randint(-(2**63), 2**63 - 1, (6,)), seed_dtype)
    ints = [int(v) for v in seeds.view(torch.int64)] if seed_dtype == torch.uint64 else [int(v) for v in seeds]
    out = dropout(x, 0.3, seed=seeds)
    for r in range(6):
        assert_bitwise_equal(out[r], dropout(x[r], 0.3, seed=ints[r]), f"row {r}")
        assert_bitwise_equal(out[r], _expected(x[r], 0.3, ints[r]), f"row {r}")
    assert_bitwise_equal(out, _expected(x, 0.3, seeds))
    assert torch.equal(dropout_mask(x.shape, 0.3, seeds), np_mask(x.shape, 0.3, seeds))


@pytest.mark.parametrize("dtype", DTYPES)
def test_per_row_multi_dim_and_strided(dtype):
    torch.manual_seed(17)
    gen = torch.Generator().manual_seed(18)
    seeds = torch.randint(-(2**63), 2**63 - 1, (2, 3), generator=gen)
    base = torch.randn(2, 3, 29).to(dtype)
    for name, x in (("contiguous", base), ("sliced", base[:, :, ::2]),
                    ("permuted", torch.randn(29, 2, 3).to(dtype).permute(1, 2, 0)),
                    ("rows_not_collapsible", torch.randn(2, 5, 29).to(dtype)[:, 1:4])):
        out = dropout(x, 0.45, seed=seeds)
        assert out.stride() == torch.empty_like(x).stride()
        assert_bitwise_equal(out, _expected(x, 0.45, seeds), name)
        for i in range(2):
            for j in range(3):
                assert_bitwise_equal(out[i, j], dropout(x[i, j], 0.45, seed=int(seeds[i, j])), name)
    xt = torch.randn(31, 5).to(dtype).t()  # rows are strided in memory
    seeds5 = seeds.reshape(-1)[:5].contiguous()
    assert_bitwise_equal(dropout(xt, 0.45, seed=seeds5), _expected(xt, 0.45, seeds5), "transposed")
    assert_bitwise_equal(dropout(xt, 0.45, seed=seeds5), dropout(xt.contiguous(), 0.45, seed=seeds5))
    # a non-contiguous seed tensor
    s_nc = torch.randint(0, 2**40, (5, 2), generator=gen)[:, 1]
    assert_bitwise_equal(dropout(xt, 0.45, seed=s_nc), _expected(xt, 0.45, s_nc.contiguous()), "strided seeds")


@pytest.mark.parametrize("shape,shared,seed_shape", [
    ((3, 5, 20), (1,), (3, 1)),  # [B, T, F], mask shared over T
    ((5, 3, 20), (0,), (1, 3)),  # [T, B, F], LockedDropout
    ((4, 9), (-1,), (4,)),  # mask shared along the last dim: one draw per row
    ((2, 3, 4, 9), (0, 2), (1, 3, 1)),
])
def test_per_row_with_shared_dims(shape, shared, seed_shape):
    torch.manual_seed(19)
    x = torch.randn(shape)
    seeds = torch.randint(-(2**63), 2**63 - 1, seed_shape)
    out = dropout(x, 0.5, seed=seeds, shared_dims=shared)
    assert_bitwise_equal(out, _expected(x, 0.5, seeds, shared))
    m = dropout_mask(shape, 0.5, seeds, shared_dims=shared)
    assert m.shape == shape and torch.equal(m, np_mask(shape, 0.5, seeds, shared))
    # each row r of the mask shape uses key seeds[r] and column indices 0..C-1
    mshape = mask_shape(shape, shared)
    flat_seeds = seeds.reshape(-1)
    rows = dropout_mask(mshape, 0.5, seeds).reshape(-1, mshape[-1])
    for r in range(rows.shape[0]):
        assert np.array_equal(rows[r].numpy(), np_keep(int(flat_seeds[r]), np.arange(mshape[-1]), 0.5))
    # wrong shape: the shape of x's rows instead of the mask's rows
    bad = torch.zeros(shape[:-1], dtype=torch.int64)
    if bad.numel() != 1 and tuple(bad.shape) != tuple(seed_shape):
        with pytest.raises(ValueError, match=re.escape(str(tuple(seed_shape)))):
            dropout(x, 0.5, seed=bad, shared_dims=shared)


def test_per_row_statistics_consecutive_seeds():
    """Rows with seeds s, s+1, ...: each row keeps Binomial(C, q) elements; disjoint pairs of
    consecutive rows agree element-wise with probability q**2 + (1-q)**2 and are both kept
    with probability q**2; row r and row r+1 are not shifted copies of each other."""
    p = 0.5
    q = _keep_prob(p)
    rows, cols = (64, 512) if INTERPRET else (256, 4096)
    s0 = 2**63 - 100  # the seeds cross 2**63
    seeds = torch.tensor([(s0 + r) - 2**64 if s0 + r >= 2**63 else s0 + r for r in range(rows)])
    mask = dropout_mask((rows, cols), p, seeds)
    for r in range(rows):
        _assert_binomial(int(mask[r].sum()), cols, q, f"row {r}")
    a, b = mask[0::2], mask[1::2]
    n = a.numel()
    _assert_binomial(int((a == b).sum()), n, q * q + (1 - q) ** 2, "consecutive rows agreement")
    _assert_binomial(int((a & b).sum()), n, q * q, "consecutive rows both kept")
    # a shift of the stream by 8 elements (one Philox call) between consecutive seeds
    shifted = mask[0::2, 8:] == mask[1::2, :-8]
    _assert_binomial(int(shifted.sum()), shifted.numel(), q * q + (1 - q) ** 2, "shifted rows")
    # and the same rows equal the single-seed masks
    for r in (0, 99 % rows, rows - 1):
        assert np.array_equal(mask[r].numpy(), np_keep(int(seeds[r]), np.arange(cols), p))


# ---------------------------------------------------------------------------
# variational (shared-dims) dropout (issue 3)
# ---------------------------------------------------------------------------
SHARED_CASES = [
    ((4, 6, 10), (1,)),
    ((4, 6, 10), (-2,)),
    ((4, 6, 10), (0,)),
    ((4, 6, 10), (2,)),
    ((2, 3, 4, 5), (0, 2)),
    ((2, 3, 4, 5), (1, -1)),
    ((7, 9), (-1,)),
    ((5,), (0,)),
    ((2, 2, 3), (0, 1, 2)),
    ((6, 0, 3), (1,)),
]


@pytest.mark.parametrize("shape,shared", SHARED_CASES)
def test_variational_matches_reference(shape, shared):
    torch.manual_seed(20)
    gen = torch.Generator().manual_seed(21)
    for dtype in DTYPES:
        x = torch.randn(shape).to(dtype)
        p, seed = float(torch.rand((), generator=gen)), _rand_seed(gen)
        out = dropout(x, p, seed=seed, shared_dims=shared)
        assert_bitwise_equal(out, _expected(x, p, seed, shared), f"{dtype} p={p}")
        # = x * dropout_mask(mask_shape) with the spec rounding, broadcast
        small = dropout_mask(mask_shape(shape, shared), p, seed)
        assert_bitwise_equal(out, spec_dropout(x, p, small.expand(shape)))
        m = dropout_mask(shape, p, seed, shared_dims=shared)
        assert m.shape == shape and torch.equal(m, small.expand(shape))
        for d in shared:
            if shape[d] > 0:
                assert torch.equal(m, m.narrow(d, 0, 1).expand(shape)), d


def test_variational_negative_dims_equal_positive():
    x = torch.randn(2, 3, 4, 5)
    for neg, pos in (((-3,), (1,)), ((-4, -2), (0, 2)), ((3, -4), (0, 3))):
        assert_bitwise_equal(dropout(x, 0.3, seed=8, shared_dims=neg), dropout(x, 0.3, seed=8, shared_dims=pos))
        assert torch.equal(dropout_mask(x.shape, 0.3, 8, shared_dims=neg),
                           dropout_mask(x.shape, 0.3, 8, shared_dims=pos))


def test_variational_strided_inputs():
    torch.manual_seed(22)
    base = torch.randn(4, 6, 10)
    cases = [
        ("transposed", base.transpose(0, 1), (0,)),
        ("permuted", base.permute(2, 0, 1), (1,)),
        ("permuted_02", base.permute(1, 2, 0), (0, 2)),
        ("sliced", base[::2, 1::3], (1,)),
        ("sliced_shared_last", base[:, ::2, :], (-1,)),
        ("expanded", torch.randn(4, 1, 10).expand(4, 6, 10), (1,)),
    ]
    for name, x, shared in cases:
        out = dropout(x, 0.6, seed=-(2**62), shared_dims=shared)
        assert out.stride() == torch.empty_like(x).stride(), name
        assert_bitwise_equal(out, _expected(x, 0.6, -(2**62), shared), name)
        assert_bitwise_equal(out, dropout(x.contiguous(), 0.6, seed=-(2**62), shared_dims=shared), name)


def test_variational_statistics():
    """The small mask keeps Binomial(n, q) entries, and the output is equal along the
    shared dim (x = ones)."""
    p = 0.3
    q = _keep_prob(p)
    t, b, f = 5, 4, N_STATS // 20
    out = dropout(torch.ones(t, b, f), p, seed=4242, shared_dims=(0,))
    assert torch.equal(out, out[:1].expand_as(out))
    _assert_binomial(int((out[0] != 0).sum()), b * f, q, "variational keep fraction")
