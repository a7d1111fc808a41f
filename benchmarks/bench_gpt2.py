"""End-to-end GPT-2-small-shaped training step: nn.Dropout vs seeddrop.

12 layers, d=768, 12 heads, T=1024, batch 8, bf16 weights, AdamW, dropout 0.1 at the usual
three places (embeddings, attention output before the residual add, MLP output before the
residual add), attention through SDPA. Variants: native nn.Dropout; the same model after
seeddrop.replace_dropout; and a variant whose two residual dropouts are
seeddrop.dropout_add. Each in eager mode and under torch.compile. Reports median step time
and peak memory.

python benchmarks/bench_gpt2.py --out DIR [--layers 12] [--steps 20] [--no-compile] [--no-eager] [--variants ...]
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

import seeddrop


class Block(nn.Module):
    def __init__(self, d, heads, p, fused):
        super().__init__()
        self.heads, self.fused, self.p = heads, fused, p
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop_attn, self.drop_mlp = nn.Dropout(p), nn.Dropout(p)

    def forward(self, h):
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        if self.fused:
            h = seeddrop.dropout_add(F.linear(y, self.proj.weight), h, self.p, self.training, bias=self.proj.bias)
            m = F.gelu(self.fc(self.ln2(h)), approximate="tanh")
            return seeddrop.dropout_add(F.linear(m, self.fc_out.weight), h, self.p, self.training, bias=self.fc_out.bias)
        h = h + self.drop_attn(self.proj(y))
        return h + self.drop_mlp(self.fc_out(F.gelu(self.fc(self.ln2(h)), approximate="tanh")))


class GPT(nn.Module):
    def __init__(self, layers=12, d=768, heads=12, vocab=50304, ctx=1024, p=0.1, fused=False):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.drop = nn.Dropout(p)
        self.blocks = nn.ModuleList(Block(d, heads, p, fused) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx, targets):
        h = self.drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device)))
        for block in self.blocks:
            h = block(h)
        logits = self.head(self.ln(h))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def setup(variant, layers, batch):
    """(model, optimizer, tokens, targets) of a fresh model, seeded alike for every variant:
    nn.Dropout, seeddrop.Dropout (replace_dropout), seeddrop.dropout_add (also at the
    residuals) or "no dropout" (nn.Identity for every dropout module: the floor)."""
    torch.manual_seed(0)
    model = GPT(layers=layers, fused=variant == "seeddrop.dropout_add").cuda().to(torch.bfloat16)
    if variant == "no dropout":
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Dropout):
                    setattr(module, name, nn.Identity())
    elif variant != "nn.Dropout":
        seeddrop.replace_dropout(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    idx = torch.randint(0, 50304, (batch, 1024), device="cuda")
    tgt = torch.randint(0, 50304, (batch, 1024), device="cuda")
    return model, opt, idx, tgt


def training_step(variant, compile_model, args):
    """A function running one training step of a fresh model with the given dropout
    variant; returns the loss."""
    model, opt, idx, tgt = setup(variant, args.layers, args.batch)
    if compile_model:
        fwd = torch.compile(model, mode="reduce-overhead" if compile_model == "reduce-overhead" else None)
    else:
        fwd = model

    graphs = compile_model == "reduce-overhead"

    def step():
        if graphs:  # a new step: the previous replay's outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        loss = fwd(idx, tgt)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach().clone() if graphs else loss

    return step


def measure(variant, compile_model, args):
    step = training_step(variant, compile_model, args)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times, host = [], []
    for _ in range(args.steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        loss = step()
        end.record()
        host.append((time.perf_counter() - t0) * 1e3)  # the host's time to enqueue the step
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = torch.cuda.max_memory_allocated() / 2**20
    times.sort()
    host.sort()
    del step
    torch.cuda.empty_cache()
    return times[len(times) // 2], host[len(host) // 2], peak, loss.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--reduce-overhead", action="store_true",
                    help="also torch.compile(mode='reduce-overhead') (CUDA graphs)")
    ap.add_argument("--variants", nargs="*", default=["nn.Dropout", "seeddrop.Dropout", "seeddrop.dropout_add"])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    variants = args.variants
    lines = [f"GPT-2-small-shaped step ({args.layers} layers, d=768, T=1024, batch {args.batch}, bf16, AdamW), "
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}", "",
             "| variant | mode | step ms (median) | host enqueue ms (median) | peak memory MiB | loss |",
             "|---|---|---|---|---|---|"]
    modes = ([] if args.no_eager else [False]) + ([] if args.no_compile else [True])
    modes += ["reduce-overhead"] if args.reduce_overhead else []
    for compile_model in modes:
        for variant in variants:
            t0 = time.time()
            ms, host_ms, peak, loss = measure(variant, compile_model, args)
            mode = {False: "eager", True: "torch.compile"}.get(compile_model, f"torch.compile {compile_model}")
            lines.append(f"| {variant} | {mode} | {ms:.2f} | {host_ms:.2f} | {peak:.0f} | {loss:.3f} |")
            skips = torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0)
            print(lines[-1], f"({time.time() - t0:.0f} s, cudagraph skips so far: {skips})", flush=True)
    table = "\n".join(lines)
    with open(os.path.join(args.out, "gpt2.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
