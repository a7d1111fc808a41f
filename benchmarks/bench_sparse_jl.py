"""Seeded sparse JL projection (seeddrop.sparse_jl) vs a materialized S: cuBLAS dense and torch CSR.

python benchmarks/bench_sparse_jl.py --out DIR [--quick] [--smoke]
Cases: x [B, 49152] bf16 -> k = 1024 and x [B, 4096] bf16 -> k = 256, B in 1, 64, 4096, 8192.
Per case: correctness first (against (a) and a float32 reference), then median times
(triton.testing.do_bench) of
  ours       sparse_jl(x, k, seed) with the default plan, plus config variants of both kernels
             (dense tiles for tl.dot; the nonzero-walking gather for B <= 64);
  (a) dense  x @ R.T with R = jl_matrix(..., bf16) materialized (cuBLAS);
  (b) CSR    torch.sparse.mm(S_csr, x.T) with S materialized as CSR (bf16, else fp32);
  backward   grad @ S (ours) vs grad @ R (cuBLAS);
and the device memory of one call of ours: peak - before = output + split partials + S,
where S must come out as 0 bytes. Prints a Markdown table last; writes DIR/sparse_jl.md
and DIR/sparse_jl.csv. --smoke runs tiny cases on the CPU to check this script without a GPU.
"""
import argparse
import csv
import os
import time

import torch

import seeddrop
from seeddrop.ops import sparse_jl as J

SEED = 20240607
CASES = [(49152, 1024), (4096, 256)]  # (d, k)
BATCHES = [1, 64, 4096, 8192]


def bench(fn, cuda: bool) -> float:
    """Median milliseconds: triton.testing.do_bench on CUDA, a plain timer for --smoke."""
    if cuda:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def _alloc_bytes(n: int) -> int:
    """Bytes the CUDA caching allocator accounts for an n-byte tensor (512-byte granules)."""
    return (n + 511) // 512 * 512


def _rel_diff(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).abs().max() / ref.float().abs().max())


def variants(batch: int, k: int, d: int, dtype: torch.dtype, device) -> list:
    """(label, plan) pairs, the default first: JLConfig (dense tiles) or GatherPlan."""
    C = J.JLConfig
    default = J.default_config(batch, k, d, dtype, device)
    if batch <= 64:
        bm = default.block_m
        plans = [C(bm, 64, 128, 4, 3, swap=True), C(bm, 128, 64, 4, 3), C(bm, 64, 128, 8, 3),
                 C(bm, 128, 64, 4, 3, split=64), C(bm, 128, 64, 4, 3, split=128), C(bm, 64, 64, 4, 3, split=64)]
        gp = lambda bj, bg, warps: J.gather_plan(batch, k, d, device, bj, bg, num_warps=warps)  # noqa: E731
        shapes = [(16, 16), (16, 32), (8, 32), (32, 16)] if batch == 1 else [(2, 32), (1, 16), (2, 16), (4, 8)]
        plans += [gp(bj, bg, 4 if batch == 1 else 1) for bj, bg in shapes] + [gp(16, 2 if batch > 1 else 32, 8)]
    else:
        plans = [C(128, 128, 64, 8, 3), C(128, 256, 64, 8, 3), C(256, 128, 64, 8, 4)]
    if batch <= J.GATHER_MAX_ROWS:
        default = J.gather_plan(batch, k, d, device)
    out = [default] + [c for c in plans if c != default]
    return [(("gather " if isinstance(c, J.GatherPlan) else "") + str(tuple(c)[:6] + ((c.split,) if
             isinstance(c, J.JLConfig) and c.split else ())), c) for c in out]


def _run_plan(x, out, params, seed, plan):
    if isinstance(plan, J.GatherPlan):
        return J.launch_gather(x, out, params, J.Seed(seed, 0), plan)
    return J.launch_project(x, out, params, J.Seed(seed, 0), True, plan)


def _peak_extra(fn):
    """(peak device bytes allocated by fn() above what was allocated before, fn's result)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before, result


def memory_of_one_call(x, k, seed) -> dict:
    """Device memory of one sparse_jl call against allocating its known temporaries in the
    same order (output, the walk's column-major copy of x, split partials; the caching
    allocator's rounding included): S_bytes is the difference, which must be 0."""
    batch, d = x.shape
    walk = batch <= J.GATHER_MAX_ROWS
    if walk:
        splits = J.gather_plan(batch, k, d, x.device).splits
    else:
        _, splits = J.split_plan(batch, k, d, J.default_config(batch, k, d, x.dtype, x.device), x.device)
    copies_x = walk and batch > J.GATHER_IN_PLACE_ROWS and x.stride(0) != 1

    def temporaries():
        out = torch.empty(batch, k, dtype=x.dtype, device=x.device)
        copy = torch.empty_like(x) if copies_x else None
        part = torch.empty(splits, batch, k, dtype=torch.float32, device=x.device) if splits > 1 else None
        return out, copy, part

    before = torch.cuda.memory_allocated()
    peak, y = _peak_extra(lambda: seeddrop.sparse_jl(x, k, seed))
    held = torch.cuda.memory_allocated() - before - _alloc_bytes(y.numel() * y.element_size())
    del y
    expected, bufs = _peak_extra(temporaries)
    del bufs
    return dict(out_bytes=_alloc_bytes(batch * k * x.element_size()),
                partial_bytes=_alloc_bytes(splits * batch * k * 4) if splits > 1 else 0,
                x_copy_bytes=_alloc_bytes(x.numel() * x.element_size()) if copies_x else 0,
                peak_extra_bytes=peak, S_bytes=peak - expected, held_after_bytes=held)


def run_case(batch: int, d: int, k: int, quick: bool, dev: torch.device) -> dict:
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(batch, d, device=dev, dtype=dtype)
    g = torch.randn(batch, k, device=dev, dtype=dtype)
    seed = torch.tensor(SEED, device=dev)
    params = J.jl_params(k, d)
    res = {"shape": f"[{batch}, {d}] -> {k}"}

    # correctness first: ours vs (a), and forward/backward vs float32 on up to 256 rows
    r_dense = seeddrop.jl_matrix(k, d, SEED, dtype=dtype, device=dev)
    y_a = x @ r_dense.T
    y = seeddrop.sparse_jl(x, k, seed)
    res["rel_diff_vs_a"] = _rel_diff(y, y_a)
    rows = slice(0, min(batch, 256))
    r32 = seeddrop.jl_matrix(k, d, SEED, dtype=torch.float32, device=dev)
    xr = x.detach().requires_grad_()
    seeddrop.sparse_jl(xr, k, seed).backward(g)
    excess = []
    for got, a, s in ((y, x, r32.T), (xr.grad, g, r32)):  # |got - ref| <= 2**-8 |ref| + 1e-5 |a| @ |s|
        ref = a[rows].float() @ s
        excess.append(float(((got[rows].float() - ref).abs() - 2.0 ** -8 * ref.abs()
                             - 1e-5 * (a[rows].float().abs() @ s.abs())).max()))
    res["check"] = "ok" if max(excess) <= 0 and res["rel_diff_vs_a"] <= 2.0 ** -6 else f"FAIL {excess}"
    del y, r32, xr

    res["R_dense_bytes"] = r_dense.numel() * r_dense.element_size()
    if cuda:
        res.update(memory_of_one_call(x, k, seed))
    else:
        res["S_bytes"] = "n/a"

    ms = lambda fn: bench(fn, cuda)  # noqa: E731
    res["ours_ms"] = ms(lambda: seeddrop.sparse_jl(x, k, seed))
    res["dense_ms"] = ms(lambda: x @ r_dense.T)
    try:
        s_csr, xt = r_dense.to_sparse_csr(), x.T.contiguous()
        y_csr = torch.sparse.mm(s_csr, xt)
        res["csr_dtype"] = "bf16"
    except (RuntimeError, NotImplementedError):
        s_csr, xt = r_dense.float().to_sparse_csr(), x.T.float().contiguous()
        y_csr = torch.sparse.mm(s_csr, xt)
        res["csr_dtype"] = "fp32"
    res["csr_nnz"] = int(s_csr.values().numel())
    if _rel_diff(y_csr.T, y_a) > 2.0 ** -6:
        res["check"] += " (CSR differs)"
    res["csr_ms"] = ms(lambda: torch.sparse.mm(s_csr, xt))
    del s_csr, xt, y_csr
    res["ours_bwd_ms"] = ms(lambda: J._project(g, params, J.Seed(seed, 0), False))
    res["dense_bwd_ms"] = ms(lambda: g @ r_dense)

    # config variants, the default first
    out = torch.empty(batch, k, device=dev, dtype=dtype)
    best = None
    for i, (label, plan) in enumerate(variants(batch, k, d, dtype, dev)[: 2 if quick else None]):
        run = lambda: _run_plan(x, out, params, seed, plan)  # noqa: E731
        try:
            out.fill_(float("nan"))
            run()
            ok = _rel_diff(out, y_a) <= 2.0 ** -6
            t = ms(run)
        except Exception as e:  # e.g. a config that needs more shared memory than the GPU has
            res[f"variant{i}"] = f"{label}: failed ({type(e).__name__})"
            continue
        res[f"variant{i}"] = f"{label}: {t:.4f} ms" + ("" if ok else " WRONG")
        if ok and (best is None or t < best[0]):
            best = (t, label)
    res["best_ms"], res["best_config"] = best if best else (float("nan"), "-")
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--quick", action="store_true", help="one config variant per case")
    ap.add_argument("--smoke", action="store_true", help="tiny cases on the CPU (checks the script without a GPU)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cpu" if args.smoke else "cuda")
    cases, batches = ([(200, 24)], [1, 70]) if args.smoke else (CASES, BATCHES)
    rows = []
    for d, k in cases:
        for batch in batches:
            t0 = time.time()
            r = run_case(batch, d, k, args.quick, dev)
            r["case_s"] = round(time.time() - t0, 1)
            print({key: (f"{v:.4g}" if isinstance(v, float) else v) for key, v in r.items()}, flush=True)
            rows.append(r)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    keys = list(dict.fromkeys(key for r in rows for key in r))
    with open(os.path.join(args.out, "sparse_jl.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    lines = ["| x -> k | ours ms | best variant ms (config) | (a) dense R ms | (b) CSR ms | ours / (a) "
             "| bwd ours / (a) ms | S bytes | R bytes | check |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['ours_ms']:.4f} | {r['best_ms']:.4f} {r['best_config']} | {r['dense_ms']:.4f} | "
            f"{r['csr_ms']:.4f} ({r['csr_dtype']}) | {r['ours_ms'] / r['dense_ms']:.2f} | "
            f"{r['ours_bwd_ms']:.4f} / {r['dense_bwd_ms']:.4f} | {r['S_bytes']} | {r['R_dense_bytes']} | "
            f"{r['check']} |")
    table = "\n".join(lines)
    device = torch.cuda.get_device_name() if dev.type == "cuda" else "CPU smoke run"
    with open(os.path.join(args.out, "sparse_jl.md"), "w") as f:
        f.write(f"Device: {device}, torch {torch.__version__}\n\n{table}\n\n")
        f.write("S bytes = peak - before - output - split partials of one call (torch.cuda memory stats); "
                "config tuple = (block_m, block_n, block_r, num_warps, num_stages, swap); "
                "gather tuple = (block_j, block_g, cells_per_split, splits, num_warps, block_m).\n\n")
        for r in rows:
            f.write(f"- {r['shape']}: " + "; ".join(str(r[key]) for key in r if key.startswith("variant")) + "\n")
    print(table)


if __name__ == "__main__":
    main()
