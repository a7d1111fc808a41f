"""Tile / programs-per-SM / warps sweep of the dropout kernel on variational dropout
([N, 64, 768], mask shared over N), as x copy time. python benchmarks/tune_variational.py

Each config is set through the module's knobs (SHARED_DIMS_TILES, PROGRAMS_PER_SM) and run
through the library's own launch(); plans and compiled kernels are cleared per config
(the kernel key does not hold the tile shape: in the library the plan follows the key).
"""
import itertools

import torch
from triton.testing import do_bench

from seeddrop._common import Seed
from seeddrop.ops import dropout as dmod


def kernel_time(x, out, elements, ppsm, warps, seed):
    dmod.SHARED_DIMS_TILES[x.element_size()] = (elements, warps)
    dmod.PROGRAMS_PER_SM = ppsm
    dmod._CONFIGS.clear()
    dmod._KERNEL.compiled.clear()
    return do_bench(lambda: dmod.launch(x, out, (0,), seed, 0.1, False), warmup=10, rep=50, return_mode="median")


def main():
    seed = Seed(None, 1234)
    defaults = dict(dmod.SHARED_DIMS_TILES), dmod.PROGRAMS_PER_SM
    for dtype, n in itertools.product((torch.bfloat16, torch.float32, torch.float64), (2048, 8192)):
        x = torch.randn(n, 64, 768, device="cuda", dtype=dtype)
        out = torch.empty_like(x)
        copy = do_bench(lambda: out.copy_(x), warmup=10, rep=50, return_mode="median")
        mask = torch.ones(1, 64, 768, device="cuda", dtype=dtype)
        conv = do_bench(lambda: torch.mul(x, mask, out=out), warmup=10, rep=50, return_mode="median")
        res = []
        for elements, ppsm, warps in itertools.product((1024, 2048, 4096, 8192, 16384), (16, 64, 256, 1024), (4, 8)):
            t = kernel_time(x, out, elements, ppsm, warps, seed)
            res.append((t / copy, elements, ppsm, warps))
        res.sort()
        print(f"{dtype} N={n}: copy {copy:.4f} ms, x*mask {conv / copy:.3f}x; best",
              [f"{r:.3f}x E={e} ppsm={p} w={w}" for r, e, p, w in res[:5]], "worst", f"{res[-1][0]:.3f}x", flush=True)
        del x, out
    dmod.SHARED_DIMS_TILES.update(defaults[0])
    dmod.PROGRAMS_PER_SM = defaults[1]
    dmod._CONFIGS.clear()


if __name__ == "__main__":
    main()
