"""Fused residual dropout (seeddrop.dropout_add) vs its memory floor, the unfused PyTorch
expression and that expression under torch.compile; plus a transformer MLP sub-block.

python benchmarks/bench_dropout_add.py --out DIR [--quick] [--no-compile]
(--smoke: tiny CPU run of every code path with a wall-clock timer, to check the script.)
The MLP sub-block runs nn.Dropout, seeddrop.dropout_add and no dropout in --mlp-rounds
interleaved passes (median per variant).
Prints Markdown tables last; writes DIR/dropout_add.md and DIR/dropout_add.csv.

Memory floors, in units of the time of out.copy_(x) measured in the same run (a copy
moves 2 tensors of x's size; the bias vector and the backward's bias workspace, at most
a few MB, are left out):
* forward: read x and residual, write out: 3 tensors -> 1.5 x copy;
* backward: read grad_out, write grad_x -> 1.0 x copy; with an activation also read x
  -> 1.5 x copy. grad_residual is grad_out itself (no pass over memory).
Times: triton.testing.do_bench medians (L2 flushed between reps). Forward: the training
forward (x, residual, bias require grad). Backward: autograd.grad of (x, residual, bias)
on a retained graph (the forward is not timed).
"""
import argparse
import csv
import os
import statistics
import time

import torch
import torch.nn.functional as F

import seeddrop
from seeddrop.ops.dropout_add import TORCH_ACTIVATIONS

P = 0.1
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ACTIVATIONS = [None, "relu", "gelu", "gelu_tanh", "silu"]
SHAPES = [(16384, 4096), (8192, 49152)]


def floors(activation) -> tuple:
    """(forward, backward) memory floors in units of the copy time."""
    return 1.5, (1.0 if activation is None else 1.5)


def make_timer(device: str):
    """ms per call: do_bench median on CUDA; a wall-clock median on CPU (--smoke)."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")

    def wall(fn, reps=3):
        fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)

    return wall


def unfused(x, residual, bias, activation):
    return residual + F.dropout(TORCH_ACTIVATIONS[activation](x + bias), P)


def fused(x, residual, bias, activation):
    return seeddrop.dropout_add(x, residual, P, bias=bias, activation=activation)


def backward_fn(forward, inputs, grad):
    """A callable running only the backward of forward(*inputs) (retained graph); None if
    the graph cannot be reused (then backward = (forward + backward) - forward)."""
    out = forward(*inputs)
    try:
        torch.autograd.grad(out, inputs, grad, retain_graph=True)
        torch.autograd.grad(out, inputs, grad, retain_graph=True)
    except RuntimeError:
        return None
    return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)


def time_impl(name, forward, x, residual, bias, grad, timer):
    """{name_fwd_ms, name_bwd_ms}: the training forward (inputs require grad, the graph is
    built and dropped), and the backward alone."""
    inputs = [t.detach().requires_grad_() for t in (x, residual, bias)]
    fwd = timer(lambda: forward(*inputs))
    bwd_only = backward_fn(forward, inputs, grad)
    if bwd_only is not None:
        bwd = timer(bwd_only)
    else:
        bwd = timer(lambda: torch.autograd.grad(forward(*inputs), inputs, grad)) - fwd
    return {f"{name}_fwd_ms": fwd, f"{name}_bwd_ms": bwd}


def compiled_forwards(dynamic: bool):
    """One torch.compile'd unfused expression per activation (static shapes unless dynamic:
    then one compiled graph serves both shapes, halving the compile time)."""
    for name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    out = {}
    for act in ACTIVATIONS:
        out[act] = torch.compile(lambda x, r, b, act=act: unfused(x, r, b, act), dynamic=dynamic)
    return out


def run_case(shape, dtype, activation, device, timer, compiled):
    x = torch.randn(shape, device=device, dtype=dtype)
    residual = torch.randn_like(x)
    bias = torch.randn(shape[-1], device=device, dtype=dtype)
    grad = torch.randn_like(x)
    copy_out = torch.empty_like(x)
    res = {"copy_ms": timer(lambda: copy_out.copy_(x))}
    del copy_out
    res.update(time_impl("seeddrop", lambda a, b, c: fused(a, b, c, activation), x, residual, bias, grad, timer))
    res.update(time_impl("eager", lambda a, b, c: unfused(a, b, c, activation), x, residual, bias, grad, timer))
    if compiled is not None:
        res.update(time_impl("compiled", compiled[activation], x, residual, bias, grad, timer))
    fwd_floor, bwd_floor = floors(activation)
    res["fwd_floor_ms"] = fwd_floor * res["copy_ms"]
    res["bwd_floor_ms"] = bwd_floor * res["copy_ms"]
    return res


# --------------------------------------------------------------------------
# transformer MLP sub-block: h + dropout(W2 gelu(W1 h + b1) + b2)
# --------------------------------------------------------------------------
def mlp_params(d, hidden, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)

    def param(*shape, scale):
        return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype).requires_grad_()

    return {"W1": param(hidden, d, scale=d ** -0.5), "b1": param(hidden, scale=0.02),
            "W2": param(d, hidden, scale=hidden ** -0.5), "b2": param(d, scale=0.02)}


def mlp_torch(h, w, dropout):
    return h + dropout(F.linear(F.gelu(F.linear(h, w["W1"], w["b1"])), w["W2"], w["b2"]))


def mlp_seeddrop(h, w, _):
    return seeddrop.dropout_add(F.linear(F.gelu(F.linear(h, w["W1"], w["b1"])), w["W2"]), h, P, bias=w["b2"])


def profile_step(step, device: str) -> str:
    """torch.profiler table of 5 steps: where the time of one variant goes (kernels on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=15)


def mlp_no_dropout(h, w, _):
    return h + F.linear(F.gelu(F.linear(h, w["W1"], w["b1"])), w["W2"], w["b2"])


MLP_BLOCKS = (("nn.Dropout", mlp_torch), ("seeddrop.dropout_add", mlp_seeddrop), ("no dropout", mlp_no_dropout))


def run_mlp(tokens, d, hidden, device, dtype, timer, profile=False, rounds=5):
    """Times the MLP sub-block step with each dropout (and without dropout, the floor a dropout
    can reach), in `rounds` interleaved passes over the variants (step time: the median over the
    passes; the step is host bound on some machines and their speed drifts). Rows: step time,
    the spread over the passes, peak memory (and, with profile, a torch.profiler table)."""
    w = mlp_params(d, hidden, device, dtype)
    h = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, d, device=device, dtype=dtype)
    dropout = torch.nn.Dropout(P)
    leaves = [h, *w.values()]

    def make_step(block):
        def step():
            for t in leaves:
                t.grad = None
            block(h, w, dropout).backward(grad)

        step()  # warm-up: Triton compiles, cuBLAS picks its kernels
        return step

    steps = {name: make_step(block) for name, block in MLP_BLOCKS}
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name].append(timer(step))
    rows = []
    for name, step in steps.items():
        table = profile_step(step, device) if profile else None
        for t in leaves:
            t.grad = None
        peak_mib = base_mib = float("nan")
        if device == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            peak_mib, base_mib = peak / 2**20, (peak - base) / 2**20
            for t in leaves:
                t.grad = None
        rows.append({"impl": name, "step_ms": statistics.median(times[name]), "min_ms": min(times[name]),
                     "max_ms": max(times[name]), "peak_mib": peak_mib, "peak_above_inputs_mib": base_mib})
        if table is not None:
            rows[-1]["profile"] = table
    return rows


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
def _rel(r, key, floor_key):
    return f"{r[key]:.3f} ({r[key] / r[floor_key]:.2f})" if key in r else "-"


def main_table(rows) -> str:
    lines = ["| shape | dtype | act | copy ms | fwd floor ms | seeddrop fwd (x floor) | eager fwd | compiled fwd "
             "| bwd floor ms | seeddrop bwd (x floor) | eager bwd | compiled bwd |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['dtype']} | {r['act']} | {r['copy_ms']:.3f} | {r['fwd_floor_ms']:.3f} | "
            f"{_rel(r, 'seeddrop_fwd_ms', 'fwd_floor_ms')} | {_rel(r, 'eager_fwd_ms', 'fwd_floor_ms')} | "
            f"{_rel(r, 'compiled_fwd_ms', 'fwd_floor_ms')} | {r['bwd_floor_ms']:.3f} | "
            f"{_rel(r, 'seeddrop_bwd_ms', 'bwd_floor_ms')} | {_rel(r, 'eager_bwd_ms', 'bwd_floor_ms')} | "
            f"{_rel(r, 'compiled_bwd_ms', 'bwd_floor_ms')} |")
    return "\n".join(lines)


def mlp_table(rows, desc) -> str:
    lines = [f"MLP sub-block forward+backward ({desc})", "",
             "| impl | step ms (median of the rounds) | min-max over rounds | peak MiB | peak above inputs MiB |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['step_ms']:.3f} | {r['min_ms']:.3f}-{r['max_ms']:.3f} | {r['peak_mib']:.1f} | "
                     f"{r['peak_above_inputs_mib']:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--quick", action="store_true", help="only the [16384, 4096] shape")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--compile-dynamic", action="store_true", help="torch.compile with dynamic shapes")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of every code path (no GPU)")
    ap.add_argument("--profile-mlp", action="store_true",
                    help="also write a torch.profiler table of the MLP sub-block to DIR/dropout_add_mlp_profile.txt")
    ap.add_argument("--mlp-only", action="store_true", help="only the MLP sub-block")
    ap.add_argument("--mlp-rounds", type=int, default=5,
                    help="interleaved passes over the MLP variants (default 5; step time = median)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    if args.smoke:
        device, shapes, mlp = "cpu", [(64, 48), (16, 13)], (2 * 16, 32, 128)
        compiled = None
    else:
        if not torch.cuda.is_available():
            raise SystemExit("needs a CUDA GPU (use --smoke for a CPU check of the script)")
        device, shapes, mlp = "cuda", SHAPES[:1] if args.quick else SHAPES, (8 * 1024, 768, 3072)
        compiled = None if args.no_compile else compiled_forwards(args.compile_dynamic)
    timer = make_timer(device)

    rows = []
    for shape in [] if args.mlp_only else shapes:
        for dname, dtype in DTYPES.items():
            for act in ACTIVATIONS:
                r = run_case(shape, dtype, act, device, timer, compiled)
                rows.append({"shape": "x".join(map(str, shape)), "dtype": dname, "act": act or "none", **r})
                print(f"[{time.time() - started:.0f} s] {rows[-1]['shape']} {dname} {act}: " + ", ".join(
                    f"{k}={v:.3f}" for k, v in r.items()), flush=True)
                if device == "cuda":
                    torch.cuda.empty_cache()
    mlp_rows = run_mlp(*mlp, device, torch.bfloat16 if device == "cuda" else torch.float32, timer, args.profile_mlp,
                       rounds=max(1, args.mlp_rounds))
    if args.profile_mlp:
        with open(os.path.join(args.out, "dropout_add_mlp_profile.txt"), "w") as f:
            f.writelines(f"## {r['impl']}\n\n{r.pop('profile')}\n\n" for r in mlp_rows)
    mlp_desc = f"tokens={mlp[0]}, d={mlp[1]}, hidden={mlp[2]}, p={P}, " + ("bf16" if device == "cuda" else "fp32 CPU")

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(args.out, "dropout_add.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, "dropout_add_mlp.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(mlp_rows[0]))
        w.writeheader()
        w.writerows(mlp_rows)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU (smoke run)"
    header = (f"{gpu}, torch {torch.__version__}, p={P}, bias on, median ms (x memory floor: forward 1.5 x copy; "
              f"backward 1.0 x copy without activation, 1.5 x with one)")
    text = f"{header}\n\n{main_table(rows)}\n\n{mlp_table(mlp_rows, mlp_desc)}\n"
    with open(os.path.join(args.out, "dropout_add.md"), "w") as f:
        f.write(text)
    print(f"\ntotal {time.time() - started:.0f} s\n")
    print(text)


if __name__ == "__main__":
    main()
