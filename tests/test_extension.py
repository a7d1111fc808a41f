"""The C++ host path (csrc/fast_dropout.cpp, _extension.py): on CUDA, a layout's first
call is planned and run by Python, later ones are replayed from C++; both must give the
CPU reference's output bit for bit, forward and backward."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils import cpp_extension

import seeddrop
from seeddrop import _extension
from seeddrop._common import draw_seed, normalize_dims, plan_view, resolve_seed
from seeddrop.ops import dropout as dropout_module
from seeddrop.ops.dropout_add import ACTIVATIONS
from test_cuda import _same_layout_cuda

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_calls_never_build_the_extension(monkeypatch):
    def refuse():
        raise AssertionError("the C++ extension was asked for on a CPU call")

    monkeypatch.setattr(_extension, "load", refuse)
    x = torch.randn(3, 50, requires_grad=True)
    seeddrop.dropout(x, 0.5, seed=3).sum().backward()
    seeddrop.dropout(x.detach(), 0.5)
    seeddrop.dropout_add(x, x.detach(), 0.5, bias=torch.zeros(50), activation="gelu").sum().backward()


def test_environment_switch_disables_the_build(monkeypatch):
    monkeypatch.setenv("SEEDDROP_EXTENSION", "0")
    monkeypatch.setattr(_extension, "_state", {"tried": False, "module": None})
    assert _extension.load() is None
    assert _extension._state["tried"]


def test_op_kernels_load_the_extension_for_cuda_tensors(monkeypatch):
    """The ops' Python kernels ask for the C++ host path on CUDA tensors, so that a compiled
    graph whose ops were never called eagerly gets the C++ kernels from its next call on."""
    loads = []
    monkeypatch.setattr(_extension, "load", lambda: loads.append(1))
    _extension.load_for(torch.empty(2))
    _extension.load_for(torch.empty(2, device="meta"))
    assert loads == []

    class CudaLike:
        is_cuda = True

    _extension.load_for(CudaLike())
    assert loads == [1]
    seen = []
    monkeypatch.setattr(_extension, "load_for", lambda t: seen.append(t.data_ptr()))
    x = torch.randn(4, 8)
    torch.ops.seeddrop.dropout.default(x, None, 3, 0.5, [], False)
    torch.ops.seeddrop.dropout_add.default(x, x, None, None, 3, 0.5, True, [], False, 0)
    torch.ops.seeddrop.dropout_add_backward.default(x, None, None, None, 3, 0.5, True, [], False, 0, torch.float32,
                                                    False)
    assert seen == [x.data_ptr()] * 3


def _fast():
    module = _extension.load()
    assert module is not None, "the C++ host path did not build on this GPU machine (see the warning)"
    return module


def _layouts(gen, dtype):
    """(name, CPU tensor of dtype, shared_dims, per-row seeds or None); views are taken of
    a base already in dtype, so that they keep their strides."""
    base = torch.randn(37, 29, 11, generator=gen).to(dtype)
    rows = lambda *shape: torch.randint(-(2**63), 2**63 - 1, shape, generator=gen)  # noqa: E731
    yield "contiguous", base, (), None
    yield "transposed", base[:, :, 0].t(), (), None
    yield "sliced", base[::2, 1::3, :], (), None
    yield "shared0", base, (0,), None
    yield "shared_last", base, (-1,), None
    yield "per_row", base, (), rows(37, 29)
    yield "per_row_shared", base, (1,), rows(37, 1)
    yield "odd_tail", torch.randn(5, 1001, generator=gen).to(dtype), (), None


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_replayed_launches_match_reference(dtype):
    """First call: Python plans and launches; later calls: the C++ replay. All equal the
    CPU reference, for int seeds, 0-d seed tensors and per-row seeds, and when p changes
    between calls of one layout (p's constants are per call, not part of a recipe)."""
    fast = _fast()
    gen = torch.Generator().manual_seed(2024)
    for name, x_cpu, shared, row_seeds in _layouts(gen, dtype):
        x = _same_layout_cuda(x_cpu)
        seeds = [row_seeds] if row_seeds is not None else [
            int(torch.randint(-(2**63), 2**63 - 1, (), generator=gen)), torch.tensor(-77)]
        fast.clear_recipes()
        for seed in seeds:
            gpu_seed = seed.cuda() if isinstance(seed, torch.Tensor) else seed
            for p in (0.2, 0.9, 0.2):
                ref = seeddrop.dropout(x_cpu, p, seed=seed, shared_dims=shared)
                for call in ("planned or replayed", "replayed"):
                    out = seeddrop.dropout(x, p, seed=gpu_seed, shared_dims=shared)
                    assert torch.equal(out.cpu(), ref), (name, dtype, p, call)
        # strides that do not collapse to a [P, S, Q] view run on a copy, planned by Python
        collapses = plan_view(x.shape, x.stride(), torch.empty_like(x).stride(),
                              normalize_dims(shared, x.dim()), row_seeds is not None) is not None
        assert (fast.cached_recipes() >= 1) == collapses, name


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_backward_runs_in_the_cpp_node_and_saves_only_the_seed(dtype):
    _fast()
    gen = torch.Generator().manual_seed(7)
    x_cpu = torch.randn(64, 300, generator=gen).to(dtype)
    grad_cpu = torch.randn(64, 300, generator=gen).to(dtype)
    for seed in (123456789, torch.tensor(5), torch.randint(-(2**63), 2**63 - 1, (64,), generator=gen)):
        gpu_seed = seed.cuda() if isinstance(seed, torch.Tensor) else seed
        saved = []
        x = x_cpu.cuda().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            y = seeddrop.dropout(x, 0.4, seed=gpu_seed)
        assert "CppNode" in y.grad_fn.name()  # the C++ node, not DropoutFunctionBackward
        assert saved == ([] if isinstance(seed, int) else [tuple(seed.shape)])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            y.backward(grad_cpu.cuda())
        names = {e.name for e in prof.events()}
        # the node ran, and called the CUDA kernel without the dispatcher (eager, plain tensor)
        assert any("CppNode" in n for n in names) and "seeddrop::dropout" not in names, names
        expected = seeddrop.dropout(grad_cpu, 0.4, seed=seed)
        assert torch.equal(x.grad.cpu(), expected), (dtype, seed)
        # a gradient laid out unlike the output: a layout the cache has not seen, planned by
        # Python from autograd's device thread
        x.grad = None
        y = seeddrop.dropout(x, 0.4, seed=gpu_seed)
        y.backward(grad_cpu.t().contiguous().cuda().t())
        assert torch.equal(x.grad.cpu(), expected), (dtype, seed, "transposed grad")
        assert torch.equal(y.detach().cpu(), seeddrop.dropout(x_cpu, 0.4, seed=seed))


def _dropout_add_with_grads(x, residual, bias, wanted, grad, **kwargs):
    """(output, gradients of the inputs at `wanted` indices) of seeddrop.dropout_add on fresh leaves."""
    leaves = [x.clone(), residual.clone(), None if bias is None else bias.clone()]
    for i in wanted:
        leaves[i].requires_grad_()
    out = seeddrop.dropout_add(leaves[0], leaves[1], bias=leaves[2], **kwargs)
    return out, torch.autograd.grad(out, [leaves[i] for i in wanted], grad) if wanted else ()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_dropout_add_replays_equal_the_python_path(dtype, monkeypatch):
    """dropout_add through the C++ host path (first call planned by Python, later ones
    replayed, forward and backward) equals the Python path's kernels bit for bit, for every
    activation, with and without bias, int / tensor / drawn seeds and training=False."""
    fast = _fast()
    fast.clear_recipes()
    gen = torch.Generator().manual_seed(11)
    cases = [((64, 300), True, 2**40 + 3, True, (0, 1, 2)), ((33, 129), False, torch.tensor(-9), True, (0, 1)),
             ((8, 4, 96), True, None, True, (2,)), ((64, 300), True, 5, False, (0, 2)), ((64, 300), True, 7, True, ())]
    # every activation in fp32; two in the other dtypes (each new combination compiles kernels)
    for act in ACTIVATIONS if dtype == torch.float32 else (None, "gelu"):
        for shape, bias_on, seed, training, wanted in cases:
            x, residual, grad = (torch.randn(shape, generator=gen).to(dtype).cuda() for _ in range(3))
            bias = torch.randn(shape[-1], generator=gen).to(dtype).cuda() if bias_on else None
            gpu_seed = seed.cuda() if isinstance(seed, torch.Tensor) else seed
            kwargs = dict(p=0.3, training=training, activation=act, seed=gpu_seed)
            with monkeypatch.context() as patch:  # the Python path
                patch.setattr(_extension, "load", lambda: None)
                torch.manual_seed(3)
                expected, expected_grads = _dropout_add_with_grads(x, residual, bias, wanted, grad, **kwargs)
            for call in ("planned or replayed", "replayed"):
                torch.manual_seed(3)
                out, grads = _dropout_add_with_grads(x, residual, bias, wanted, grad, **kwargs)
                assert torch.equal(out, expected), (dtype, act, shape, call)
                if wanted:
                    assert "CppNode" in out.grad_fn.name()
                for got, want in zip(grads, expected_grads):
                    assert got.dtype == want.dtype and torch.equal(got, want), (dtype, act, shape, wanted, call)
    assert fast.cached_recipes() >= 2 * len(cases)


@pytest.mark.cuda
@needs_cuda
def test_cuda_dropout_add_cpp_path_edges(monkeypatch):
    """Replays proven by counting the planners' calls; p changing on one layout; retain_graph;
    a transposed incoming gradient; a misaligned view; mixed dtypes; the layouts that must stay
    on the Python path; and a CUDA graph capture through the C++ path."""
    from seeddrop.ops import dropout_add as dadd

    fast = _fast()
    planned = []

    def counting(name, planner):
        return lambda *args: planned.append(name) or planner(*args)

    _extension.set_planners(fast, dropout_add_forward=counting("fwd", dadd.plan_forward_for_extension),
                            dropout_add_backward=counting("bwd", dadd.plan_backward_for_extension))
    try:
        gen = torch.Generator().manual_seed(5)
        x, residual, grad = (torch.randn(64, 256, generator=gen).cuda() for _ in range(3))
        bias = torch.randn(256, generator=gen).cuda()

        def python_path(*args, **kwargs):
            with monkeypatch.context() as patch:
                patch.setattr(_extension, "load", lambda: None)
                return _dropout_add_with_grads(*args, **kwargs)

        for p in (0.2, 0.7, 0.2):  # one layout, p per call
            kwargs = dict(p=p, activation="gelu", seed=99)
            expected, expected_grads = python_path(x, residual, bias, (0, 2), grad, **kwargs)
            out, grads = _dropout_add_with_grads(x, residual, bias, (0, 2), grad, **kwargs)
            assert torch.equal(out, expected) and all(map(torch.equal, grads, expected_grads)), p
        assert planned == ["fwd", "bwd"], planned  # planned once each, replayed after

        leaves = [t.clone().requires_grad_() for t in (x, residual, bias)]
        out = seeddrop.dropout_add(leaves[0], leaves[1], 0.2, bias=leaves[2], activation="gelu", seed=99)
        first = torch.autograd.grad(out, leaves, grad.t().contiguous().t(), retain_graph=True)  # transposed grad
        second = torch.autograd.grad(out, leaves, grad)
        assert all(map(torch.equal, first, second))
        assert torch.equal(first[0], expected_grads[0]) and torch.equal(first[2], expected_grads[1])

        mixed_args = (x.bfloat16(), residual, bias.double())
        mixed = dict(p=0.3, activation="silu", seed=3)
        expected, expected_grads = python_path(*mixed_args, (0, 1, 2), grad, **mixed)
        out, grads = _dropout_add_with_grads(*mixed_args, (0, 1, 2), grad, **mixed)
        assert torch.equal(out, expected) and all(map(torch.equal, grads, expected_grads))
        assert [g.dtype for g in grads] == [t.dtype for t in mixed_args]

        buffer = torch.randn(64 * 256 + 1, generator=gen).cuda().requires_grad_()

        def misaligned(python):  # x's data 4 bytes past an aligned start, in forward and backward
            with monkeypatch.context() as patch:
                if python:
                    patch.setattr(_extension, "load", lambda: None)
                out = seeddrop.dropout_add(buffer[1:].view(64, 256), residual, 0.3, activation="silu", seed=3)
                return out, torch.autograd.grad(out, [buffer], grad)[0]

        assert all(map(torch.equal, misaligned(True), misaligned(False)))

        leaf = x.clone().requires_grad_()
        for kwargs in [dict(residual=residual[:1]), dict(residual=residual.t().contiguous().t()),
                       dict(residual=residual, shared_dims=(0,))]:
            out = seeddrop.dropout_add(leaf, p=0.2, seed=1, **kwargs)
            assert "CppNode" not in out.grad_fn.name(), kwargs  # the Python path (DropoutAddFunction)

        # graph capture: seeds drawn on the device by the graph, the workspace from its pool
        leaves = [t.clone().requires_grad_() for t in (x, residual, bias)]

        def step():
            for t in leaves:
                t.grad = None
            out = seeddrop.dropout_add(leaves[0], leaves[1], 0.5, bias=leaves[2], activation="relu")
            out.backward(grad)
            return out

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
        outs = []
        for _ in range(2):
            graph.replay()
            outs.append((static_out.clone(), leaves[2].grad.clone()))
        assert not torch.equal(outs[0][0], outs[1][0])  # new masks every replay
        keep = (outs[1][0] - residual) != 0  # where relu(x + bias) survived the mask
        torch.testing.assert_close(outs[1][1], (grad * keep * 2.0).sum(0))  # bias grad of that mask
    finally:
        _extension.set_planners(fast)


@pytest.mark.cuda
@needs_cuda
def test_cuda_seed_drawn_in_cpp_equals_the_python_draw():
    """seed=None on CUDA is drawn in C++ from torch's default CPU generator, exactly as
    _common.draw_seed draws it (and as the CPU path does): same masks after manual_seed."""
    _fast()
    x = torch.randn(8, 4096, device="cuda")

    def no_python_draw(seed, *args):
        assert seed is not None, "seed=None reached Python's resolve_seed: the C++ draw did not run"
        return resolve_seed(seed, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dropout_module, "resolve_seed", no_python_draw)
        torch.manual_seed(31)
        drawn_in_cpp = [seeddrop.dropout(x, 0.5) for _ in range(3)]
    torch.manual_seed(31)
    drawn_in_python = [seeddrop.dropout(x, 0.5, seed=draw_seed(x.device).value) for _ in range(3)]
    torch.manual_seed(31)
    on_cpu = [seeddrop.dropout(x.cpu(), 0.5) for _ in range(3)]
    for a, b, c in zip(drawn_in_cpp, drawn_in_python, on_cpu):
        assert torch.equal(a, b) and torch.equal(a.cpu(), c)
    assert not torch.equal(drawn_in_cpp[0], drawn_in_cpp[1])


@pytest.mark.cuda
@needs_cuda
def test_cuda_op_dispatches_to_the_cpp_kernels():
    """What torch.compile'd graphs call: seeddrop::dropout on CUDA, with and without grad."""
    fast = _fast()
    fast.clear_recipes()
    x_cpu = torch.randn(16, 257)
    op = torch.ops.seeddrop.dropout.default
    ref = seeddrop.dropout(x_cpu, 0.3, seed=11)
    seed = torch.tensor(11, device="cuda")
    for _ in range(2):
        assert torch.equal(op(x_cpu.cuda(), seed, 0, 0.3, [], False).cpu(), ref)
    assert fast.cached_recipes() == 1  # the C++ CUDA kernel served the op (Python caches no recipe)
    with pytest.raises(RuntimeError, match="seed_tensor must be int64"):
        op(x_cpu.cuda(), seed.int(), 0, 0.3, [], False)
    with pytest.raises(RuntimeError, match="seed_tensor must have shape"):
        op(x_cpu.cuda(), torch.zeros(15, dtype=torch.int64, device="cuda"), 0, 0.3, [], True)
    x = x_cpu.cuda().requires_grad_()
    y = op(x, seed, 0, 0.3, [], False)
    assert "CppNode" in y.grad_fn.name()
    y.sum().backward()
    assert torch.equal(x.grad.cpu(), seeddrop.dropout(torch.ones_like(x_cpu), 0.3, seed=11))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or shutil.which("c++") is None
                    or not cpp_extension.is_ninja_available(),
                    reason="builds the extension for CPU tensors (a C++ compiler and ninja); the planner needs "
                           "Triton's interpreter")
def test_cpp_entry_autograd_node_and_op_kernels_on_cpu():
    """csrc/fast_dropout.cpp built with CPU dispatch, in a subprocess (tests/extension_cpu_check.py)."""
    script = os.path.join(os.path.dirname(__file__), "extension_cpu_check.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "extension cpu check: ok" in done.stdout
