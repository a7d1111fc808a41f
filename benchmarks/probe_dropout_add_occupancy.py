"""Occupancy probe of dropout_add's 16-bit kernels on the GPU: registers per thread, warps
per program and tile size against time / memory floor, for the bias-reducing backward and
the forward with transcendental activations ([8192, 49152] bf16, p = 0.1, bias on).

Launches the library's kernels through their launchers' plans, with the plan knobs
(GPU_TILE_BYTES, BWD_PREFETCH) and Triton's `maxnreg` / `num_warps` varied; prints one
line per configuration (time / floor, registers, spills) and the best few per activation.

python benchmarks/probe_dropout_add_occupancy.py [--quick]
"""
import argparse
import itertools

import torch
from triton.testing import do_bench

from seeddrop.ops import dropout_add as da
from seeddrop._common import Seed


def bench(fn):
    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def sweep(act, x, g, b, copy, forward, configs, tile_kind="reduce_act16"):
    cfg = da.Config(0.1, True, (), False, da.check_activation(act))
    seed = Seed(None, 7)
    floor = (1.5 if forward or act is not None else 1.0) * copy
    out = torch.empty_like(x)
    rows = []
    for tile, warps, maxnreg, prefetch in configs:
        da.GPU_TILE_BYTES["forward" if forward else tile_kind] = tile
        da.BWD_PREFETCH = prefetch
        da._PLANS.clear()
        options = {} if maxnreg is None else {"maxnreg": maxnreg}
        if forward:
            key, plan, args = da._prepare_forward(x, g, b, out, seed, cfg)
            kernel = da._FWD
        else:
            key, plan, args, _ = da._prepare_backward(g, x, b, out, seed, cfg, True)
            kernel = da._BWD
        nw = warps or plan.num_warps
        fn = lambda: kernel.launch(key, plan.grid, args, nw, **options)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        k = next((v for kk, v in kernel.kernels.items()
                  if kk[0] == key and kk[1] == nw and kk[4:] == tuple(options.items())), None)
        t = bench(fn)
        rows.append((t / floor, tile, nw, maxnreg, prefetch, getattr(k, "n_regs", -1), getattr(k, "n_spills", -1)))
        print(f"{'fwd' if forward else 'bwd'} {act}: tile={tile} warps={nw} maxnreg={maxnreg} prefetch={prefetch} "
              f"regs={rows[-1][5]} spills={rows[-1][6]}: {t:.4f} ms = {t / floor:.3f}x floor", flush=True)
    rows.sort(key=lambda r: r[0])
    print(f"BEST {'fwd' if forward else 'bwd'} {act}:",
          "; ".join(f"{r[0]:.3f}x tile={r[1]} w={r[2]} maxnreg={r[3]} prefetch={r[4]} regs={r[5]}" for r in rows[:3]),
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--acts", default="gelu,gelu_tanh,silu,relu", help="backward sweep activations ('none': None)")
    ap.add_argument("--tile-kind", default="reduce_act16", help="the GPU_TILE_BYTES entry the backward sweep varies")
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--tiles", default="1024,2048", help="backward tile bytes")
    ap.add_argument("--warps", default="2,4", help="backward warps per program")
    a = ap.parse_args()
    shape, dtype = (8192, 49152), getattr(torch, a.dtype)
    x, g = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(2))
    b = torch.randn(shape[-1], device="cuda", dtype=dtype)
    out = torch.empty_like(x)
    copy = bench(lambda: out.copy_(x))
    print(f"{torch.cuda.get_device_name()}: copy {copy:.4f} ms (floor: 1.5x copy, 1.0x for a backward without "
          "activation)", flush=True)
    bwd = list(itertools.product([int(v) for v in a.tiles.split(",")], [int(v) for v in a.warps.split(",")],
                                 (None, 64), (True, False)))
    fwd = list(itertools.product((4096, 8192), (4, 8), (None, 64), (True,)))
    for act in a.acts.split(",") if not a.quick else ("gelu",):
        sweep(None if act == "none" else act, x, g, b, copy, False, bwd, a.tile_kind)
    for act in ("gelu", "gelu_tanh") if not (a.quick or a.no_forward) else ():
        sweep(act, x, g, b, copy, True, fwd)


if __name__ == "__main__":
    main()
