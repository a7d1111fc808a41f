"""seeddrop.dropout_add (fused residual + dropout(act(x + bias))) against the unfused
composition built from seeddrop.dropout with the same seed, and against the spec's mask
from conftest.py (independent of seeddrop.stream).

Exactness (the composition is evaluated in fp32, fp64 for float64 outputs, and rounded
once to the output dtype, as dropout_add is specified):
* CPU reference path: bitwise for every activation (the same torch ops).
* Triton kernels (TRITON_INTERPRET=1, CUDA): bitwise for activation None and "relu" (relu
  up to the sign of an exact zero: the kernels' relu is an IEEE maximum, relu(-0.0) = +0.0,
  where torch's CPU relu keeps -0.0; it shows only where x + bias and the residual are both
  -0.0); for "gelu", "gelu_tanh" and "silu" (Triton's erf/exp are not torch's) within
  TOLERANCE[out dtype] (rtol about one ulp of the output dtype).
* Bias gradients are column sums in another order than autograd's: BIAS_TOLERANCE.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import seeddrop
from seeddrop import stream
from seeddrop._common import Seed
from seeddrop.ops import dropout_add as dadd

from conftest import INTERPRET, assert_bitwise_equal, binomial_bound, needs_interpreter, np_mask, spec_dropout

ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
EXACT_ACTS = (None, "relu")
TORCH_ACT = {  # written here, not taken from seeddrop: the composition is independent
    None: lambda z: z,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "silu": F.silu,
}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TOLERANCE = {  # (rtol, atol) for kernel vs torch activations
    torch.float16: (2.0**-10, 1e-5),
    torch.bfloat16: (2.0**-7, 1e-5),
    torch.float32: (1e-5, 2e-6),
    torch.float64: (1e-12, 1e-12),
}
BIAS_TOLERANCE = {torch.float16: (2.0**-10, 1e-4), torch.bfloat16: (2.0**-7, 1e-4),
                  torch.float32: (1e-5, 1e-5), torch.float64: (1e-12, 1e-12)}
P = 0.3
SEED = 2**64 - 12345  # >= 2**63: exercises the unsigned seed range


def cdt_of(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def unfused(x, r, p=P, training=True, *, bias=None, activation=None, seed=SEED, shared_dims=()):
    """residual + seeddrop.dropout(act(x + bias)), in fp32 (fp64) and rounded once."""
    out_dtype = torch.promote_types(x.dtype, r.dtype)
    cdt = cdt_of(out_dtype)
    z = x.to(cdt) if bias is None else x.to(cdt) + bias.to(cdt)
    d = seeddrop.dropout(TORCH_ACT[activation](z), p, training, seed=seed, shared_dims=shared_dims)
    return (r.to(cdt) + d).to(out_dtype)


def assert_matches(got, expected, activation, msg=""):
    if activation in EXACT_ACTS or not INTERPRET:
        assert_bitwise_equal(got, expected, msg)
    else:
        assert got.dtype == expected.dtype
        rtol, atol = TOLERANCE[got.dtype]
        torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, equal_nan=True, msg=msg)


def inputs(shape, dtype, bias=True, rdtype=None, requires_grad=False):
    x = torch.randn(shape, dtype=dtype) * 2
    r = torch.randn(shape, dtype=rdtype or dtype)
    b = torch.randn(shape[-1], dtype=dtype) if bias else None
    if requires_grad:
        for t in (x, r, b):
            if t is not None:
                t.requires_grad_()
    return x, r, b


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("bias", [False, True])
def test_forward_matches_unfused(dtype, activation, bias):
    torch.manual_seed(0)
    x, r, b = inputs((6, 40), dtype, bias)
    got = seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=SEED)
    assert_matches(got, unfused(x, r, bias=b, activation=activation), activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_is_residual_plus_spec_dropout(dtype):
    """activation=None, bias=None: round(r + x * m) with the spec's mask and scale, the
    sum in fp32 (fp64): checked against conftest's independent mask."""
    torch.manual_seed(1)
    x, r, _ = inputs((5, 24), dtype, bias=False)
    cdt = cdt_of(dtype)
    expected = (r.to(cdt) + spec_dropout(x.to(cdt), P, np_mask(x.shape, P, SEED))).to(dtype)
    assert_bitwise_equal(seeddrop.dropout_add(x, r, P, seed=SEED), expected)


@pytest.mark.parametrize("shape", [(5, 13), (1, 13), (2, 3, 16), (7,), (), (3, 1)], ids=str)
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_forward_shapes(shape, activation):
    """(5, 13): rows off the 8-aligned groups (flat tiles); (1, 13): one row; 0-d; C = 1."""
    torch.manual_seed(2)
    x, r, b = inputs(shape, torch.bfloat16, bias=len(shape) > 0)
    got = seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=-77)
    assert got.shape == x.shape
    assert_matches(got, unfused(x, r, bias=b, activation=activation, seed=-77), activation)


@pytest.mark.parametrize("shape", [(4, 16), (2, 3, 13)], ids=str)
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_per_row_seeds(shape, activation):
    torch.manual_seed(3)
    x, r, b = inputs(shape, torch.float32)
    seeds = torch.randint(-(2**63), 2**63 - 1, shape[:-1])
    got = seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=seeds)
    assert_matches(got, unfused(x, r, bias=b, activation=activation, seed=seeds), activation)
    # against the spec directly: row r keyed by seeds[r], index = column
    a = TORCH_ACT[activation](x + b)
    expected = r + spec_dropout(a, P, np_mask(shape, P, seeds))
    assert_matches(got, expected, activation)


@pytest.mark.parametrize("shared_dims", [(1,), (0,), (2,), (-1,), (0, 2)], ids=str)
def test_shared_dims(shared_dims):
    torch.manual_seed(4)
    x, r, b = inputs((3, 4, 16), torch.float16)
    got = seeddrop.dropout_add(x, r, P, bias=b, activation="relu", seed=SEED, shared_dims=shared_dims)
    assert_bitwise_equal(got, unfused(x, r, bias=b, activation="relu", shared_dims=shared_dims))
    mask = np_mask(x.shape, P, SEED, shared_dims)
    expected = (r.float() + spec_dropout(torch.relu(x.float() + b.float()), P, mask)).half()
    assert_bitwise_equal(got, expected)


def test_shared_dims_with_per_row_seeds():
    torch.manual_seed(5)
    x, r, b = inputs((3, 4, 13), torch.bfloat16)
    seeds = torch.randint(-(2**63), 2**63 - 1, (3, 1))  # mask_shape[:-1] for shared dim 1
    got = seeddrop.dropout_add(x, r, P, bias=b, activation="gelu", seed=seeds, shared_dims=(1,))
    assert_matches(got, unfused(x, r, bias=b, activation="gelu", seed=seeds, shared_dims=(1,)), "gelu")


@pytest.mark.parametrize("xdtype,rdtype,bdtype", [
    (torch.bfloat16, torch.float32, torch.bfloat16),
    (torch.float32, torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16, torch.float16),
    (torch.bfloat16, torch.float64, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16, torch.float32),
], ids=str)
def test_mixed_dtypes(xdtype, rdtype, bdtype):
    """Output dtype: promote_types(x, residual); bias is read in the compute dtype."""
    torch.manual_seed(6)
    x = torch.randn(4, 24, dtype=xdtype)
    r = torch.randn(4, 24, dtype=rdtype)
    b = torch.randn(24, dtype=bdtype)
    got = seeddrop.dropout_add(x, r, P, bias=b, activation="gelu_tanh", seed=SEED)
    assert got.dtype == torch.promote_types(xdtype, rdtype)
    assert_matches(got, unfused(x, r, bias=b, activation="gelu_tanh"), "gelu_tanh")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("case", ["eval", "p0"])
def test_eval_and_p0_are_residual_plus_activation(activation, case):
    torch.manual_seed(7)
    x, r, b = inputs((5, 16), torch.bfloat16)
    training, p = (False, 0.5) if case == "eval" else (True, 0.0)
    got = seeddrop.dropout_add(x, r, p, training, bias=b, activation=activation)
    expected = (r.float() + TORCH_ACT[activation](x.float() + b.float())).bfloat16()
    assert_matches(got, expected, activation)


def test_p1_drops_everything_and_propagates_nan():
    torch.manual_seed(8)
    x, r, b = inputs((4, 16), torch.float32)
    x[1, 3] = float("nan")
    got = seeddrop.dropout_add(x, r, 1.0, bias=b, seed=SEED)
    assert_bitwise_equal(got, unfused(x, r, 1.0, bias=b))
    assert torch.isnan(got[1, 3])
    finite = ~torch.isnan(x)
    assert torch.equal(got[finite], r[finite] + 0.0)


def test_relu_special_values():
    """relu(NaN) = NaN, relu(+-inf) = inf / 0, relu(+-0) = 0, through the kernels and the
    reference alike (p = 0: the values pass unscaled); the sign of a zero output is not
    pinned (see the module docstring)."""
    z = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -3.0, 2.5, -1e-30])
    x = torch.cat([z, torch.randn(56)]).reshape(4, 16)
    r = torch.randn(4, 16)
    got = seeddrop.dropout_add(x, r, 0.0, bias=None, activation="relu", seed=SEED)
    want = r + torch.relu(x)
    assert torch.equal(got.isnan(), want.isnan()) and bool(got.isnan()[0, 0])
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert bool((got[0, 2:6] == r[0, 2:6]).all())  # -inf, +-0 and -3 add nothing


def test_noncontiguous_and_broadcast_residual():
    torch.manual_seed(9)
    x = torch.randn(24, 6).t()  # [6, 24], transposed
    r = torch.randn(6, 48)[:, ::2]  # sliced
    b = torch.randn(48)[::2]
    got = seeddrop.dropout_add(x, r, P, bias=b, activation="relu", seed=SEED)
    assert got.is_contiguous()
    assert_bitwise_equal(got, unfused(x, r, bias=b, activation="relu"))
    for r_shape in [(24,), (1, 24), (6, 1)]:
        rb = torch.randn(r_shape)
        got = seeddrop.dropout_add(x, rb, P, seed=SEED)
        assert_bitwise_equal(got, unfused(x, rb.expand(6, 24)))


def test_empty_input():
    x = torch.randn(0, 8, requires_grad=True)
    r = torch.randn(0, 8)
    b = torch.randn(8, requires_grad=True)
    out = seeddrop.dropout_add(x, r, P, bias=b, activation="gelu", seed=1)
    assert out.shape == (0, 8)
    out.sum().backward()
    assert x.grad.shape == (0, 8) and torch.equal(b.grad, torch.zeros(8))


def test_keep_fraction_within_binomial_bounds():
    """x = 1, residual = 0: out is 1/(1-p) where kept, 0 where dropped."""
    n_rows, n_cols, p = 64, 64, 0.3
    x = torch.ones(n_rows, n_cols)
    out = seeddrop.dropout_add(x, torch.zeros_like(x), p, seed=99)
    kept = int((out != 0).sum())
    n = n_rows * n_cols
    assert abs(kept - n * (1 - p)) <= binomial_bound(n, 1 - p)
    assert torch.equal(torch.unique(out), torch.tensor([0.0, 1.0 / (1.0 - p)], dtype=torch.float32))


def test_seed_none_draws_from_torch_generator():
    x, r, _ = inputs((8, 32), torch.float32, bias=False)
    torch.manual_seed(123)
    a = seeddrop.dropout_add(x, r, 0.5)
    b = seeddrop.dropout_add(x, r, 0.5)
    torch.manual_seed(123)
    assert torch.equal(seeddrop.dropout_add(x, r, 0.5), a)
    assert not torch.equal(a, b)


# ---------------------------------------------------------------------------
# every element written; tile loops (kernel level)
# ---------------------------------------------------------------------------
LAYOUTS = {  # name: (shape, seed, shared_dims)
    "aligned": ((45, 24), SEED, ()),
    "flat": ((45, 13), SEED, ()),  # rows off the 8-aligned groups: flat / per-element draws
    "per_row": ((45, 13), "rows", ()),
    "shared": ((3, 15, 13), SEED, (1,)),
}


def _poisoned_run(layout, activation, monkeypatch, dtype=torch.float32):
    """Forward and backward through the internal entry points with NaN-filled outputs and
    bias workspace, against the unfused composition's values and autograd gradients."""
    torch.manual_seed(10)
    shape, seed, shared = LAYOUTS[layout]
    if seed == "rows":
        seed = torch.randint(-(2**63), 2**63 - 1, shape[:-1])
        kernel_seed = Seed(seed, 0)
    else:
        kernel_seed = Seed(None, seed - 2**64 if seed >= 2**63 else seed)
    monkeypatch.setattr(dadd, "empty_workspace", lambda s, dt, dev: torch.full(s, float("nan"), dtype=dt, device=dev))
    x, r, b = inputs(shape, dtype, requires_grad=True)
    g = torch.randn(shape, dtype=dtype)
    cfg = dadd.Config(P, True, shared, isinstance(seed, torch.Tensor), dadd.ACTIVATIONS.index(activation))
    out = torch.full(shape, float("nan"), dtype=dtype)
    gx = torch.full(shape, float("nan"), dtype=dtype)
    with torch.no_grad():
        dadd.apply_dropout_add(x, r, b, kernel_seed, cfg, out=out)
        _, bias_sum = dadd.apply_dropout_add_backward(g, x, b, kernel_seed, cfg, dtype, True, grad_x=gx)
    expected = unfused(x, r, bias=b, activation=activation, seed=seed, shared_dims=shared)
    ex, _, eb = torch.autograd.grad(expected, (x, r, b), g)
    assert_matches(out, expected.detach(), activation)
    assert_matches(gx, ex, activation)
    rtol, atol = BIAS_TOLERANCE[dtype]
    torch.testing.assert_close(bias_sum.to(dtype), eb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("activation", [None, "silu"])
def test_every_element_written(layout, activation, monkeypatch):
    _poisoned_run(layout, activation, monkeypatch)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_small_tiles_write_every_element(layout, dtype, monkeypatch):
    """Tiles of 64 elements: many programs, several row tiles per backward program and
    several bias-workspace chunks (bf16: the backward's prefetching loop)."""
    monkeypatch.setattr(dadd, "CPU_TILE_ELEMENTS", 64)
    monkeypatch.setattr(dadd, "_PLANS", {})
    plan = dadd._plan(torch.Size(LAYOUTS[layout][0]), torch.empty((), dtype=dtype),
                      dadd.Config(P, True, LAYOUTS[layout][2], LAYOUTS[layout][1] == "rows", 2), True)
    assert plan.grid > 1 and plan.tiles_per_program > 1 and plan.n_chunks > 1
    _poisoned_run(layout, "gelu", monkeypatch, dtype)


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------
def _grads(out, tensors, g):
    return torch.autograd.grad(out, [t for t in tensors if t is not None], g)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shape", [(6, 40), (5, 13)], ids=str)
def test_gradients_match_unfused_autograd(dtype, activation, shape):
    torch.manual_seed(12)
    x, r, b = inputs(shape, dtype, requires_grad=True)
    g = torch.randn(shape, dtype=dtype)
    gx, gr, gb = _grads(seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=SEED), (x, r, b), g)
    ex, er, eb = _grads(unfused(x, r, bias=b, activation=activation), (x, r, b), g)
    assert_bitwise_equal(gr, er)
    assert_matches(gx, ex, activation)
    rtol, atol = BIAS_TOLERANCE[dtype]
    torch.testing.assert_close(gb, eb, rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", ["per_row", "shared", "eval", "mixed", "broadcast_residual"])
def test_gradients_other_cases(case):
    torch.manual_seed(13)
    x, r, b = inputs((3, 4, 16), torch.float32, requires_grad=True)
    kwargs = dict(bias=b, activation="relu", seed=SEED)
    training = case != "eval"
    if case == "per_row":
        kwargs["seed"] = torch.randint(-(2**63), 2**63 - 1, (3, 4))
    elif case == "shared":
        kwargs["shared_dims"] = (0, 2)
    elif case == "mixed":
        r = torch.randn(3, 4, 16, dtype=torch.bfloat16, requires_grad=True)
    elif case == "broadcast_residual":
        r = torch.randn(4, 1, requires_grad=True)
    out = seeddrop.dropout_add(x, r, P, training, **kwargs)
    g = torch.randn(out.shape, dtype=out.dtype)
    got = _grads(out, (x, r, b), g)
    expected = _grads(unfused(x, r, P, training, **kwargs), (x, r, b), g)
    for name, a, e in zip("xrb", got, expected):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-5, msg=name)


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck(activation, bias):
    """float64; fast mode in the interpreter (one random direction) to keep it quick."""
    torch.manual_seed(14)
    x, r, b = inputs((3, 8), torch.float64, bias=bias, requires_grad=True)
    x = (x + 0.1).detach().requires_grad_()  # keep relu's kink away from exact zeros

    def f(x, r, b):
        return seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=SEED)

    assert torch.autograd.gradcheck(f, (x, r, b), fast_mode=INTERPRET)


@pytest.mark.parametrize("case", ["per_row", "shared_unaligned"])
def test_gradcheck_per_row_and_shared(case):
    torch.manual_seed(15)
    x, r, b = inputs((2, 3, 5), torch.float64, requires_grad=True)
    kwargs = dict(seed=torch.tensor([[1, -2, 3], [2**62, 5, -6]])) if case == "per_row" else dict(seed=SEED, shared_dims=(1,))

    def f(x, r, b):
        return seeddrop.dropout_add(x, r, P, bias=b, activation="gelu", **kwargs)

    assert torch.autograd.gradcheck(f, (x, r, b), fast_mode=INTERPRET)


@pytest.mark.parametrize("activation", ACTS)
def test_saved_for_backward(activation):
    """activation None: nothing of x's size is saved (the seed only); else x and bias."""
    x, r, b = inputs((4, 16), torch.float32, requires_grad=True)
    seed = torch.tensor(5)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=seed)
    assert all(t.numel() <= 1 or t is x or t is b for t in saved)
    if activation is None:
        assert all(t.numel() <= 1 for t in saved)
    else:
        assert any(t is x for t in saved) and any(t is b for t in saved)
    out.sum().backward()  # still works after the hooks


def test_second_order_gradients_raise_instead_of_going_missing():
    """The backward kernels record no graph: a backward with create_graph=True through
    dropout_add raises rather than leaving the second-order terms out; without it, and
    with create_graph=True where nothing it would differentiate needs a gradient, it runs."""
    x, r, b = inputs((6, 24), torch.float32, requires_grad=True)
    out = seeddrop.dropout_add(x, r, P, bias=b, activation="gelu", seed=SEED)
    with pytest.raises(RuntimeError, match="not differentiable"):  # gelu'(x + b) depends on x and b
        torch.autograd.grad(out.sum(), [x], create_graph=True)
    assert torch.autograd.grad(out.sum(), [x])[0].shape == x.shape
    out = seeddrop.dropout_add(x, r, P, bias=b, seed=SEED)  # no activation: linear in grad_out
    v = torch.ones_like(out, requires_grad=True)  # e.g. a double-backward trick: grad_out needs a gradient
    with pytest.raises(RuntimeError, match="not differentiable"):
        torch.autograd.grad(out, [x], v, create_graph=True)
    (gx,) = torch.autograd.grad(out, [x], v.detach(), create_graph=True)  # nothing to differentiate: runs
    assert_bitwise_equal(gx, seeddrop.dropout(torch.ones_like(x), P, seed=SEED))


def test_bias_gradient_is_deterministic():
    torch.manual_seed(16)
    x, r, b = inputs((37, 24), torch.float32, requires_grad=True)
    g = torch.randn(37, 24)
    grads = [torch.autograd.grad(seeddrop.dropout_add(x, r, P, bias=b, activation="gelu", seed=SEED), b, g)[0]
             for _ in range(2)]
    assert_bitwise_equal(grads[0], grads[1])


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(p=1.5), ValueError, "dropout probability has to be between 0 and 1, but got 1.5"),
    (dict(p=float("nan")), ValueError, "dropout probability"),
    (dict(p="0.1"), TypeError, "p must be a real number"),
    (dict(activation="tanh"), ValueError, "activation must be one of"),
    (dict(activation=torch.relu), TypeError, "activation must be None or a str"),
    (dict(bias=torch.randn(7)), ValueError, r"bias must have shape \[8\]"),
    (dict(bias=torch.randn(4, 8)), ValueError, r"bias must have shape \[8\]"),
    (dict(bias=torch.ones(8, dtype=torch.int32)), TypeError, "bias must have dtype"),
    (dict(residual=torch.randn(4, 7)), ValueError, "residual must have x's shape"),
    (dict(residual=torch.randn(2, 4, 8)), ValueError, "residual must have x's shape"),
    (dict(residual=torch.ones(4, 8, dtype=torch.int64)), TypeError, "residual must have dtype"),
    (dict(residual=[1.0]), TypeError, "residual must be a torch.Tensor"),
    (dict(x=torch.ones(4, 8, dtype=torch.int32)), TypeError, "x must have dtype"),
    (dict(x=torch.ones(4, 8, dtype=torch.complex64)), TypeError, "x must have dtype"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed tensor must hold"),
    (dict(shared_dims=(2,)), ValueError, "shared_dims"),
    (dict(bias=torch.randn(8, device="meta")), ValueError, "bias must be on x's device"),
])
def test_errors_name_the_argument(kwargs, exc, match):
    args = dict(x=torch.randn(4, 8), residual=torch.randn(4, 8), p=0.1)
    args.update(kwargs)
    x, residual, p = args.pop("x"), args.pop("residual"), args.pop("p")
    with pytest.raises(exc, match=match):
        seeddrop.dropout_add(x, residual, p, **args)


def test_bias_on_0d_input_is_rejected():
    with pytest.raises(ValueError, match="bias must have shape"):
        seeddrop.dropout_add(torch.tensor(1.0), torch.tensor(2.0), 0.1, bias=torch.ones(1))


# ---------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------
def test_module():
    m = seeddrop.DropoutAdd(0.2, activation="gelu")
    assert "p=0.2" in repr(m) and "activation='gelu'" in repr(m)
    with pytest.raises(ValueError, match="activation"):
        seeddrop.DropoutAdd(0.2, activation="swish")
    with pytest.raises(ValueError, match="dropout probability"):
        seeddrop.DropoutAdd(2.0)
    x, r, b = inputs((4, 16), torch.float32, requires_grad=True)
    torch.manual_seed(0)
    first, second = m(x, r, b), m(x, r, b)
    assert not torch.equal(first, second)  # a fresh seed per training forward
    torch.manual_seed(0)
    assert torch.equal(m(x, r, b), first)
    first.sum().backward()
    assert x.grad is not None and b.grad is not None and r.grad is not None
    m.eval()
    assert_matches(m(x, r, b).detach(), (r + F.gelu(x + b)).detach(), "gelu")


# ---------------------------------------------------------------------------
# CUDA (run by the lead through scripts/gpu_check.sh)
def check_fp32_activation_accuracy(activation, device):
    """The kernels' fp32 activations (gelu through an erfc fit, no cancellation in its
    negative tail) stay within rtol 3e-5 of exact float64 values from -30 to 30, down to
    fp32's smallest normals. In gelu's far tail rounding the exponent -z*z/2 (in base 2)
    to fp32 alone costs a relative ~z**2 * 2**-25 (~1e-5 at z = -12); torch's own fp32 gelu
    is off by up to 100 % there (1 + erf cancels)."""
    z = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([0.0, -0.0, 1e-30, -1e-30])])
    zc = z.to(device)
    got = seeddrop.dropout_add(zc, torch.zeros_like(zc), training=False, activation=activation).cpu()
    zd = z.double()  # float64 references written without cancellation (torch's own cancel in the tails)
    u = math.sqrt(2 / math.pi) * (zd + 0.044715 * zd**3)
    want = {"gelu": 0.5 * zd * torch.special.erfc(-zd / math.sqrt(2)),
            "gelu_tanh": zd * torch.sigmoid(2 * u), "silu": zd * torch.sigmoid(zd)}[activation]
    torch.testing.assert_close(got.double(), want, rtol=3e-5, atol=2e-37)  # GPU: |values| < 2**-126 flush to 0


@pytest.mark.skipif(not stream.HAS_TRITON, reason="needs Triton (the kernels' source)")
def test_gelu_tail_constants_are_the_folded_fit():
    """The literals of the fp32 gelu (_normal_tail, the gelu derivative's pdf) are Numerical
    Recipes' erfc fit times log2(e), minus 1 in the constant term, and the folded constants."""
    import inspect
    import re

    def literals(fn):  # the float literals of a jit function's code, docstring excluded
        code = inspect.getsource(fn.fn).split('"""')[-1]
        return [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", code)]

    expected = [math.log2(math.e) * c - (i == 0) for i, c in enumerate(dadd.NR_ERFC_FIT)]
    tail = literals(dadd._normal_tail)  # 1 / (1.0 + 1 / (2 sqrt 2) |z|), Q's coefficients, log2(e) / 2
    assert dadd.TAIL_FIT == pytest.approx(expected, rel=1e-15)
    assert len(tail) == 13 and tail[0] == 1.0 and tail[2:12] == pytest.approx(expected, rel=1e-15)
    assert tail[1] == pytest.approx(1 / (2 * math.sqrt(2)), rel=1e-15)
    assert tail[12] == pytest.approx(math.log2(math.e) / 2, rel=1e-15)
    tail16 = literals(dadd._normal_tail_16)  # the same form with TAIL_FIT_16
    assert len(tail16) == 9 and tail16[:2] == tail[:2] and tail16[-1] == tail[-1]
    assert tail16[2:8] == list(dadd.TAIL_FIT_16)
    grad = literals(dadd._activation_grad)
    pdf = grad.index(-1.3257480647361592)  # the fp32 pdf: 2**(log2(1/sqrt(2 pi)) - z*z * log2(e)/2)
    assert grad[pdf] == pytest.approx(math.log2(1 / math.sqrt(2 * math.pi)), rel=1e-15)
    assert grad[pdf + 1] == pytest.approx(math.log2(math.e) / 2, rel=1e-15)


def test_16bit_tail_fit_accuracy():
    """TAIL_FIT_16 (the gelu tail for 16-bit results): t * 2**(Q(t) - z*z * log2(e)/2),
    t = 1 / (1 + |z| / (2 sqrt 2)), within 8e-6 relative of Phi(-|z|) (math.erfc, float64)
    for |z| <= 13.6, where Phi(-|z|) is above fp32's smallest normal."""
    worst = 0.0
    for i in range(13601):
        z = i / 1000
        t = 1 / (1 + z / (2 * math.sqrt(2)))
        q = sum(c * t**k for k, c in enumerate(dadd.TAIL_FIT_16))
        exact = 0.5 * math.erfc(z / math.sqrt(2))
        worst = max(worst, abs(t * 2 ** (q - z * z * math.log2(math.e) / 2) / exact - 1))
    assert worst < 8e-6


def check_16bit_gelu_accuracy(device):
    """gelu and its derivative with 16-bit results (the TAIL_FIT_16 path): within 2**-10
    (fp16) / 2**-7 (bf16) relative, one to two ulps of the output dtype, of exact float64 values (absolute near zero: fp16's subnormal step,
    and 2e-5 near the zero of gelu' at -0.75), from -14 to 14 with inputs exact in the dtype."""
    for dtype, ulp, tiny in ((torch.float16, 2.0**-10, 2.0**-24), (torch.bfloat16, 2.0**-7, 1e-37)):
        z = torch.linspace(-14, 14, 4001).to(dtype).unique()
        zc = z.to(device).requires_grad_()
        out = seeddrop.dropout_add(zc, torch.zeros_like(zc), training=False, activation="gelu")
        (grad,) = torch.autograd.grad(out, zc, torch.ones_like(out))
        zd = z.double()
        want = 0.5 * zd * torch.special.erfc(-zd / math.sqrt(2))
        want_grad = 0.5 * torch.special.erfc(-zd / math.sqrt(2)) + zd * torch.exp(-zd * zd / 2) / math.sqrt(2 * math.pi)
        torch.testing.assert_close(out.detach().cpu().double(), want, rtol=ulp, atol=tiny)
        torch.testing.assert_close(grad.cpu().double(), want_grad, rtol=ulp, atol=max(tiny, 2e-5))


@needs_interpreter
def test_16bit_gelu_accurate():
    check_16bit_gelu_accuracy("cpu")


@needs_interpreter
def test_result16_selects_the_16bit_tail_fit():
    """_activation's RESULT16 flag picks TAIL_FIT_16, its absence the 9-term fit: each
    result matches its own formula (float64, within fp32 evaluation: 2e-6 relative) on
    [-4, 4], where the two fits differ by up to 7.7e-6 relative."""
    import triton
    import triton.language as tl

    @triton.jit
    def gelu_kernel(z_ptr, out_ptr, RESULT16: tl.constexpr, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(out_ptr + i, dadd._activation(tl.load(z_ptr + i), 2, True, RESULT16))

    def formula(z, fit):
        t = 1 / (1 + z.abs() / (2 * math.sqrt(2)))
        tail = t * torch.exp2(sum(c * t**k for k, c in enumerate(fit)) - z * z * math.log2(math.e) / 2)
        return z * torch.where(z <= 0, tail, 1 - tail)

    z = torch.linspace(-4, 4, 2048)
    zd = z.double()
    for result16, fit, other in ((True, dadd.TAIL_FIT_16, dadd.TAIL_FIT), (False, dadd.TAIL_FIT, dadd.TAIL_FIT_16)):
        out = torch.empty_like(z)
        gelu_kernel[(1,)](z, out, result16, 2048)
        torch.testing.assert_close(out.double(), formula(zd, fit), rtol=2e-6, atol=1e-30)
        assert ((out.double() - formula(zd, other)).abs() > 4e-6 * formula(zd, other).abs()).any()


def check_fp32_activation_grad_accuracy(activation, device):
    """The backward's fp32 act'(z) (grad_out = 1, no dropout) within 1e-6 + 3e-5 relative of
    exact float64 derivatives from -30 to 30 (absolute near gelu's zero of act' at -0.75)."""
    z = torch.linspace(-30, 30, 6001)
    zc = z.to(device).requires_grad_()
    out = seeddrop.dropout_add(zc, torch.zeros_like(zc), training=False, activation=activation)
    (got,) = torch.autograd.grad(out, zc, torch.ones_like(out))
    zd = z.double()
    k, c = math.sqrt(2 / math.pi), 0.044715
    s2u = torch.sigmoid(2 * k * (zd + c * zd**3))
    sz = torch.sigmoid(zd)
    pdf = torch.exp(-zd * zd / 2) / math.sqrt(2 * math.pi)
    want = {"gelu": 0.5 * torch.special.erfc(-zd / math.sqrt(2)) + zd * pdf,
            "gelu_tanh": s2u + 2 * zd * s2u * (1 - s2u) * k * (1 + 3 * c * zd * zd),
            "silu": sz * (1 + zd * (1 - sz))}[activation]
    torch.testing.assert_close(got.cpu().double(), want, rtol=3e-5, atol=1e-6)


@needs_interpreter
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
def test_fp32_activation_grads_accurate_over_the_whole_range(activation):
    check_fp32_activation_grad_accuracy(activation, "cpu")


@needs_interpreter
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
def test_fp32_activations_accurate_over_the_whole_range(activation):
    check_fp32_activation_accuracy(activation, "cpu")


# ---------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shape", [(1000, 520), (999, 77)], ids=str)
def test_cuda_matches_cpu_reference(dtype, activation, shape):
    torch.manual_seed(17)
    x, r, b = inputs(shape, dtype, requires_grad=True)
    g = torch.randn(shape, dtype=dtype)
    out = seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=SEED)
    grads = _grads(out, (x, r, b), g)
    xc, rc, bc, gc = (t.detach().cuda().requires_grad_(t.requires_grad) for t in (x, r, b, g))
    out_c = seeddrop.dropout_add(xc, rc, P, bias=bc, activation=activation, seed=SEED)
    grads_c = _grads(out_c, (xc, rc, bc), gc)
    if activation in EXACT_ACTS:
        assert_bitwise_equal(out_c.cpu(), out)
        assert_bitwise_equal(grads_c[0].cpu(), grads[0])
    else:
        rtol, atol = TOLERANCE[dtype]
        torch.testing.assert_close(out_c.cpu(), out, rtol=rtol, atol=atol)
        torch.testing.assert_close(grads_c[0].cpu(), grads[0], rtol=rtol, atol=atol * 10)
    assert_bitwise_equal(grads_c[1].cpu(), grads[1])
    rtol, atol = BIAS_TOLERANCE[dtype]
    torch.testing.assert_close(grads_c[2].cpu(), grads[2], rtol=rtol, atol=atol * shape[0])
    again = _grads(seeddrop.dropout_add(xc, rc, P, bias=bc, activation=activation, seed=SEED), (xc, rc, bc), gc)
    assert_bitwise_equal(again[2], grads_c[2])  # bias gradient: deterministic


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_cuda_bias_reducing_backward_over_many_row_tiles(dtype, activation, monkeypatch):
    """One program per SM: every backward program walks many row tiles (16-bit: through the
    loop that prefetches tile t + 1), against the CPU reference."""
    monkeypatch.setattr(dadd, "BWD_PROGRAMS_PER_SM", 1)
    monkeypatch.setattr(dadd, "_PLANS", {})
    shape = (4095, 520)  # not a multiple of any row tile: the last tile is partial
    cfg = dadd.Config(P, True, (), False, dadd.ACTIVATIONS.index(activation))
    plan = dadd._plan(torch.Size(shape), torch.empty((), dtype=dtype, device="cuda"), cfg, True)
    assert plan.tiles_per_program > 4
    torch.manual_seed(18)
    x, r, b = inputs(shape, dtype, requires_grad=True)
    g = torch.randn(shape, dtype=dtype)
    gx, _, gb = _grads(seeddrop.dropout_add(x, r, P, bias=b, activation=activation, seed=SEED), (x, r, b), g)
    xc, rc, bc = (t.detach().cuda().requires_grad_() for t in (x, r, b))
    out_c = seeddrop.dropout_add(xc, rc, P, bias=bc, activation=activation, seed=SEED)
    gx_c, _, gb_c = _grads(out_c, (xc, rc, bc), g.cuda())
    if activation in EXACT_ACTS:
        assert_bitwise_equal(gx_c.cpu(), gx)
    else:
        rtol, atol = TOLERANCE[dtype]
        torch.testing.assert_close(gx_c.cpu(), gx, rtol=rtol, atol=atol * 10)
    rtol, atol = BIAS_TOLERANCE[dtype]
    torch.testing.assert_close(gb_c.cpu(), gb, rtol=rtol, atol=atol * shape[0])


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
def test_cuda_fp32_activations_accurate_over_the_whole_range(activation):
    """The GPU's fast exp / division (libdevice fast_expf, fast_dividef) keep the bound."""
    check_fp32_activation_accuracy(activation, "cuda")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
def test_cuda_fp32_activation_grads_accurate_over_the_whole_range(activation):
    check_fp32_activation_grad_accuracy(activation, "cuda")


@pytest.mark.cuda
@cuda
def test_cuda_16bit_gelu_accurate():
    check_16bit_gelu_accuracy("cuda")


@pytest.mark.cuda
@cuda
def test_cuda_seeds_of_both_integer_widths_share_a_compiled_kernel():
    """seed values in and out of int32 range (Triton types them differently)."""
    x = torch.randn(64, 64, device="cuda")
    r = torch.randn_like(x)
    for seed in (5, 2**40, 7, -(2**50)):
        got = seeddrop.dropout_add(x, r, P, seed=seed).cpu()
        assert_bitwise_equal(got, unfused(x.cpu(), r.cpu(), seed=seed))


def test_plans_depend_on_the_activation():
    """The tile shape of the bias-reducing backward depends on whether an activation is set;
    a plan cached for one must not be reused for the other (call order must not matter)."""
    from seeddrop.ops import dropout_add as da

    t = torch.empty(64, 4096, dtype=torch.bfloat16)
    plain = da.Config(0.1, True, (), False, 0)
    gelu = da.Config(0.1, True, (), False, da.check_activation("gelu"))
    first = da._plan(tuple(t.shape), t, plain, True)
    second = da._plan(tuple(t.shape), t, gelu, True)
    assert first.block_g * 8 == min(4096, da.BWD_REDUCE_COLS[False])
    assert second.block_g * 8 == min(4096, da.BWD_REDUCE_COLS[True])
    assert da.BWD_REDUCE_COLS[False] != da.BWD_REDUCE_COLS[True]  # else this test cannot fail
    relu = da.Config(0.1, True, (), False, da.check_activation("relu"))
    assert da._plan(tuple(t.shape), t, relu, True).block_g == first.block_g  # relu: cheap, planned like None


def test_gpu_plans_of_the_16bit_kernels(monkeypatch):
    """The H200-measured plan choices (docs/benchmarks.md, 2026-12-01 session 6), computed
    for a 132-SM GPU without one: the 16-bit bias-reducing backward with an activation takes
    2048-byte tiles and the prefetch, relu and gelu the register limit; fp32 and no activation keep
    4096-byte tiles without the limit; the forward limits registers for gelu / gelu_tanh /
    silu in 16-bit only."""
    monkeypatch.setattr(dadd, "sm_count", lambda device: 132)
    shape = (8192, 49152)

    def plan(act, itemsize, reduce_bias=True, forward=False):
        cfg = dadd.Config(0.1, True, (), False, dadd.check_activation(act))
        return cfg, dadd._make_plan(shape, True, None, itemsize, cfg, reduce_bias, forward)

    for act in ("relu", "gelu", "gelu_tanh", "silu"):
        cfg, p = plan(act, 2)
        limited = (("maxnreg", 64),) if act in ("relu", "gelu") else ()
        assert p.block_r * p.block_g * 8 * 2 == 2048 and p.options == limited and p.num_warps == 4
        assert dadd.prefetches(cfg, 2, True) and not dadd.prefetches(cfg, 4, True)
        assert not dadd.prefetches(cfg, 2, False)
    for act, itemsize in ((None, 2), (None, 4), ("gelu", 4)):
        cfg, p = plan(act, itemsize)
        assert p.block_r * p.block_g * 8 * itemsize == 4096 and p.options == ()
        assert not dadd.prefetches(cfg, itemsize, True)
    assert plan("gelu", 2, reduce_bias=False)[1].options == ()
    for act in ("gelu", "gelu_tanh", "silu"):
        assert plan(act, 2, False, True)[1].options == (("maxnreg", 64),)
        assert plan(act, 4, False, True)[1].options == ()
    assert plan("relu", 2, False, True)[1].options == () and plan(None, 2, False, True)[1].options == ()
