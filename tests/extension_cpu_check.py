"""Run by tests/test_extension.py in a subprocess (it registers CPU kernels for
seeddrop::dropout, which must not leak into other tests): builds csrc/fast_dropout.cpp
with SEEDDROP_CPU_DISPATCH_FOR_TESTS, so that CPU tensors take the C++ entry, autograd
node and dispatcher kernels. On the CPU no recipe is cached (the interpreter's launches
cannot be replayed), so the Python planner runs every call: this checks the C++ code's
logic, not cuLaunchKernel (the CUDA tests do)."""
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils.cpp_extension import load

import seeddrop
import seeddrop._common as common
from seeddrop import _extension
from seeddrop.ops.dropout import plan_for_extension
from seeddrop.ops.dropout_add import check_activation

module = load(name="seeddrop_fast_dropout_cpu_check", sources=[_extension._SOURCE],
              extra_cflags=["-O1", "-DSEEDDROP_CPU_DISPATCH_FOR_TESTS"], verbose=False)
_extension.set_planners(module)
gen = torch.Generator().manual_seed(5)

for dtype in (torch.float32, torch.bfloat16, torch.float64):
    x = torch.randn(6, 5, 40, generator=gen).to(dtype)
    grad = torch.randn(6, 5, 40, generator=gen).to(dtype)
    row_seeds = torch.randint(-(2**63), 2**63 - 1, (6,), generator=gen)
    for seed_tensor, seed_value, shared, per_row in [(None, 987654321, (), False), (torch.tensor(-3), 0, (), False),
                                                     (row_seeds, 0, (1,), True), (None, -5, (0, 2), False)]:
        seed = row_seeds.reshape(6, 1) if per_row else (seed_tensor if seed_tensor is not None else seed_value)
        expected = seeddrop.dropout(x, 0.3, seed=seed, shared_dims=shared)
        leaf = x.clone().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            out = module.dropout_forward(leaf, seed_tensor, seed_value, False, 0.3, shared, per_row)
        assert torch.equal(out, expected), (dtype, shared)
        assert "CppNode" in out.grad_fn.name()
        assert saved == ([] if seed_tensor is None else [tuple(seed_tensor.shape)])
        for _ in range(2):  # retain_graph: the node runs twice from its saved seed
            (grad_x,) = torch.autograd.grad(out, [leaf], grad, retain_graph=True)
            assert torch.equal(grad_x, seeddrop.dropout(grad, 0.3, seed=seed, shared_dims=shared))
        op_out = torch.ops.seeddrop.dropout.default(leaf, seed_tensor, seed_value, 0.3, list(shared), per_row)
        assert torch.equal(op_out, expected) and "CppNode" in op_out.grad_fn.name()
        with torch.no_grad():
            assert torch.equal(module.dropout_forward(leaf, seed_tensor, seed_value, False, 0.3, shared, per_row),
                               expected)

# the eager backward of a plain tensor calls the backend kernel without the dispatcher (no
# seeddrop::dropout event in a profile); under a dispatch mode, and for create_graph=True
# (GradMode on: the op records its own backward), it goes through the dispatcher
from torch.profiler import profile  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


x = torch.randn(6, 40, generator=gen)
grad, vector = torch.randn(6, 40, generator=gen), torch.randn(6, 40, generator=gen)
leaf = x.clone().requires_grad_()
out = module.dropout_forward(leaf, None, 11, False, 0.3, (), False)
with profile() as prof:
    (grad_x,) = torch.autograd.grad(out, [leaf], grad, retain_graph=True)
assert torch.equal(grad_x, seeddrop.dropout(grad, 0.3, seed=11))
assert not [e.name for e in prof.events() if e.name == "seeddrop::dropout"], "the eager backward dispatched"
recorder = OpRecorder()
with recorder:
    (moded,) = torch.autograd.grad(out, [leaf], grad, retain_graph=True)
assert "seeddrop.dropout.default" in recorder.seen and torch.equal(moded, grad_x), recorder.seen
grad_leaf = grad.clone().requires_grad_()
with profile() as prof:  # the positive control of the profile check above: dispatched, it shows
    (grad_x,) = torch.autograd.grad(out, [leaf], grad_leaf, create_graph=True)
assert [e.name for e in prof.events() if e.name == "seeddrop::dropout"], "create_graph did not dispatch"
assert grad_x.grad_fn is not None and torch.equal(grad_x, seeddrop.dropout(grad, 0.3, seed=11))
(second,) = torch.autograd.grad(grad_x, [grad_leaf], vector)
assert torch.equal(second, seeddrop.dropout(vector, 0.3, seed=11))

# dropout_add's entry and autograd node: equal to the Python path, output and gradients
ACTS = {torch.float32: (None, "relu", "gelu", "gelu_tanh", "silu"), torch.bfloat16: (None, "gelu"),
        torch.float64: ("silu",)}
for dtype, acts in ACTS.items():
    for act in acts:
        for cols, bias_on, seed, training, wanted in [(40, True, 12345, True, (0, 1, 2)),
                                                      (37, False, torch.tensor(-7), True, (0, 1)),
                                                      (40, True, 99, False, (2,))]:
            x = torch.randn(6, cols, generator=gen).to(dtype)
            residual = torch.randn(6, cols, generator=gen).to(dtype)
            bias = torch.randn(cols, generator=gen).to(dtype) if bias_on else None
            grad = torch.randn(6, cols, generator=gen).to(dtype)
            code = check_activation(act)

            def leaves():
                made = [x.clone(), residual.clone(), None if bias is None else bias.clone()]
                for i in wanted:
                    made[i].requires_grad_()
                return made

            ref_inputs = leaves()
            expected = seeddrop.dropout_add(*ref_inputs[:2], 0.3, training, bias=ref_inputs[2], activation=act,
                                            seed=seed)
            ref_grads = torch.autograd.grad(expected, [ref_inputs[i] for i in wanted], grad)
            inputs = leaves()
            seed_tensor, seed_value = (seed, 0) if isinstance(seed, torch.Tensor) else (None, seed)
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
                out = module.dropout_add_forward(inputs[0], inputs[1], inputs[2], seed_tensor, seed_value, False, 0.3,
                                                 training, code)
            assert torch.equal(out, expected), (dtype, act, cols)
            assert "CppNode" in out.grad_fn.name()
            kept = [tuple(seed_tensor.shape)] if seed_tensor is not None else []
            if act is not None:  # x (and bias) for act'(x + bias); nothing of x's size without an activation
                kept += [tuple(x.shape)] + ([tuple(bias.shape)] if bias_on else [])
            assert saved == kept, (saved, kept)
            for _ in range(2):  # retain_graph: the node runs twice
                grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad, retain_graph=True)
                for got, want in zip(grads, ref_grads):
                    assert got.dtype == want.dtype and torch.equal(got, want), (dtype, act, cols, wanted)
            with torch.no_grad():
                assert torch.equal(module.dropout_add_forward(x, residual, bias, seed_tensor, seed_value, False, 0.3,
                                                              training, code), expected)

# the saved x and bias as a saved_tensors_hooks unpack returns them (here: transposed copies, not
# contiguous) give the same gradients; create_graph=True through the node raises, as in Python
x, residual = (torch.randn(8, 32, generator=gen, requires_grad=True) for _ in range(2))
bias = torch.randn(32, generator=gen, requires_grad=True)
expected = torch.autograd.grad(seeddrop.dropout_add(x, residual, 0.3, bias=bias, activation="gelu", seed=4).sum(),
                               [x, bias])
with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t.t().contiguous().t() if t.dim() == 2 else t):
    out = module.dropout_add_forward(x, residual, bias, None, 4, False, 0.3, True, check_activation("gelu"))
    got = torch.autograd.grad(out.sum(), [x, bias], retain_graph=True)
assert all(torch.equal(a, b) for a, b in zip(got, expected))
try:
    torch.autograd.grad(out.sum(), [x], create_graph=True)
except RuntimeError as error:
    assert "not differentiable" in str(error), error
else:
    raise AssertionError("create_graph=True through the C++ dropout_add node did not raise")

# compiled autograd (torch._dynamo.compiled_autograd) traces through both C++ nodes
from torch._dynamo import compiled_autograd  # noqa: E402

x, residual, bias = (torch.randn(*shape, generator=gen, requires_grad=True) for shape in ((8, 32), (8, 32), (32,)))
out = module.dropout_add_forward(module.dropout_forward(x, None, 9, False, 0.2, (), False), residual, bias, None, 5,
                                 False, 0.3, True, check_activation("gelu"))
with compiled_autograd._enable(torch.compile(backend="aot_eager")):
    out.sum().backward()
copies = [t.detach().clone().requires_grad_() for t in (x, residual, bias)]
seeddrop.dropout_add(seeddrop.dropout(copies[0], 0.2, seed=9), copies[1], 0.3, bias=copies[2], activation="gelu",
                     seed=5).sum().backward()
assert all(torch.equal(a.grad, b.grad) for a, b in zip((x, residual, bias), copies))

# the seed drawn in C++ equals _common.draw_seed's (eager CUDA path: a host draw)
common._in_graph = lambda: False
x = torch.randn(3, 64, generator=gen)
for state in (0, 1, 2**40 + 7):
    torch.manual_seed(state)
    in_cpp = [module.dropout_forward(x, None, 0, True, 0.5, (), False) for _ in range(3)]
    torch.manual_seed(state)
    in_python = [seeddrop.dropout(x, 0.5, seed=common.draw_seed(torch.device("cuda")).value) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(in_cpp, in_python))
    assert not torch.equal(in_cpp[0], in_cpp[1])
    torch.manual_seed(state)
    in_cpp = [module.dropout_add_forward(x, x, None, None, 0, True, 0.5, True, 0) for _ in range(2)]
    torch.manual_seed(state)
    in_python = [seeddrop.dropout_add(x, x, 0.5, seed=common.draw_seed(torch.device("cuda")).value) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(in_cpp, in_python))
# torch.compile traces the op through the C++ autograd kernel (fake tensors) and calls its
# C++ kernels at run time: outputs and gradients equal eager's
x = torch.randn(4, 96, generator=gen, requires_grad=True)
seeds = torch.randint(-(2**63), 2**63 - 1, (4,), generator=gen)


def step(t, row_seeds):
    return (seeddrop.dropout(t, 0.25, seed=row_seeds) * 3).sum(dim=1)


planned = []


def counting_planner(*args):
    planned.append(args[0].shape)
    return plan_for_extension(*args)


_extension.set_planners(module, dropout=counting_planner)
compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
eager_out = step(x, seeds)
(eager_grad,) = torch.autograd.grad(eager_out.sum(), [x])
compiled_out = compiled(x, seeds)
(compiled_grad,) = torch.autograd.grad(compiled_out.sum(), [x])
assert torch.equal(eager_out, compiled_out) and torch.equal(eager_grad, compiled_grad)
assert len(planned) == 2, planned  # the compiled forward and backward ran the C++ CPU kernel

# torch.compile'd dropout_add: the graph's dropout_add / dropout_add_backward ops run the C++
# kernels (the planners run), shared dims fall back to the ops' Python kernels; outputs and
# gradients equal eager's either way
from seeddrop.ops import dropout_add as DA  # noqa: E402

route = []


def logged(name, fn):
    return lambda *args: route.append(name) or fn(*args)


_extension.set_planners(module, dropout_add_forward=logged("planner", DA.plan_forward_for_extension),
                        dropout_add_backward=logged("planner", DA.plan_backward_for_extension),
                        dropout_add_op=logged("python", DA.dropout_add_op_impl),
                        dropout_add_backward_op=logged("python", DA.dropout_add_backward_op_impl))
for shared, expected_route in [((), {"planner"}), ((0,), {"python"})]:
    def block(a, r, b):
        return seeddrop.dropout_add(a, r, 0.3, bias=b, activation="gelu", seed=21, shared_dims=shared) * 2

    inputs = [torch.randn(*shape, generator=gen, requires_grad=True) for shape in ((6, 40), (6, 40), (40,))]
    weight = torch.randn(6, 40, generator=gen)
    eager_out = block(*inputs)
    eager_grads = torch.autograd.grad((eager_out * weight).sum(), inputs)
    route.clear()
    compiled_out = torch.compile(block, fullgraph=True, backend="aot_eager")(*inputs)
    compiled_grads = torch.autograd.grad((compiled_out * weight).sum(), inputs)
    assert torch.equal(eager_out, compiled_out), shared
    assert all(torch.equal(a, b) for a, b in zip(eager_grads, compiled_grads)), shared
    assert set(route) == expected_route and len(route) == 2, (shared, route)  # forward and backward
# an eager call of the op that needs a gradient: the C++ Autograd kernel hands it to the op's
# Python autograd (the result has its backward); the backward op itself is not differentiable
a, r, b = (t.detach().clone().requires_grad_() for t in inputs)
out = torch.ops.seeddrop.dropout_add.default(a, r, b, None, 21, 0.3, True, [], False, 2)
assert out.grad_fn is not None and torch.equal(out, seeddrop.dropout_add(a, r, 0.3, bias=b, activation="gelu", seed=21))
grads = torch.autograd.grad(out, [a, r, b], weight)
reference = torch.autograd.grad(seeddrop.dropout_add(a, r, 0.3, bias=b, activation="gelu", seed=21), [a, r, b], weight)
assert all(torch.equal(g, e) for g, e in zip(grads, reference))
grad_x, bias_sum = torch.ops.seeddrop.dropout_add_backward.default(weight.requires_grad_(), a, b, None, 21, 0.3, True,
                                                                   [], False, 2, torch.float32, True)
assert torch.equal(grad_x, grads[0]) and torch.allclose(bias_sum, grads[2]) and grad_x.grad_fn is not None
try:
    grad_x.sum().backward()
except RuntimeError as error:
    assert "not differentiable" in str(error), error
else:
    raise AssertionError("the backward of seeddrop::dropout_add_backward did not raise")
# operands the C++ kernels do not take (a broadcast residual, a bias of the wrong length) go to
# the Python kernel: its result, or its error
route.clear()
row = torch.randn(40, generator=gen)
with torch.no_grad():
    broadcast = torch.ops.seeddrop.dropout_add.default(a, row, None, None, 5, 0.3, True, [], False, 0)
    assert torch.equal(broadcast, seeddrop.dropout_add(a, row, 0.3, seed=5)) and route == ["python"], route
    try:
        torch.ops.seeddrop.dropout_add.default(a, r, torch.zeros(39), None, 5, 0.3, True, [], False, 0)
    except Exception:  # noqa: BLE001 (the Python kernel's own error; what matters is no C++ launch)
        pass
    assert route == ["python", "python"], route
_extension.set_planners(module)

# an int seed that changes every call is a SymInt of the op, not a constant: no recompile
counter = CompileCounterWithBackend("aot_eager")
dynamic_seed = torch.compile(lambda t, s: seeddrop.dropout(t, 0.5, seed=s), backend=counter, fullgraph=True)
x = torch.randn(8, 32, generator=gen, requires_grad=True)
for s in range(1001, 1007):
    out = dynamic_seed(x, s)
    assert torch.equal(out, seeddrop.dropout(x.detach(), 0.5, seed=s))
    out.sum().backward()
assert counter.frame_count <= 2, counter.frame_count

# the op's checks of a seed tensor (Python's resolve_seed makes these hold for its own calls)
op = torch.ops.seeddrop.dropout.default
for bad_seed, per_row, message in [(torch.tensor(1, dtype=torch.int32), False, "must be int64"),
                                   (torch.zeros(7, dtype=torch.int64), True, "must have shape"),
                                   (torch.zeros(8, dtype=torch.int64), False, "must have shape")]:
    try:
        op(x.detach(), bad_seed, 0, 0.5, [], per_row)
    except RuntimeError as error:
        assert message in str(error), error
    else:
        raise AssertionError(f"the op accepted the seed tensor {bad_seed}")

assert module.cached_recipes() == 0
print("extension cpu check: ok")
