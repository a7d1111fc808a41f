"""seeddrop.sparse_jl / jl_matrix / SparseJL (src/seeddrop/ops/sparse_jl.py, issue 5): the
seeded very sparse Johnson-Lindenstrauss projection generated inside the kernel.

S's stream is checked against tests/jl_spec.py, an independent NumPy implementation of
projection spec v2 written from docs/sparse_jl.md alone: each 64-column cell gets a
Binomial(64, rho) count from an exact integer table, Floyd's algorithm places the nonzeros,
64 sign bits give their signs, magnitude sqrt(1 / (rho * k)).

Tolerances against the float64 truth ref = x @ S.T (S from jl_matrix in float64), with
A = |x| @ |S|.T: fp32 accumulation |y - ref| <= (d + 10) * 2**-24 * A (the rounding bound
of a d-term sum, plus TF32-split slack on the GPU); float64 (d + 2) * 2**-53 * A; the
final rounding to the output dtype adds half an ulp: 2**-8 |ref| (bf16), 2**-11 |ref|
(fp16, plus 2**-25 absolute for its subnormals), 2**-24 |ref| (fp32). Statistical checks
use 6-sigma binomial bounds.
"""
import io
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch

from seeddrop import SparseJL, jl_matrix, sparse_jl
from seeddrop._common import Seed
from seeddrop.ops import sparse_jl as J

from conftest import DTYPES, assert_bitwise_equal, binomial_bound, needs_interpreter
from jl_spec import binomial_table, np_jl_matrix

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

_UNIT_ROUNDOFF = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24,
                  torch.float64: 2.0 ** -53}


# ---------------------------------------------------------------------------
# independent reference of S, written from the spec
# ---------------------------------------------------------------------------
def spec_matrix(k: int, d: int, seed: int, density=None) -> np.ndarray:
    """S (float64) from the independent spec v2 implementation (tests/jl_spec.py)."""
    return np_jl_matrix(seed, k, d, 1 / math.sqrt(d) if density is None else density)


def error_bound(x: torch.Tensor, s64: torch.Tensor, dtype: torch.dtype):
    """(ref, bound): the float64 truth x @ S.T and the tolerance stated in the module docstring."""
    x64 = x.to(torch.float64).reshape(-1, x.shape[-1])
    ref = x64 @ s64.T
    a = x64.abs() @ s64.abs().T
    d = x.shape[-1]
    acc = (d + 2) * 2.0 ** -53 if dtype == torch.float64 else (d + 10) * 2.0 ** -24
    # Rounding into fp16's subnormal range errs by up to half its spacing, 2**-25, absolute.
    subnormal = 2.0 ** -25 if dtype == torch.float16 else 0.0
    bound = acc * a + _UNIT_ROUNDOFF[dtype] * ref.abs() + subnormal + 1e-300
    return ref.reshape(*x.shape[:-1], -1), bound.reshape(*x.shape[:-1], -1)


def assert_within(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, msg=""):
    err = (y.to(torch.float64) - ref).abs()
    assert y.shape == ref.shape, msg
    assert bool((err <= bound).all()), f"{msg}: max excess {float((err - bound).max()):.3g}"


# ---------------------------------------------------------------------------
# the stream
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, -1, 2**64 - 1, 123456789012345, -(2**63)])
@pytest.mark.parametrize("k, d, density", [(12, 45, None), (9, 64, 0.3), (3, 17, 1.0), (10, 33, 1e-9),
                                            (6, 200, 0.7), (5, 130, 0.5 + 2**-40), (32, 2048, 0.01),
                                            (8, 1024, None)])
def test_matrix_matches_spec(seed, k, d, density):
    """Every entry bit for bit. Both ways the kernels count a cell's nonzeros: at
    (32, 2048, 0.01) every cell holds fewer than 7 (asserted), so the compares against
    C[1..7] alone count them; the dense cases need the binary search."""
    expected = torch.from_numpy(spec_matrix(k, d, seed, density))
    if density == 0.01:
        assert int((expected != 0).reshape(k, d // 64, 64).sum(-1).max()) < 7
    got = jl_matrix(k, d, seed, density=density, dtype=torch.float64)
    assert_bitwise_equal(got, expected, f"seed={seed}")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        cdt = torch.float32  # sign * scale in fp32, rounded once
        want = (torch.sign(expected).to(cdt) * torch.tensor(expected.abs().max().item()).to(cdt)).to(dtype)
        assert_bitwise_equal(jl_matrix(k, d, seed, density=density, dtype=dtype), want, str(dtype))


def test_params_and_sklearn_convention():
    p = J.jl_params(1024, 49152)
    assert p.density == 1 / math.sqrt(49152)  # used as given: no resolution steps
    # scikit-learn SparseRandomProjection: +-sqrt(1 / density) / sqrt(n_components)
    assert math.isclose(p.scale, math.sqrt(1 / p.density) / math.sqrt(1024), rel_tol=1e-15)
    assert J.jl_params(7, 10, 1e-12).density == 1e-12
    assert J.jl_params(7, 10, 0.25).scale == math.sqrt(1 / (0.25 * 7))


@pytest.mark.parametrize("density", [1 / math.sqrt(49152), 1 / 64, 0.3, 0.5, 0.7, 1.0, 1e-9])
def test_count_table_is_the_exact_binomial_cdf(density):
    """stream.count_table against the independent table and against the Binomial(64, rho)
    probabilities it must encode: each count's probability 2**-32 * (C[n+1] - C[n]) is
    within 2**-32 of the exact one."""
    table = J.stream.count_table(density)
    assert list(table[1:65]) == binomial_table(density)
    assert table[0] == 0 and set(table[65:]) == {2**32} and len(table) == 128
    rho = Fraction(density)
    for n in range(65):
        exact = math.comb(64, n) * rho**n * (1 - rho) ** (64 - n)
        assert abs(Fraction(table[n + 1] - table[n], 2**32) - exact) <= Fraction(1, 2**32)


@pytest.mark.parametrize("density", [0.05, 0.7])
def test_positions_are_uniform_within_cells(density):
    """Floyd's algorithm (and its complement for rho > 1/2) puts nonzeros at every position of
    a cell equally often, and the count per cell follows Binomial(64, rho) (6 sigma)."""
    k, d = 512, 1024  # 8192 cells
    nonzero = jl_matrix(k, d, 4321, density=density, dtype=torch.float64) != 0
    per_position = nonzero.reshape(-1, 64).sum(0)
    cells = k * d // 64
    assert bool(((per_position - cells * density).abs() <= binomial_bound(cells, density)).all())
    counts = nonzero.reshape(-1, 64).sum(1)
    for n in (0, 1, 2, 3, 32, 44, 45, 46, 64):
        p_n = math.comb(64, n) * density**n * (1 - density) ** (64 - n)
        assert abs(int((counts == n).sum()) - cells * p_n) <= binomial_bound(cells, p_n) + 1e-9


def test_matrix_statistics():
    """Density, sign balance, magnitude and independence of neighbouring entries (6 sigma)."""
    k, d, density = 256, 4096, 1 / 64  # 2**20 entries, density exactly representable
    s = jl_matrix(k, d, 20240607, density=density, dtype=torch.float64)
    n = s.numel()
    nonzero = s != 0
    nnz = int(nonzero.sum())
    assert abs(nnz - n * density) <= binomial_bound(n, density)
    assert bool((s[nonzero].abs() == math.sqrt(1 / (density * k))).all())
    pos = int((s > 0).sum())
    assert abs(pos - nnz / 2) <= binomial_bound(nnz, 0.5)
    # E[S^T S] = I: mean squared entry is 1 / k
    assert abs(float((s ** 2).sum()) / n * k - 1) <= binomial_bound(n, density) / (n * density)
    # neighbours in the same Philox call (columns) and across rows are independent
    for a, b in ((nonzero[:, :-1], nonzero[:, 1:]), (nonzero[:-1], nonzero[1:])):
        m = a.numel()
        both = int((a & b).sum())
        assert abs(both - m * density ** 2) <= binomial_bound(m, density ** 2)
    same_sign = int(((s[:, :-1] * s[:, 1:]) > 0).sum())
    pairs = int((nonzero[:, :-1] & nonzero[:, 1:]).sum())
    assert abs(same_sign - pairs / 2) <= binomial_bound(pairs, 0.5)
    # per-row counts: their mean and spread are Binomial(d, density)'s
    rows = nonzero.sum(1).double()
    assert abs(float(rows.var()) / (d * density * (1 - density)) - 1) < 6 * math.sqrt(2 / (k - 1))


def test_dense_density_is_rademacher():
    s = jl_matrix(16, 256, 5, density=1.0, dtype=torch.float64)
    assert bool((s.abs() == 0.25).all())
    pos = int((s > 0).sum())
    assert abs(pos - s.numel() / 2) <= binomial_bound(s.numel(), 0.5)


# ---------------------------------------------------------------------------
# the projection
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, k, density", [((3, 5, 72), 24, None), ((41, 200), 33, 0.3), ((130,), 17, 1.0)])
def test_projection_matches_matrix(dtype, shape, k, density):
    torch.manual_seed(1)
    x = torch.randn(shape).to(dtype)
    seed = -987654321
    y = sparse_jl(x, k, seed, density=density)
    assert y.dtype == dtype and y.shape == (*shape[:-1], k) and y.is_contiguous()
    ref, bound = error_bound(x, jl_matrix(k, shape[-1], seed, density=density, dtype=torch.float64), dtype)
    assert_within(y, ref, bound, str(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradient_is_grad_times_s(dtype):
    torch.manual_seed(2)
    x = torch.randn(4, 3, 56).to(dtype).requires_grad_()
    seed = torch.tensor(77)
    y = sparse_jl(x, 20, seed, density=0.2)
    g = torch.randn_like(y)
    y.backward(g)
    s64 = jl_matrix(20, 56, 77, density=0.2, dtype=torch.float64)
    ref, bound = error_bound(g, s64.T.contiguous(), dtype)  # grad = g @ S: a k-term reduction
    assert_within(x.grad, ref, bound, str(dtype))


@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
def test_gradcheck(seed_kind):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 20, dtype=torch.float64, requires_grad=True)
    seed = 99 if seed_kind == "int" else torch.tensor(99)
    fn = lambda t: sparse_jl(t, 8, seed, density=0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=True)  # backward is differentiable too


def test_backward_saves_only_the_seed():
    saved = []
    x = torch.randn(6, 40, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = sparse_jl(x, 10, torch.tensor(5))
    assert [t.numel() for t in saved] == [1]
    y.sum().backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        sparse_jl(x, 10, 5)
    assert saved == []


def test_shapes_and_strides():
    torch.manual_seed(4)
    base = torch.randn(6, 50, 40)
    want = sparse_jl(base.contiguous(), 12, 3)
    variants = {
        "transposed leading dims": base.transpose(0, 1).contiguous().transpose(0, 1),
        "feature stride 2": torch.randn(6, 50, 80)[..., ::2],
        "expanded": base[:1].expand(6, 50, 40),
        "permuted 2-D": torch.randn(40, 300).t(),
    }
    for name, x in variants.items():
        y = sparse_jl(x, 12, 3)
        torch.testing.assert_close(y, sparse_jl(x.contiguous(), 12, 3), rtol=0, atol=0, msg=name)
    assert torch.equal(want, sparse_jl(base, 12, 3))
    assert sparse_jl(torch.randn(40), 12, 3).shape == (12,)
    assert sparse_jl(torch.randn(0, 40), 12, 3).shape == (0, 12)
    assert sparse_jl(torch.randn(2, 0, 40), 12, 3).shape == (2, 0, 12)


def test_reproducible_from_the_seed():
    torch.manual_seed(5)
    x = torch.randn(7, 64)
    a = sparse_jl(x, 16, -1)
    assert torch.equal(a, sparse_jl(x, 16, 2**64 - 1))
    assert torch.equal(a, sparse_jl(x, 16, torch.tensor(-1)))
    assert torch.equal(a, sparse_jl(x, 16, torch.tensor([-1])))
    assert not torch.equal(a, sparse_jl(x, 16, -2))
    assert torch.equal(jl_matrix(16, 64, -1), jl_matrix(16, 64, torch.tensor(-1)))


def test_johnson_lindenstrauss_property():
    """Squared pairwise distances of 300 points are preserved in expectation, and their
    distortion matches scikit-learn's SparseRandomProjection at the same k and density:
    each statistic lies within 6 standard deviations of its spread over 30 sklearn seeds."""
    sk = pytest.importorskip("sklearn.random_projection")
    n, d, eps = 300, 512, 0.5
    k = int(sk.johnson_lindenstrauss_min_dim(n, eps=eps))
    density = J.jl_params(k, d).density
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d))
    iu = np.triu_indices(n, 1)

    def sq_dist(z):
        g = z @ z.T
        sq = np.diag(g)
        return (sq[:, None] + sq[None, :] - 2 * g)[iu]

    base = sq_dist(x)

    def stats(y):
        r = sq_dist(y) / base
        return np.array([r.mean(), r.std(), np.mean(np.abs(r - 1) > 0.1), np.mean(np.abs(r - 1) > eps)])

    ref = np.stack([stats(sk.SparseRandomProjection(k, density=density, dense_output=True, random_state=s)
                          .fit_transform(x)) for s in range(30)])
    ours = np.stack([stats(sparse_jl(torch.from_numpy(x), k, 1000 + s).numpy()) for s in range(3)])
    lo = ref.mean(0) - 6 * ref.std(0) - 1e-3
    hi = ref.mean(0) + 6 * ref.std(0) + 1e-3
    assert ((ours >= lo) & (ours <= hi)).all(), (ours, ref.mean(0), ref.std(0))
    assert abs(ours[:, 0].mean() - 1) <= 6 * ref[:, 0].std() / math.sqrt(3)  # E[r] = 1 over 3 seeds
    assert ours[:, 3].max() <= 1e-3  # the JL guarantee at eps: (almost) no pair outside 1 +- eps


# ---------------------------------------------------------------------------
# the Triton kernels (interpreter) against the PyTorch reference
# ---------------------------------------------------------------------------
@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_match_reference(dtype):
    """Every config path (splits, swapped tiles, tails) writes every element (outputs are
    poisoned with NaN) and agrees with the reference to one rounding of the output."""
    torch.manual_seed(6)
    params = J.jl_params(40, 136, 0.2)
    value_seed, tensor_seed = Seed(None, -5), Seed(torch.tensor(2**62 + 3), 0)
    a_fwd, a_bwd = torch.randn(21, 136).to(dtype), torch.randn(21, 40).to(dtype)
    cases = [(None, value_seed), (J.JLConfig(16, 64, 64, split=3), tensor_seed),
             (J.JLConfig(32, 64, 64, swap=True, split=2), value_seed), (J.JLConfig(16, 64, 128, swap=True), tensor_seed)]
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    for forward, a in ((True, a_fwd), (False, a_bwd)):
        for cfg, seed in cases:
            ref = J.project_reference(a, params, seed, forward)
            out = torch.full(ref.shape, float("nan"), dtype=dtype)
            J.launch_project(a, out, params, seed, forward, cfg)
            torch.testing.assert_close(out, ref, rtol=4 * _UNIT_ROUNDOFF[dtype], atol=atol,
                                       msg=f"forward={forward} {cfg}")
    # the nonzero-walking forward: row blocks of S and of x with tails, several cells per
    # step, splits
    for m, (block_j, block_g, splits, block_m), seed in (
            (1, (16, 1, 3, 0), value_seed), (5, (32, 2, 1, 0), tensor_seed),
            (21, (8, 4, 2, 8), value_seed), (21, (8, 2, 1, 32), tensor_seed),
            (21, (16, 1, 3, 8), value_seed)):  # 3 row blocks of x x 3 splits, a tail of S's rows
        ref = J.project_reference(a_fwd[:m], params, seed, True)
        out = torch.full(ref.shape, float("nan"), dtype=dtype)
        plan = J.gather_plan(m, 40, 136, a_fwd.device, block_j, block_g, splits, block_m)
        J.launch_gather(a_fwd[:m], out, params, seed, plan)
        torch.testing.assert_close(out, ref, rtol=4 * _UNIT_ROUNDOFF[dtype], atol=atol, msg=f"gather m={m} {plan}")
    with pytest.raises(ValueError, match="multiple of 64"):
        J.launch_project(a_fwd, torch.empty(21, 40, dtype=dtype), params, value_seed, True, J.JLConfig(16, 64, 32))


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernels_match_reference_in_dense_cells(dtype):
    """rho > 1/2: Floyd's algorithm picks the zeros and the mask is complemented (cells with
    up to 64 nonzeros), through both kernels: the nonzero walk (3 rows of x) and the dense
    tiles (GATHER_MAX_ROWS + 1 rows, and the backward)."""
    torch.manual_seed(10)
    params = J.jl_params(24, 200, 0.7)
    seed = Seed(None, 123)
    atol = 1e-5
    dense_rows = J.GATHER_MAX_ROWS + 1
    for forward, a in ((True, torch.randn(3, 200)), (True, torch.randn(dense_rows, 200)),
                       (False, torch.randn(21, 24))):
        a = a.to(dtype)
        ref = J.project_reference(a, params, seed, forward)
        out = torch.full(ref.shape, float("nan"), dtype=dtype)
        J.launch_project(a, out, params, seed, forward)
        torch.testing.assert_close(out, ref, rtol=4 * _UNIT_ROUNDOFF[dtype], atol=atol, msg=f"{forward} {a.shape}")


def test_non_finite_inputs_follow_the_kernel():
    """Documented difference: for at most GATHER_MAX_ROWS rows the forward adds x only where S
    is nonzero (as a sparse product does), so an inf reaches only outputs whose row of S has
    a nonzero in its column; the dense tiles and the reference multiply S's zeros too
    (0 * inf = nan in every other output of that row of x)."""
    k, d, seed = 16, 256, 3
    x = torch.randn(J.GATHER_MAX_ROWS + 1, d)
    x[:, 5] = float("inf")
    s = jl_matrix(k, d, seed, density=0.1, dtype=torch.float64)
    hit = s[:, 5] != 0
    assert 0 < int(hit.sum()) < k  # else this test cannot tell the two behaviours apart
    dense = J.project_reference(x, J.jl_params(k, d, 0.1), Seed(None, seed), True)
    assert bool((~dense.isfinite()).all()) and bool(dense[:, ~hit].isnan().all())
    if J.use_triton(x):
        few = sparse_jl(x[:J.GATHER_MAX_ROWS], k, seed, density=0.1)  # the nonzero walk
        assert bool((~few.isfinite() == hit[None, :]).all())
        assert bool(few[:, ~hit].isfinite().all())
        many = sparse_jl(x, k, seed, density=0.1)  # dense tiles
        assert bool((~many.isfinite()).all()) and bool(many[:, ~hit].isnan().all())


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_kernel_matches_reference(dtype):
    for k, d, seed in ((70, 130, Seed(None, 11)), (5, 8, Seed(torch.tensor(-3), 0))):
        params = J.jl_params(k, d, 0.4)
        want = J.matrix_reference(params, seed, dtype, "cpu")
        out = torch.full((d, k), float("nan"), dtype=dtype).t()  # strided output
        assert_bitwise_equal(J.launch_matrix(out, params, seed), want, str(dtype))


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_column_major_copy(dtype):
    """The walk's column-major copy of x: every element, any input strides, rows that are
    not a power of two."""
    for m, r in ((9, 1100), (21, 64), (33, 5), (70, 300)):  # several programs along R (9, 70) and along M (70)
        base = torch.randn(2 * m, r + 3, dtype=torch.float64).to(dtype)
        for a in (base[:m, :r], base[::2, 1:r + 1], base[:m, :r].t().contiguous().t()):
            t = J.column_major(a)
            assert t.stride() == (1, m) and t.shape == a.shape
            assert_bitwise_equal(t, a, f"{m}x{r} strides {a.stride()}")


@needs_interpreter
def test_public_api_runs_the_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(J, "project_reference", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(J, "matrix_reference", lambda *a, **k: calls.append(1))
    sparse_jl(torch.randn(3, 16), 4, 1)
    jl_matrix(4, 16, 1)
    assert calls == []


# ---------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------
def test_module_seed_and_state_dict():
    torch.manual_seed(7)
    m1 = SparseJL(40, 12)
    m2 = SparseJL(40, 12)
    torch.manual_seed(7)
    assert torch.equal(SparseJL(40, 12).seed, m1.seed)  # drawn from torch's generator
    assert m1.seed.dtype == torch.int64 and m1.seed.shape == () and "seed" in m1.state_dict()
    x = torch.randn(5, 40)
    assert not torch.equal(m1(x), m2(x))
    assert torch.equal(m1(x), sparse_jl(x, 12, int(m1.seed)))
    buf = io.BytesIO()
    torch.save(m1.state_dict(), buf)
    buf.seek(0)
    m2.load_state_dict(torch.load(buf))
    assert torch.equal(m1(x), m2(x))
    m3 = SparseJL(40, 12, density=0.25, seed=2**64 - 1)
    assert torch.equal(m3(x), sparse_jl(x, 12, -1, density=0.25))
    assert repr(m3) == "SparseJL(in_features=40, out_features=12, density=0.25)"
    xr = x.clone().requires_grad_()
    m3(xr).sum().backward()
    assert xr.grad.shape == x.shape


def test_module_state_dict_records_the_stream_version():
    """A state_dict without `stream_version` (saved under projection spec v1) or with another
    version loads its seed but warns that S differs; the current version loads silently."""
    m = SparseJL(40, 12, seed=5)
    assert int(m.state_dict()["stream_version"]) == 2
    old = {"seed": torch.tensor(9)}
    with pytest.warns(UserWarning, match="version none"):
        m.load_state_dict(old)
    assert int(m.seed) == 9 and int(m.stream_version) == 2 and "stream_version" not in old
    with pytest.warns(UserWarning, match="version 3"):
        m.load_state_dict({"seed": torch.tensor(9), "stream_version": torch.tensor(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SparseJL(40, 12).load_state_dict(m.state_dict())
        # a non-strict load that has nothing for this module: no warning, nothing changes
        model = torch.nn.Sequential(torch.nn.Linear(40, 40), SparseJL(40, 12, seed=7))
        model.load_state_dict({"0.weight": torch.zeros(40, 40), "0.bias": torch.zeros(40)}, strict=False)
        assert int(model[1].seed) == 7


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------
def test_errors():
    x = torch.randn(3, 16)
    for density in (0, -0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="density"):
            sparse_jl(x, 4, 1, density=density)
    for density in ("0.5", True, [0.5]):
        with pytest.raises(TypeError, match="density"):
            sparse_jl(x, 4, 1, density=density)
    for k in (0, -3):
        with pytest.raises(ValueError, match="out_features"):
            sparse_jl(x, k, 1)
    for k in (2.5, True, None):
        with pytest.raises(TypeError, match="out_features"):
            sparse_jl(x, k, 1)
    with pytest.raises(ValueError, match="at least one dimension"):
        sparse_jl(torch.tensor(1.0), 4, 1)
    with pytest.raises(ValueError, match="in_features"):
        sparse_jl(torch.randn(3, 0), 4, 1)
    with pytest.raises(TypeError, match="dtype"):
        sparse_jl(torch.ones(3, 16, dtype=torch.int32), 4, 1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        sparse_jl([1.0, 2.0], 4, 1)
    with pytest.raises(ValueError, match="explicit seed"):
        sparse_jl(x, 4, None)
    with pytest.raises(TypeError, match="seed"):
        sparse_jl(x, 4, 1.5)
    with pytest.raises(TypeError, match="seed"):
        sparse_jl(x, 4, torch.tensor(1.0))
    with pytest.raises(ValueError, match="seed"):
        sparse_jl(x, 4, torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="dtype"):
        jl_matrix(4, 16, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match="in_features"):
        jl_matrix(4, 0, 1)
    with pytest.raises(ValueError, match="in_features"):
        J.jl_params(4, 2**32 + 1)
    with pytest.raises(ValueError, match="explicit seed"):
        jl_matrix(4, 16, None)
    with pytest.raises(ValueError, match=r"\[\.\.\., 16\]"):
        SparseJL(16, 4)(torch.randn(3, 15))
    with pytest.raises(ValueError, match="density"):
        SparseJL(16, 4, density=2.0)


# ---------------------------------------------------------------------------
# CUDA (run through the device tool)
# ---------------------------------------------------------------------------
@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 7, 64, 300, 2048])
def test_cuda_matches_reference(dtype, m):
    torch.manual_seed(8)
    k, d = 256, 4096 + 24
    x = torch.randn(m, d).to(dtype)
    s64 = jl_matrix(k, d, 31, dtype=torch.float64)
    assert torch.equal(jl_matrix(k, d, 31, dtype=torch.float64, device="cuda").cpu(), s64)
    xc = x.cuda().requires_grad_()
    y = sparse_jl(xc, k, 31)
    ref, bound = error_bound(x, s64, dtype)
    assert_within(y.cpu(), ref, bound, f"{dtype} m={m}")
    g = torch.randn(m, k).to(dtype)
    y.backward(g.cuda())
    ref, bound = error_bound(g, s64.T.contiguous(), dtype)
    assert_within(xc.grad.cpu(), ref, bound, f"grad {dtype} m={m}")


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("density", [None, 0.3, 0.7, 1.0])
def test_cuda_matrix_matches_spec(density):
    """Bitwise against the spec; the second seed needs 64 bits, after a kernel was compiled
    and cached (FastKernel) for one that fits in 32: seed_value must be typed int64."""
    k, d = 96, 1000
    for seed in (-77, 2**40 + 3):
        expected = torch.from_numpy(spec_matrix(k, d, seed, density))
        got = jl_matrix(k, d, seed, density=density, dtype=torch.float64, device="cuda").cpu()
        assert_bitwise_equal(got, expected, f"seed={seed}")
        for rows in (3, 64):  # the nonzero walk, then dense tiles (forward and backward)
            x = torch.randn(rows, d, dtype=torch.float64)
            xc = x.cuda().requires_grad_()
            y = sparse_jl(xc, k, seed, density=density)
            torch.testing.assert_close(y.cpu(), x @ expected.T, rtol=1e-12, atol=1e-12)
            g = torch.randn(rows, k, dtype=torch.float64)
            y.backward(g.cuda())
            torch.testing.assert_close(xc.grad.cpu(), g @ expected, rtol=1e-12, atol=1e-12)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 8, 21, 64])
def test_cuda_gather_plans_match_spec(m):
    """The nonzero walk on the GPU with row blocks of x (with tails) and splits, against
    x @ S.T with S from the NumPy spec (fp64: exact to rounding)."""
    k, d, seed = 200, 5000, 2**33 + 1
    s64 = torch.from_numpy(spec_matrix(k, d, seed, 0.05))
    x = torch.randn(m, d, dtype=torch.float64)
    ref = x @ s64.T
    params = J.jl_params(k, d, 0.05)
    for block_j, block_g, splits, block_m in ((0, 0, 0, 0), (16, 4, 3, 8), (8, 2, 1, 16), (32, 4, 1, 64)):  # tails
        plan = J.gather_plan(m, k, d, torch.device("cuda"), block_j, block_g, splits, block_m)
        out = torch.full((m, k), float("nan"), dtype=torch.float64, device="cuda")
        J.launch_gather(x.cuda(), out, params, Seed(None, seed), plan)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12, msg=str(plan))


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("batch", [1, 64])
def test_cuda_s_takes_no_memory(batch):
    k, d = 1024, 49152  # S in bf16 would take 100 MB
    x = torch.randn(batch, d, device="cuda", dtype=torch.bfloat16)
    seed = torch.tensor(1, device="cuda")
    sparse_jl(x, k, seed)  # compile
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    y = sparse_jl(x, k, seed)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    copy = x.numel() * x.element_size() if batch > J.GATHER_IN_PLACE_ROWS else 0  # the walk's column-major x
    assert extra <= y.numel() * y.element_size() + (8 << 20) + copy + (1 << 20)  # output + split partials + copy
    assert torch.cuda.memory_allocated() - before == y.numel() * y.element_size()


def test_gpu_plans_take_128_rows_where_256_cannot_fill_the_gpu(monkeypatch):
    """default_config for a 132-SM GPU (no GPU needed): 256-row tiles only when they give
    at least 0.7 tiles per SM (H200, 2026-12-01: [4096 / 8192, 4096] -> 256 took 15-16 %
    less time with 128 rows in three runs; [4096 / 8192, 49152] -> 1024 1.8x more)."""
    monkeypatch.setattr(J, "sm_count", lambda device: 132)
    J.default_config.cache_clear()
    cuda = torch.device("cuda")
    try:
        for m, n, r, block_m in ((4096, 256, 4096, 128), (8192, 256, 4096, 128), (4096, 1024, 49152, 256),
                                 (8192, 1024, 49152, 256), (4096, 49152, 1024, 256), (1024, 1024, 49152, 128)):
            assert J.default_config(m, n, r, torch.bfloat16, cuda).block_m == block_m, (m, n, r)
        assert J.default_config(8192, 1024, 49152, torch.float16, cuda).block_m == 128  # fp16 at 256 spills
    finally:
        J.default_config.cache_clear()
