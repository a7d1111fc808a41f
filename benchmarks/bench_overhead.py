"""Per-call host overhead (wall time per call, GPU work negligible) at 4096 elements.

python benchmarks/bench_overhead.py --out DIR
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

import seeddrop


def per_call_us(fn, n=5000):
    for _ in range(100):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    x = torch.randn(4096, device="cuda")
    xr = x.clone().requires_grad_()
    g = torch.randn_like(x)
    seeds = torch.randint(0, 2**62, (64,), device="cuda")
    x2 = torch.randn(64, 64, device="cuda")
    cases = [
        ("forward, no grad", lambda: F.dropout(x, 0.1), lambda: seeddrop.dropout(x, 0.1)),
        ("forward, no grad, int seed", None, lambda: seeddrop.dropout(x, 0.1, seed=5)),
        ("forward, no grad, per-row seeds", None, lambda: seeddrop.dropout(x2, 0.1, seed=seeds)),
        ("forward, requires_grad", lambda: F.dropout(xr, 0.1), lambda: seeddrop.dropout(xr, 0.1)),
        ("forward+backward", lambda: F.dropout(xr, 0.1).backward(g), lambda: seeddrop.dropout(xr, 0.1).backward(g)),
    ]
    lines = ["| case (4096 elements) | F.dropout us/call | seeddrop us/call |", "|---|---|---|"]
    for name, native, ours in cases:
        n_us = f"{per_call_us(native):.1f}" if native else "-"
        lines.append(f"| {name} | {n_us} | {per_call_us(ours):.1f} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "overhead.md"), "w") as f:
        f.write(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
