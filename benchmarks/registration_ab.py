"""Host cost of the op registrations on any machine (CPU included): the dropout kernel is
replaced by torch.empty_like, so what is timed is the Python and dispatch path only.
Run once per registration, alternating:

for r in define_op custom_op define_op custom_op; do
    SEEDDROP_OP_REGISTRATION=$r python benchmarks/registration_ab.py; done
"""
import time

import torch

import seeddrop
from seeddrop import _library
from seeddrop.ops import dropout as dropout_ops


def best_us(fn, n=20000, rounds=5):
    for _ in range(300):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main():
    dropout_ops.apply_dropout = lambda x, p, seed, shared, per_row, out=None: torch.empty_like(x)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(64, device=device)
    xr = x.clone().requires_grad_()
    compiled = torch.compile(lambda t: seeddrop.dropout(t, 0.1), fullgraph=True)
    op = torch.ops.seeddrop.dropout.default
    seed = torch.tensor(3, device=device)
    print(f"{_library.REGISTRATION} on {device}: compiled call, no grad {best_us(lambda: compiled(x)):.1f} us; "
          f"compiled fwd+bwd {best_us(lambda: compiled(xr).sum().backward(), n=5000):.1f} us; "
          f"op call, no grad {best_us(lambda: op(x, seed, 0, 0.1, [], False)):.1f} us")


if __name__ == "__main__":
    main()
