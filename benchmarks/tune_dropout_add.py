"""Plan sweep of seeddrop.dropout_add on the GPU: first what the bias reduction costs (the
backward with a bias gradient vs with a bias that needs none vs without bias), then tile
bytes, columns per tile and programs per SM of the bias-reducing backward, tile bytes of
the forward; each timed as x memory floor (forward 1.5 x copy, backward 1.0 / 1.5 x copy). Plans are changed through the
module's knobs (GPU_TILE_BYTES, BWD_REDUCE_COLS, BWD_PROGRAMS_PER_SM); the kernel key
includes the tile shape, so every plan runs its own compiled kernel.

python benchmarks/tune_dropout_add.py [--quick]
"""
import argparse
import itertools

import torch
from triton.testing import do_bench

import seeddrop
from seeddrop import _extension
from seeddrop.ops import dropout_add as da


def new_plans():
    """Forget planned launches after changing a plan knob: the Python plans and the C++
    host path's recipes (which replay a planned launch without looking at the knobs)."""
    da._PLANS.clear()
    ext = _extension.load()
    if ext is not None:
        ext.clear_recipes()


def bench(fn):
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def reduction_cost(shape=(8192, 49152), dtype=torch.bfloat16):
    """Backward / floor with the bias reduction, with a bias needing no gradient, without bias."""
    x, r, g = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3))
    b = torch.randn(shape[-1], device="cuda", dtype=dtype)
    out = torch.empty_like(x)
    copy = bench(lambda: out.copy_(x))
    for act in (None, "relu", "gelu", "gelu_tanh", "silu"):
        floor = copy * (1.0 if act is None else 1.5)
        row = []
        for mode in ("bias grad", "bias no grad", "no bias"):
            xs, rs = x.detach().requires_grad_(), r.detach().requires_grad_()
            bs = b.detach().requires_grad_(mode == "bias grad")
            y = seeddrop.dropout_add(xs, rs, 0.1, bias=None if mode == "no bias" else bs, activation=act, seed=7)
            inputs = (xs, rs, bs) if mode == "bias grad" else (xs, rs)
            t = bench(lambda: torch.autograd.grad(y, inputs, g, retain_graph=True))
            row.append(f"{mode} {t / floor:.3f}x")
        print(f"bwd {shape} {dtype} {act}: " + ", ".join(row), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    reduction_cost()
    shapes = [(16384, 4096), (8192, 49152)]
    acts = [None, "gelu", "silu", "relu"]  # fp32: None and gelu
    dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float32]
    for shape, dtype in itertools.product(shapes, dtypes):
        x = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
        r = torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True)
        b = torch.randn(shape[-1], device="cuda", dtype=dtype, requires_grad=True)
        g = torch.randn(shape, device="cuda", dtype=dtype)
        out = torch.empty_like(x)
        copy = bench(lambda: out.copy_(x))
        for act in acts if dtype == torch.bfloat16 else acts[:2]:
            floor_b = copy * (1.0 if act is None else 1.5)
            res = []
            cfg = da.Config(0.1, True, (), False, da.check_activation(act))
            narrow = da.narrow_reduce_tiles(cfg.act, x.element_size())
            kind = "reduce_act16" if cfg.act and x.element_size() <= 2 else "reduce"
            defaults = da.GPU_TILE_BYTES[kind], da.BWD_REDUCE_COLS[narrow], da.BWD_PROGRAMS_PER_SM
            for tile, cols, ppsm in itertools.product((2048, 4096, 8192), (64, 256, 1024), (4, 8, 16, 32)):
                da.GPU_TILE_BYTES[kind] = tile
                da.BWD_REDUCE_COLS[narrow] = cols
                da.BWD_PROGRAMS_PER_SM = ppsm
                new_plans()
                y = seeddrop.dropout_add(x, r, 0.1, bias=b, activation=act, seed=7)
                t = bench(lambda: torch.autograd.grad(y, (x, r, b), g, retain_graph=True))
                res.append((t / floor_b, tile, cols, ppsm, da._plan(x.shape, x, cfg, True).n_chunks))
            da.GPU_TILE_BYTES[kind], da.BWD_REDUCE_COLS[narrow], da.BWD_PROGRAMS_PER_SM = defaults
            res.sort()
            print(f"bwd {shape} {dtype} {act}: copy {copy:.4f} ms; best", [f"{r[0]:.3f}x tile={r[1]} cols={r[2]} ppsm={r[3]} chunks={r[4]}" for r in res[:4]],
                  "worst", f"{res[-1][0]:.3f}x", flush=True)
            # forward tile sweep
            fres = []
            default_tile = da.GPU_TILE_BYTES["forward"]
            for tile in (8192, 16384, 32768):
                da.GPU_TILE_BYTES["forward"] = tile
                new_plans()
                t = bench(lambda: seeddrop.dropout_add(x, r, 0.1, bias=b, activation=act, seed=7))
                fres.append((t / (1.5 * copy), tile))
            da.GPU_TILE_BYTES["forward"] = default_tile
            print(f"fwd {shape} {dtype} {act}:", [f"{f:.3f}x tile={t}" for f, t in sorted(fres)], flush=True)
        del x, r, g, out


if __name__ == "__main__":
    main()
