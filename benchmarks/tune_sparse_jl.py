"""Plan sweeps behind sparse_jl's defaults (GPU): which kernel for how many rows of x, and
what one call costs on the host.

python benchmarks/tune_sparse_jl.py [walk] [host]
1. walk: for d = 49152 -> 1024 (and a few plans at d = 4096 -> 256), B in 1 .. 64:
   cuBLAS `x @ R.T`, the dense-tile kernel (its default config) and the nonzero walk over
   tiles of block_j rows of S x block_g cells x block_m rows of x (walk_plans).
   do_bench medians in us, the best five walks per case. GATHER_MAX_ROWS and gather_plan's block sizes come from here.
2. host: host time per call (a timed loop of 200 calls without sync) and do_bench of the
   public call, of _project, of launch_project and of the walk's two launches (the column-major
   copy; the walk on a column-major x), for B = 1 / 16 / 32 / 64 (d = 49152) and B = 64 (d = 4096).
"""
import sys
import time

import torch
from triton.testing import do_bench

import seeddrop
from seeddrop.ops import sparse_jl as J


def us(fn) -> float:
    return 1e3 * do_bench(fn, warmup=25, rep=100, return_mode="median")


def walk_plans(batch, k, d, dev):
    """The default plan, then tiles of block_j rows of S x block_g cells x block_m rows of x
    with 64-1024 values per warp, for 1 / 2 / 4 warps, at 16 and 32 warps per SM."""
    yield J.gather_plan(batch, k, d, dev)
    cells = J.cdiv(d, 64)
    for num_warps in (1, 2, 4):
        for block_m in sorted({batch, min(batch, 16), min(batch, 32)}):
            for block_j in (1, 2, 4, 8, 16):
                for block_g in (4, 8, 16, 32, 64):
                    if not 64 * num_warps <= block_j * block_g * block_m <= 1024 * num_warps:
                        continue
                    tiles = J.cdiv(k, block_j) * J.cdiv(batch, block_m)
                    for warps_per_sm in (16, 32):
                        programs = warps_per_sm // num_warps * J.sm_count(dev)
                        splits = max(1, min(J.cdiv(cells, 2 * block_g), J.cdiv(programs, tiles)))
                        yield J.gather_plan(batch, k, d, dev, block_j, block_g, splits, block_m, num_warps)


def walk(dev):
    for d, k, batches in [(49152, 1024, (1, 4, 8, 16, 32, 64)), (4096, 256, (1, 64))]:
        for batch in batches:
            x = torch.randn(batch, d, device=dev, dtype=torch.bfloat16)
            r = J.jl_matrix(k, d, 5, dtype=torch.bfloat16, device=dev)
            params, seed = J.jl_params(k, d), J.Seed(None, 5)
            out = torch.empty(batch, k, device=dev, dtype=x.dtype)
            ref = x.float() @ r.float().T
            cfg = J.default_config(batch, k, d, x.dtype, dev)
            head = f"cuBLAS {us(lambda: x @ r.T):.1f} dense {us(lambda: J.launch_project(x, out, params, seed, True, cfg)):.1f}"
            res = []
            for plan in dict.fromkeys(walk_plans(batch, k, d, dev)):
                J.launch_gather(x, out, params, seed, plan)
                err = (out.float() - ref).abs().max().item()
                assert err < 0.05 * ref.abs().max().item() + 1e-3, (plan, err)
                res.append((us(lambda: J.launch_gather(x, out, params, seed, plan)), plan))
            auto = res[0]
            res.sort(key=lambda t: t[0])
            fmt = lambda t: f"{t[0]:.1f} (j{t[1].block_j} g{t[1].block_g} m{t[1].block_m} s{t[1].splits} w{t[1].num_warps})"  # noqa: E731
            print(f"d={d} B={batch}: {head} | walk default {fmt(auto)} | best " + ", ".join(map(fmt, res[:5])),
                  flush=True)


def host_time(dev):
    for batch, d, k in [(1, 49152, 1024), (16, 49152, 1024), (32, 49152, 1024), (64, 49152, 1024), (64, 4096, 256)]:
        x = torch.randn(batch, d, device=dev, dtype=torch.bfloat16)
        seed = torch.tensor(20240607, device=dev)
        params = J.jl_params(k, d)
        out = torch.empty(batch, k, device=dev, dtype=x.dtype)
        xt = x.t().contiguous().t()
        calls = {
            "public, tensor seed": lambda: seeddrop.sparse_jl(x, k, seed),
            "public, int seed": lambda: seeddrop.sparse_jl(x, k, 20240607),
            "_project": lambda: J._project(x, params, J.Seed(seed, 0), True),
            "launch_project": lambda: J.launch_project(x, out, params, J.Seed(seed, 0), True),
            "column_major copy": lambda: J.column_major(x),
            "walk on column-major x": lambda: J.launch_gather(xt, out, params, J.Seed(seed, 0)),
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
    parts = sys.argv[1:] or ["walk", "host"]
    if "walk" in parts:
        walk(device)
    if "host" in parts:
        host_time(device)
