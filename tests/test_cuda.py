"""CUDA checks (run on the GPU through scripts/gpu_check.sh): the Triton kernels on
CUDA produce the CPU reference's output bit for bit."""
import pytest
import torch

import seeddrop
from seeddrop import _extension
from seeddrop import stream

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _strided_cases(gen):
    base = torch.randn(37, 29, 11, generator=gen)
    yield "contiguous", base, ()
    yield "transposed", base[:, :, 0].t(), ()
    yield "permuted", base.permute(2, 0, 1), ()
    yield "sliced", base[::2, 1::3, :], ()
    yield "expanded", torch.randn(1, 29, 1, generator=gen).expand(37, 29, 11), ()
    yield "shared0", base, (0,)
    yield "shared1", base, (1,)
    yield "shared02", base, (0, 2)
    yield "shared_last", base, (-1,)
    yield "big_rows", torch.randn(3, 100_003, generator=gen), ()


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu_reference(dtype):
    gen = torch.Generator().manual_seed(1234)
    for name, x_cpu, shared in _strided_cases(gen):
        for p in (0.1, 0.5, 0.9):
            seed = int(torch.randint(-(2**62), 2**62, (), generator=gen)) * 2 + 1
            x_cpu = x_cpu.to(dtype)
            x_gpu = x_cpu.cuda() if x_cpu.is_contiguous() else _same_layout_cuda(x_cpu)
            ref = seeddrop.dropout(x_cpu, p, seed=seed, shared_dims=shared)
            out = seeddrop.dropout(x_gpu, p, seed=seed, shared_dims=shared)
            assert out.stride() == torch.empty_like(x_gpu).stride(), name
            assert torch.equal(out.cpu(), ref), (name, dtype, p)


def _same_layout_cuda(x_cpu):
    """A CUDA tensor with the same values, shape and strides as a CPU view."""
    base = x_cpu._base if x_cpu._base is not None else x_cpu
    gpu_base = base.cuda()
    return gpu_base.as_strided(x_cpu.shape, x_cpu.stride(), x_cpu.storage_offset())


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_per_row_and_backward(dtype):
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(64, 1000, generator=gen).to(dtype)
    seeds = torch.randint(-(2**63), 2**63 - 1, (64,), generator=gen)
    ref = seeddrop.dropout(x, 0.3, seed=seeds)
    out = seeddrop.dropout(x.cuda(), 0.3, seed=seeds.cuda())
    assert torch.equal(out.cpu(), ref)
    xg = x.cuda().requires_grad_()
    y = seeddrop.dropout(xg, 0.3, seed=seeds.cuda())
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(xg.grad.cpu(), seeddrop.dropout(grad.cpu(), 0.3, seed=seeds))


def test_cuda_mask_matches_reference():
    for seed in (0, 123, -1, 2**63 + 5):
        m_gpu = seeddrop.dropout_mask((129, 257), 0.37, seed, device="cuda")
        m_cpu = seeddrop.dropout_mask((129, 257), 0.37, seed)
        assert torch.equal(m_gpu.cpu(), m_cpu)


def test_cuda_more_than_2_31_elements():
    """A real > 2**31-element tensor: sampled positions (and the whole tail) equal the
    reference stream evaluated at those logical indices."""
    n = 2**31 + 4099
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * n * 2 + (1 << 30):
        pytest.skip("not enough GPU memory")
    x = torch.ones(n, dtype=torch.float16, device="cuda")
    seed, p = 2**40 + 17, 0.25
    y = seeddrop.dropout(x, p, seed=seed)
    idx = torch.cat([
        torch.randint(0, n, (1 << 20,), device="cuda"),
        torch.arange(n - (1 << 20), n, device="cuda"),
        torch.arange(2**31 - 4096, 2**31 + 4096, device="cuda"),
    ])
    keep = stream.keep_at_indices(torch.tensor(seed, device="cuda"), idx, p)
    expected = torch.where(keep, torch.tensor(1 / (1 - p), dtype=torch.float32, device="cuda"), 0.0).half()
    assert torch.equal(y[idx], expected)
    kept = (y != 0).sum().item()
    mean, sd = n * (1 - p), (n * p * (1 - p)) ** 0.5
    assert abs(kept - mean) < 6 * sd
    del x, y
    torch.cuda.empty_cache()


def _train_step_parts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256), seeddrop.Dropout(0.5), torch.nn.ReLU(),
        seeddrop.VariationalDropout(0.3, shared_dims=(0,)), torch.nn.Linear(256, 256), seeddrop.Dropout(0.5),
    ).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(64, 256, device="cuda")
    return model, opt, x


def test_cuda_graph_training_step_draws_new_masks_and_is_reproducible():
    model, opt, x = _train_step_parts()

    def step():
        opt.zero_grad(set_to_none=False)
        y = model(x)
        y.square().mean().backward()
        opt.step()
        return y

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = step()

    def replays(n):
        outs = []
        for _ in range(n):
            graph.replay()
            outs.append((y_static == 0).clone())
        return outs

    torch.manual_seed(42)
    first = replays(3)
    assert 0.4 < first[0].float().mean().item() < 0.6  # the last layer is a p=0.5 dropout
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    torch.manual_seed(42)
    again = replays(3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_compile_on_cuda_matches_eager():
    x = torch.randn(32, 512, device="cuda", requires_grad=True)
    seeds = torch.randint(-(2**63), 2**63 - 1, (32,), device="cuda")

    def f(t):
        return seeddrop.dropout(t, 0.3, seed=seeds) * 2 + seeddrop.dropout(t, 0.5, seed=77, shared_dims=(0,))

    compiled = torch.compile(f, fullgraph=True)
    y_comp = compiled(x).detach().clone()
    assert torch.equal(y_comp, f(x).detach())


def test_compile_reduce_overhead_draws_new_masks():
    model, _, xin = _train_step_parts()
    fast = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    outs = []
    with torch.no_grad():
        for _ in range(4):
            torch.compiler.cudagraph_mark_step_begin()
            outs.append((fast(xin) == 0).clone())
    assert 0.4 < outs[-1].float().mean().item() < 0.6
    assert not torch.equal(outs[-1], outs[-2])


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_compile_on_cuda_dropout_add_and_sparse_jl(activation, dtype):
    """Compiled == eager bit for bit: the compiled graph runs the same kernels (custom ops)."""
    x = torch.randn(64, 256, device="cuda", dtype=dtype, requires_grad=True)
    residual = torch.randn(64, 256, device="cuda", dtype=dtype)
    bias = torch.randn(256, device="cuda", dtype=dtype, requires_grad=True)

    def f(x, residual, bias):
        h = seeddrop.dropout_add(x, residual, 0.2, bias=bias, activation=activation, seed=11)
        return seeddrop.sparse_jl(h, 32, seed=3)

    fast = _extension.load()
    if _extension.enabled():
        assert fast is not None, "the C++ host path did not build on this GPU machine (see the warning)"
    if fast is not None:  # with the C++ host path, the graph's dropout_add ops run its kernels, not Python's

        def refuse(*args):
            raise AssertionError("a Python kernel of the dropout_add ops ran")

        _extension.set_planners(fast, dropout_add_op=refuse, dropout_add_backward_op=refuse)
    try:
        compiled = torch.compile(f, fullgraph=True)
        y_comp = compiled(x, residual, bias)
        g = torch.randn_like(y_comp)
        grads_comp = torch.autograd.grad(y_comp, (x, bias), g)
    finally:
        if fast is not None:
            _extension.set_planners(fast)
    y_eager = f(x, residual, bias)
    assert torch.equal(y_comp, y_eager)
    for a, b in zip(grads_comp, torch.autograd.grad(y_eager, (x, bias), g)):
        assert torch.equal(a, b)
