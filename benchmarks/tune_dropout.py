"""Tile/warp sweep of the dropout kernel on contiguous [8192, 49152] tensors, plus the
per-call host overhead at 4096 elements. python benchmarks/tune_dropout.py"""
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import seeddrop
from seeddrop import stream
from seeddrop._common import Seed, plan_view, scale_halves
from seeddrop.ops import dropout as dmod


def kernel_time(x, out, block_p, block_g, warps, seed):
    view = plan_view(x.shape, x.stride(), out.stride(), (), False)
    tiles = -(-view.P // block_p) * -(-view.Q // (block_g * 8))

    def fn():
        dmod._dropout_kernel[(tiles,)](
            x, out, seed.tensor, seed.value, 0, view.P, view.S, view.Q, 1,
            *view.x_strides, *view.out_strides, 1, stream.threshold(0.1), *scale_halves(0.1),
            SEED_FROM_PTR=seed.tensor is not None, PER_ROW=False, ALIGNED=True, MASK_ONLY=False,
            SOFTWARE_BF16=False, BLOCK_P=block_p, BLOCK_G=block_g, num_warps=warps)
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def host_overhead(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main():
    for dtype in (torch.float16, torch.float32, torch.float64):
        x = torch.randn(8192, 49152, device="cuda", dtype=dtype)
        out = torch.empty_like(x)
        copy = do_bench(lambda: out.copy_(x), warmup=25, rep=100, return_mode="median")
        res = []
        for block_g in (128, 256, 512, 1024):
            for warps in (4, 8, 16):
                for seed in (Seed(None, 1234), Seed(torch.tensor(1234, device="cuda"), 0)):
                    t = kernel_time(x, out, 1, block_g, warps, seed)
                    res.append((t / copy, block_g * 8, warps, seed.tensor is not None))
        res.sort()
        print(dtype, f"copy {copy:.4f} ms; best 6:", [f"{r:.3f}x E={e} w={w} ptr={pt}" for r, e, w, pt in res[:6]])
        print("   worst:", [f"{r:.3f}x E={e} w={w}" for r, e, w, _ in res[-3:]])
        del x, out
    x = torch.randn(4096, device="cuda")
    xr = x.clone().requires_grad_()
    g = torch.randn_like(x)
    print("host us/call F.dropout", host_overhead(lambda: F.dropout(x, 0.1)))
    print("host us/call seeddrop seed=None", host_overhead(lambda: seeddrop.dropout(x, 0.1)))
    print("host us/call seeddrop seed=int", host_overhead(lambda: seeddrop.dropout(x, 0.1, seed=5)))
    print("host us/call F.dropout grad", host_overhead(lambda: F.dropout(xr, 0.1)))
    print("host us/call seeddrop grad", host_overhead(lambda: seeddrop.dropout(xr, 0.1)))
    print("host us/call fwd+bwd F.dropout", host_overhead(lambda: F.dropout(xr, 0.1).backward(g)))
    print("host us/call fwd+bwd seeddrop", host_overhead(lambda: seeddrop.dropout(xr, 0.1).backward(g)))


if __name__ == "__main__":
    main()
