"""Tile / programs-per-SM / warps sweep of the dropout kernel on variational dropout
([N, 64, 768], mask shared over N), as x copy time. python benchmarks/tune_variational.py"""
import itertools

import torch
from triton.testing import do_bench

from seeddrop import stream
from seeddrop._common import Seed, cdiv, next_pow2, plan_view, scale_bits, sm_count
from seeddrop.ops import dropout as dmod


def kernel_time(x, out, elements, ppsm, warps, seed):
    view = plan_view(x.shape, x.stride(), out.stride(), (0,), False)
    block_g = min(next_pow2(cdiv(view.Q, 8)), elements // 8)
    block_p = 1
    tiles = cdiv(view.Q, block_g * 8)
    s_chunks = min(view.S, max(1, cdiv(ppsm * sm_count(x.device), tiles)))
    s_per = cdiv(view.S, s_chunks)
    grid = tiles * cdiv(view.S, s_per)

    def fn():
        dmod._dropout_kernel[(grid,)](
            x, out, seed.tensor, seed.value, 0, view.P, view.S, view.Q, s_per,
            *view.x_strides, *view.out_strides, 1, stream.threshold(0.1), scale_bits(0.1),
            SEED_FROM_PTR=False, PER_ROW=False, ALIGNED=True, MASK_ONLY=False,
            SOFTWARE_BF16=False, BLOCK_P=block_p, BLOCK_G=block_g, num_warps=warps)
    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def main():
    seed = Seed(None, 1234)
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


if __name__ == "__main__":
    main()
