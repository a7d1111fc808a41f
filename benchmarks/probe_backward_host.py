"""Where the time of a small backward goes (GPU): host time versus kernel time.

python benchmarks/probe_backward_host.py
1. dropout_add's backward (bias gradient, activation None) at [16384, 4096] and [8192, 49152],
   bf16 / fp16: do_bench of torch.autograd.grad, of apply_dropout_add_backward and of
   launch_backward, the host time of each (calls queued without a sync) and the kernels of
   one autograd.grad (torch.profiler).
2. Host time of torch.autograd.grad for seeddrop's ops, the native expressions and a trivial
   Python autograd.Function, at [16, 64] and [16384, 4096] bf16.
"""
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

import seeddrop
from seeddrop._common import Seed
from seeddrop.ops import dropout_add as DA


def bench_us(fn) -> float:
    return 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")


def host_us(fn, calls=100) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return host


def kernel_us(fn, calls=10) -> dict:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    total = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            total[e.name[:40]] = total.get(e.name[:40], 0.0) + e.device_time / calls
    return {name: round(t, 1) for name, t in total.items()}


class Trivial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, r, b):
        return a + r

    @staticmethod
    def backward(ctx, g):
        return g, g, None


def dropout_add_backward():
    cfg = DA.Config(0.1, True, (), False, 0)
    for shape in [(16384, 4096), (8192, 49152)]:
        for dtype in (torch.bfloat16, torch.float16):
            x = torch.randn(shape, device="cuda", dtype=dtype)
            g, copy_out, gx = torch.randn_like(x), torch.empty_like(x), torch.empty_like(x)
            inputs = [t.detach().requires_grad_() for t in (x, torch.randn_like(x),
                                                            torch.randn(shape[1], device="cuda", dtype=dtype))]
            out = seeddrop.dropout_add(inputs[0], inputs[1], 0.1, bias=inputs[2])
            calls = {
                "autograd.grad": lambda: torch.autograd.grad(out, inputs, g, retain_graph=True),
                "apply_backward": lambda: DA.apply_dropout_add_backward(g, None, None, Seed(None, 7), cfg, dtype, True, gx),
                "launch_backward": lambda: DA.launch_backward(g, None, None, gx, Seed(None, 7), cfg, True),
            }
            row = " | ".join(f"{name} {bench_us(fn):.1f} us (host {host_us(fn):.1f})" for name, fn in calls.items())
            print(f"{shape} {dtype}: copy {bench_us(lambda: copy_out.copy_(x)):.1f} us | {row}", flush=True)
            print("   kernels of one autograd.grad (us):", kernel_us(calls["autograd.grad"]), flush=True)


def autograd_host():
    for shape in [(16, 64), (16384, 4096)]:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        g = torch.randn_like(x)
        inputs = [t.detach().requires_grad_() for t in (x, torch.randn_like(x),
                                                        torch.randn(shape[1], device="cuda", dtype=x.dtype))]
        graphs = {
            "seeddrop.dropout_add": (seeddrop.dropout_add(inputs[0], inputs[1], 0.1, bias=inputs[2]), inputs),
            "native r + F.dropout(x + b)": (inputs[1] + F.dropout(inputs[0] + inputs[2], 0.1), inputs),
            "trivial Python Function": (Trivial.apply(*inputs), inputs),
            "seeddrop.dropout (x only)": (seeddrop.dropout(inputs[0], 0.1), inputs[:1]),
            "F.dropout (x only)": (F.dropout(inputs[0], 0.1), inputs[:1]),
        }
        for name, (out, ins) in graphs.items():
            fn = lambda: torch.autograd.grad(out, ins, g, retain_graph=True, allow_unused=True)  # noqa: E731
            print(f"{shape} {name:30s} autograd.grad host {host_us(fn, 200):7.1f} us/call", flush=True)


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    dropout_add_backward()
    autograd_host()
