"""Plan sweeps behind sparse_jl's defaults (GPU): which kernel for how many rows of x, and
what one call costs on the host.

python benchmarks/tune_sparse_jl.py
1. For d = 49152 -> 1024 and d = 4096 -> 256 and B in 2, 8, 16, 32: cuBLAS `x @ R.T`, the
   dense-tile kernel (default config) and the nonzero walk (block_j x block_g: the plan's
   block_g and 16 / 32 cells per step), do_bench medians in us. GATHER_MAX_ROWS and
   gather_plan's block sizes come from here.
2. Host time per call (a timed loop of 200 calls without sync) and do_bench of the public
   call, of _project and of launch_project, for B = 1 (d = 49152) and B = 64 (d = 4096).
"""
import time

import torch
from triton.testing import do_bench

import seeddrop
from seeddrop.ops import sparse_jl as J


def us(fn) -> float:
    return 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")


def kernel_by_batch(dev):
    for d, k in [(49152, 1024), (4096, 256)]:
        for batch in (2, 8, 16, 32):
            x = torch.randn(batch, d, device=dev, dtype=torch.bfloat16)
            r = J.jl_matrix(k, d, 5, dtype=torch.bfloat16, device=dev)
            params, seed = J.jl_params(k, d), J.Seed(None, 5)
            out = torch.empty(batch, k, device=dev, dtype=x.dtype)
            cfg = J.default_config(batch, k, d, x.dtype, dev)
            row = [f"cuBLAS {us(lambda: x @ r.T):.1f}",
                   f"dense {us(lambda: J.launch_project(x, out, params, seed, True, cfg)):.1f}"]
            for block_j, block_g in ((8, 0), (16, 0), (8, 16), (8, 32), (16, 16)):  # 0: the plan's choice
                plan = J.gather_plan(batch, k, d, dev, block_j, block_g)
                row.append(f"walk{tuple(plan)[:2]} {us(lambda: J.launch_gather(x, out, params, seed, plan)):.1f}")
            print(f"d={d} B={batch}: " + " ".join(row) + " us", flush=True)


def host_time(dev):
    for batch, d, k in [(1, 49152, 1024), (64, 4096, 256)]:
        x = torch.randn(batch, d, device=dev, dtype=torch.bfloat16)
        seed = torch.tensor(20240607, device=dev)
        params = J.jl_params(k, d)
        out = torch.empty(batch, k, device=dev, dtype=x.dtype)
        calls = {
            "public, tensor seed": lambda: seeddrop.sparse_jl(x, k, seed),
            "public, int seed": lambda: seeddrop.sparse_jl(x, k, 20240607),
            "_project": lambda: J._project(x, params, J.Seed(seed, 0), True),
            "launch_project": lambda: J.launch_project(x, out, params, J.Seed(seed, 0), True),
        }
        for name, fn in calls.items():
            fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(200):
                fn()
            host = (time.perf_counter() - t0) / 200 * 1e6
            torch.cuda.synchronize()
            print(f"B={batch} d={d} {name:20s} host {host:6.1f} us/call, do_bench {us(fn):6.1f} us", flush=True)


if __name__ == "__main__":
    device = torch.device("cuda")
    kernel_by_batch(device)
    host_time(device)
