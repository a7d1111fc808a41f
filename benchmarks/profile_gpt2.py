"""Where the time of one GPT-2-small-shaped training step goes, per dropout variant and mode:
torch.profiler tables (CUDA kernels by total time, and host ops), GPU busy time vs step time.

python benchmarks/profile_gpt2.py --out DIR [--layers 12] [--no-compile] [--variants ...]
Writes DIR/gpt2_profile.txt; prints one summary line per variant and mode.
"""
import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from bench_gpt2 import training_step  # this folder: run as python benchmarks/profile_gpt2.py

VARIANTS = ["nn.Dropout", "seeddrop.Dropout", "seeddrop.dropout_add"]


def profile_variant(variant, compile_model, args):
    step = training_step(variant, compile_model, args)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
    step_ms = start.elapsed_time(end)
    events = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    n_kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    gpu_table = events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
    cpu_table = events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=70)
    del step
    torch.cuda.empty_cache()
    mode = "compile" if compile_model else "eager"
    summary = (f"{variant:22s} {mode:8s} step {step_ms:7.2f} ms (profiled)  kernels {kernel_us / 1e3:7.2f} ms "
               f"in {n_kernels} launches")
    return summary, f"## {variant}, {mode}\n{summary}\n\n{gpu_table}\n{cpu_table}\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--variants", nargs="*", default=VARIANTS)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    summaries, report = [], []
    modes = ([] if args.no_eager else [False]) + ([] if args.no_compile else [True])
    for compile_model in modes:
        for variant in args.variants:
            summary, text = profile_variant(variant, compile_model, args)
            print(summary, flush=True)
            summaries.append(summary)
            report.append(text)
    with open(os.path.join(args.out, "gpt2_profile.txt"), "w") as f:
        f.write("\n".join(summaries) + "\n\n" + "\n".join(report))


if __name__ == "__main__":
    main()
