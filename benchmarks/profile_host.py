"""Where the host (Python) time of a training step goes: cProfile of steps queued back to
back, per dropout variant, for the transformer MLP sub-block (eager) and a GPT-2-shaped
model (eager and torch.compile; fewer layers than bench_gpt2 to keep compiling short).

torch.profiler only times the ops it records; the Python between them (our wrappers,
Triton's launcher, Inductor's generated wrapper) shows up here.

python benchmarks/profile_host.py --out DIR [--layers 2] [--steps 50]
Writes DIR/host_profile.txt; prints one line per case: wall ms per step when steps are
queued without syncs (max of host and GPU time), the CUDA-event span of those queued steps
(about the wall time by construction: not GPU busy time), and the event span of one step
run alone between syncs.
"""
import argparse
import cProfile
import io
import os
import pstats
import time

import torch

import seeddrop
import bench_dropout_add as bda  # this folder: run as python benchmarks/profile_host.py
from bench_gpt2 import training_step


def queued_ms(step, n):
    """(wall ms per step with n steps queued back to back, CUDA-event span per step)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        step()
    end.record()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3 / n, start.elapsed_time(end) / n


def idle_gpu_ms(step, n):
    """Event span of one step run alone (synced before and after): its kernel time plus the
    gaps the host leaves inside it."""
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def profile_case(name, step, n, rows):
    for _ in range(5):
        step()
    wall, gpu = queued_ms(step, n)
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    prof.enable()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(rows)
    line = f"{name:45s} queued {wall:7.3f} ms/step (event span {gpu:7.3f} ms/step)"
    print(line, flush=True)
    return line, f"## {name}\n{line}\n\n{buf.getvalue()}\n"


def mlp_step(impl):
    w = bda.mlp_params(768, 3072, "cuda", torch.bfloat16)
    h = torch.randn(8 * 1024, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(h)
    dropout = torch.nn.Dropout(bda.P)
    leaves = [h, *w.values()]
    block = bda.mlp_torch if impl == "nn.Dropout" else bda.mlp_seeddrop

    def step():
        for t in leaves:
            t.grad = None
        block(h, w, dropout).backward(grad)

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--calls", type=int, default=100, help="calls per step of the compiled-function cases")
    ap.add_argument("--no-gpt2", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    x = torch.randn(4096, device="cuda")
    compiled = {"F.dropout": torch.compile(lambda t: torch.nn.functional.dropout(t, 0.1), fullgraph=True),
                "seeddrop.dropout": torch.compile(lambda t: seeddrop.dropout(t, 0.1), fullgraph=True)}
    cases = [(f"torch.compile'd {name}, 4096 elements, x{args.calls} calls",
              lambda fn=fn: lambda: [fn(x) for _ in range(args.calls)]) for name, fn in compiled.items()]
    cases += [(f"MLP sub-block, {impl}", lambda impl=impl: mlp_step(impl)) for impl in ("nn.Dropout", "seeddrop.dropout_add")]
    if not args.no_gpt2:
        for compiled in (False, True):
            for variant in ("nn.Dropout", "seeddrop.Dropout"):
                mode = "torch.compile" if compiled else "eager"
                cases.append((f"GPT-2 {args.layers} layers, {variant}, {mode}",
                              lambda v=variant, c=compiled: training_step(v, c, args)))
    lines, report = [], []
    for name, make in cases:
        step = make()
        line, text = profile_case(name, step, args.steps, args.rows)
        lines.append(line + f"  alone: event span {idle_gpu_ms(step, 11):.3f} ms/step")
        report.append(text)
        del step
        torch.cuda.empty_cache()
    header = f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n\n" + "\n".join(lines) + "\n\n"
    with open(os.path.join(args.out, "host_profile.txt"), "w") as f:
        f.write(header + "\n".join(report))
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
