"""Seeded dropout vs copy floor, torch native and torch.compile (forward and backward).

python benchmarks/bench_dropout.py --out DIR [--quick]
Prints a Markdown table last; writes DIR/dropout.md and DIR/dropout.csv.
"""
import argparse
import csv
import os
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import seeddrop

P = 0.1
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def run_case(rows, cols, dtype, mode, compiled_dropout):
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)
    g = torch.randn_like(x)
    out = torch.empty_like(x)
    copy = bench(lambda: out.copy_(x))
    res = {"copy_ms": copy}
    if mode == "plain":
        fwd = lambda: seeddrop.dropout(x, P, seed=1234)
        bwd_seed = torch.tensor(1234, device="cuda")
        bwd = lambda: seeddrop.dropout(g, P, seed=bwd_seed)  # backward = the same kernel on grad
    elif mode == "per_row":
        seeds = torch.randint(-(2**63), 2**63 - 1, (rows,), device="cuda")
        fwd = lambda: seeddrop.dropout(x, P, seed=seeds)
        bwd = lambda: seeddrop.dropout(g, P, seed=seeds)
    elif mode == "transposed":
        xt = x.t()
        gt = g.t()
        fwd = lambda: seeddrop.dropout(xt, P, seed=1234)
        bwd = lambda: seeddrop.dropout(gt, P, seed=1234)
        res["transpose_copy_ms"] = bench(lambda: xt.contiguous())
    res["seeddrop_fwd_ms"] = bench(fwd)
    res["seeddrop_bwd_ms"] = bench(bwd)
    if mode == "plain":
        res["seeddrop_fwd_seed_none_ms"] = bench(lambda: seeddrop.dropout(x, P))
        xr = x.detach().requires_grad_()
        res["seeddrop_autograd_fwd_bwd_ms"] = bench(lambda: seeddrop.dropout(xr, P).backward(g))
        res["native_fwd_ms"] = bench(lambda: F.dropout(x, P))
        y, mask = torch.native_dropout(x, P, True)
        res["native_bwd_ms"] = bench(lambda: torch.ops.aten.native_dropout_backward(g, mask, 1 / (1 - P)))
        res["native_autograd_fwd_bwd_ms"] = bench(lambda: F.dropout(xr, P).backward(g))
        res["compiled_fwd_ms"] = bench(lambda: compiled_dropout(x))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    compiled_dropout = torch.compile(lambda t: F.dropout(t, P))
    rows_list = [8192] if args.quick else [1, 16, 256, 2048, 8192]
    rows_all = []
    for name, dtype in DTYPES.items():
        for rows in rows_list:
            t0 = time.time()
            r = run_case(rows, 49152, dtype, "plain", compiled_dropout)
            rows_all.append({"case": "plain", "dtype": name, "shape": f"{rows}x49152", **r})
        r = run_case(8192, 49152, dtype, "per_row", None)
        rows_all.append({"case": "per_row", "dtype": name, "shape": "8192x49152", **r})
    r = run_case(8192, 8192, torch.float16, "transposed", None)
    rows_all.append({"case": "transposed", "dtype": "fp16", "shape": "8192x8192 (x.t())", **r})

    keys = sorted({k for r in rows_all for k in r})
    with open(os.path.join(args.out, "dropout.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows_all)
    lines = ["| case | dtype | shape | copy ms | fwd ms (x copy) | bwd ms (x copy) | native fwd (x copy) | compiled fwd (x copy) | native bwd (x copy) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows_all:
        c = r.get("transpose_copy_ms", r["copy_ms"]) if r["case"] == "transposed" else r["copy_ms"]
        def rel(k):
            return f"{r[k]:.4f} ({r[k] / c:.2f})" if k in r else "-"
        lines.append(f"| {r['case']} | {r['dtype']} | {r['shape']} | {c:.4f} | {rel('seeddrop_fwd_ms')} | {rel('seeddrop_bwd_ms')} | "
                     f"{rel('native_fwd_ms')} | {rel('compiled_fwd_ms')} | {rel('native_bwd_ms')} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "dropout.md"), "w") as f:
        f.write(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
