"""Where an eager GPT-2-small-shaped step (bench_gpt2.py's model) spends its time, per phase.

For each variant, CUDA events split a step into forward, backward and optimizer, and the
host's own time for each phase is taken beside them; the variants run in turns (rounds), so
host-speed drift hits all of them alike ("no dropout": nn.Identity in place of every dropout
module, the floor). A phase whose GPU time is its host time plus a short tail is host bound:
the GPU waited for the host there.

python benchmarks/gpt2_phases.py [--rounds 3] [--steps 10] [--variants ...]
"""
import argparse
import statistics
import time

import torch

from bench_gpt2 import setup  # this folder (python benchmarks/gpt2_phases.py puts it on sys.path)

PHASES = ("forward", "backward", "optimizer")


def make_step(variant, batch):
    model, opt, idx, tgt = setup(variant, 12, batch)

    def step():
        """(GPU ms per phase, host ms per phase) of one step."""
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(PHASES) + 1)]
        host = [time.perf_counter()]
        events[0].record()
        loss = model(idx, tgt)
        events[1].record()
        host.append(time.perf_counter())
        loss.backward()
        events[2].record()
        host.append(time.perf_counter())
        opt.step()
        opt.zero_grad(set_to_none=True)
        events[3].record()
        host.append(time.perf_counter())
        torch.cuda.synchronize()
        gpu = [events[i].elapsed_time(events[i + 1]) for i in range(len(PHASES))]
        return gpu, [(host[i + 1] - host[i]) * 1e3 for i in range(len(PHASES))]

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variants", nargs="*",
                    default=["nn.Dropout", "seeddrop.Dropout", "seeddrop.dropout_add", "no dropout"])
    args = ap.parse_args()
    steps = {v: make_step(v, args.batch) for v in args.variants}
    samples = {v: [] for v in args.variants}
    for v, step in steps.items():  # warm-up (compiles our kernels once)
        for _ in range(3):
            step()
    for _ in range(args.rounds):
        for v, step in steps.items():
            samples[v] += [step() for _ in range(args.steps)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.rounds} rounds x {args.steps} steps, "
          "medians in ms (GPU time between events / host time of the phase)\n")
    print("| variant | step GPU | " + " | ".join(f"{p} GPU / host" for p in PHASES) + " |")
    print("|---|---:|" + "---:|" * len(PHASES))
    for v, rows in samples.items():
        step_gpu = statistics.median(sum(g) for g, _ in rows)
        cells = [f"{statistics.median(g[i] for g, _ in rows):.2f} / {statistics.median(h[i] for _, h in rows):.2f}"
                 for i in range(len(PHASES))]
        print(f"| {v} | {step_gpu:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
