"""Variational dropout at small N, where a call is host bound: seeddrop vs the conventional
implementation (eager and torch.compile), forward and backward, in paired rounds.

x is [N, 64, 768], the mask shared over N (seeddrop: shared_dims=(0,); conventional:
x * F.dropout(ones(1, 64, 768), p), the mask kept for backward). do_bench's one-call timing
hides only as much host time as its cache flush takes on the GPU, so at small N it measures
the host's jitter. Here one sample is the wall time of `--calls` back-to-back calls divided
by their number (what a training loop sees: the GPU keeps up, so this is each call's host
time, or its GPU time where that is longer), the variants take turns within each of
`--rounds` rounds (rotating which goes first), and each comparison is reported as the
median of the per-round ratios with the number of rounds seeddrop won and the two-sided
sign-test p-value of that count.

python benchmarks/bench_variational_small.py [--sizes 1,16,256] [--rounds 21] [--calls 200] [--out DIR]
"""
import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

import seeddrop

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
P = 0.1


def conventional(t):
    return t * F.dropout(torch.ones((1, *t.shape[1:]), device=t.device, dtype=t.dtype), P)


def ours(t):
    return seeddrop.dropout(t, P, shared_dims=(0,))


def sign_test_p(wins: int, n: int) -> float:
    """Two-sided exact binomial test of `wins` out of `n` against 1/2."""
    k = min(wins, n - wins)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def loop_us(fn, calls: int) -> float:
    """Wall-clock microseconds per call of `calls` back-to-back calls (GPU drained before and after)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def variants(x, g, compiled):
    """{direction: {method: fn}} for one x."""
    fns = {"fwd": {}, "bwd": {}}
    for name, f in (("seeddrop", ours), ("conventional", conventional), ("compiled", compiled)):
        fns["fwd"][name] = (lambda f=f: f(x))
        leaf = x.detach().requires_grad_()
        out = f(leaf)
        fns["bwd"][name] = (lambda out=out, leaf=leaf: torch.autograd.grad(out, leaf, g, retain_graph=True))
    return fns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,16,256")
    ap.add_argument("--dtypes", default="fp16,bf16,fp32,fp64")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    header = (f"variational small N, paired rounds: {torch.cuda.get_device_name()} | torch {torch.__version__} | "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} | p = {P} | x = [N, 64, 768] | "
              f"{args.rounds} rounds x {args.calls} back-to-back calls")
    lines = [header, "",
             "| dtype | N | dir | seeddrop us | conventional us | compiled us | ours/conv (wins, p) | ours/compiled (wins, p) |",
             "|---|---:|---|---:|---:|---:|---|---|"]
    print(header, flush=True)
    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        torch._dynamo.reset()
        compiled = torch.compile(conventional, dynamic=False)
        for n in (int(s) for s in args.sizes.split(",")):
            x = torch.randn(n, 64, 768, device="cuda", dtype=dtype)
            g = torch.randn_like(x)
            fns = variants(x, g, compiled)
            for direction, methods in fns.items():
                names = list(methods)
                for fn in methods.values():  # warm up (compiles, plans, caches)
                    for _ in range(20):
                        fn()
                samples = {name: [] for name in names}
                for r in range(args.rounds):
                    order = names[r % len(names):] + names[:r % len(names)]
                    for name in order:
                        samples[name].append(loop_us(methods[name], args.calls))
                med = {name: statistics.median(v) for name, v in samples.items()}
                cells = []
                for other in ("conventional", "compiled"):
                    ratios = [a / b for a, b in zip(samples["seeddrop"], samples[other])]
                    wins = sum(a < b for a, b in zip(samples["seeddrop"], samples[other]))
                    cells.append(f"{statistics.median(ratios):.3f} ({wins}/{args.rounds}, "
                                 f"p={sign_test_p(wins, args.rounds):.2g})")
                line = (f"| {dname} | {n} | {direction} | {med['seeddrop']:.1f} | {med['conventional']:.1f} | "
                        f"{med['compiled']:.1f} | {cells[0]} | {cells[1]} |")
                lines.append(line)
                print(line, flush=True)
            del x, g, fns
    with open(os.path.join(args.out, "variational_small_paired.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
