"""Where the host time of one seeddrop.dropout call goes (GPU, 4096 elements): each
layer of the call path timed alone, wall-clock us per call (best of 3 x 3000 calls).

python benchmarks/overhead_breakdown.py
"""
import torch
import torch.nn.functional as F

import seeddrop
from seeddrop._common import Seed, draw_seed
from seeddrop.ops import dropout as dmod

from bench_overhead import per_call_us  # this folder: run as python benchmarks/overhead_breakdown.py


def main():
    x = torch.randn(4096, device="cuda")
    out = torch.empty_like(x)
    xr = x.clone().requires_grad_()
    g = torch.randn_like(x)
    seed = Seed(None, 5)
    dmod.launch(x, out, (), seed, 0.1, False)
    key = next(iter(dmod._KERNEL.compiled))
    c_launch, head = dmod._KERNEL.compiled[key]
    cfg = next(iter(dmod._CONFIGS.values()))
    v = cfg.view
    args = (x, out, None, 5, 0, v.P, v.S, v.Q, cfg.s_per_program, *v.x_strides, *v.out_strides, 1,
            6554, *dmod.scale_halves(0.1), False, False, True, False, False, *cfg.constexprs[1:])
    stream = torch._C._cuda_getCurrentRawStream(0)
    y_native = F.dropout(xr, 0.1)
    y_ours = seeddrop.dropout(xr, 0.1)
    x3 = torch.randn(1, 64, 768, device="cuda", requires_grad=True)
    g3 = torch.randn_like(x3)
    y3 = seeddrop.dropout(x3, 0.1, shared_dims=(0,))
    m3 = F.dropout(torch.ones(1, 64, 768, device="cuda"), 0.1)
    y3c = x3 * m3
    rows = [
        ("torch.empty_like", lambda: torch.empty_like(x)),
        ("draw_seed", lambda: draw_seed(x.device)),
        ("Triton's C launcher, raw pointers", lambda: c_launch(cfg.grid, 1, 1, stream, *head, x.data_ptr(), out.data_ptr(), *args[2:])),
        ("FastKernel.launch", lambda: dmod._KERNEL.launch(key[0], cfg.grid, args, cfg.num_warps)),
        ("dmod.launch", lambda: dmod.launch(x, out, (), seed, 0.1, False)),
        ("apply_dropout", lambda: dmod.apply_dropout(x, 0.1, seed, (), False)),
        ("seeddrop.dropout seed=5", lambda: seeddrop.dropout(x, 0.1, seed=5)),
        ("seeddrop.dropout", lambda: seeddrop.dropout(x, 0.1)),
        ("F.dropout", lambda: F.dropout(x, 0.1)),
        ("x.mul(0.5)", lambda: x.mul(0.5)),
        ("F.dropout requires_grad", lambda: F.dropout(xr, 0.1)),
        ("seeddrop.dropout requires_grad", lambda: seeddrop.dropout(xr, 0.1)),
        ("backward only: F.dropout", lambda: torch.autograd.grad(y_native, xr, g, retain_graph=True)),
        ("backward only: seeddrop", lambda: torch.autograd.grad(y_ours, xr, g, retain_graph=True)),
        ("variational N=1 backward: conventional", lambda: torch.autograd.grad(y3c, x3, g3, retain_graph=True)),
        ("variational N=1 backward: seeddrop", lambda: torch.autograd.grad(y3, x3, g3, retain_graph=True)),
    ]
    print("| path (4096 elements) | us/call |\n|---|---|")
    for name, fn in rows:
        print(f"| {name} | {per_call_us(fn, n=3000):.1f} |", flush=True)


if __name__ == "__main__":
    main()
