"""Host cost of the op registrations on any machine (CPU included): the dropout kernel is
replaced by torch.empty_like, so what is timed is the Python and dispatch path only.
Run once per registration, alternating:

for r in define_op custom_op define_op custom_op; do
    SEEDDROP_OP_REGISTRATION=$r python benchmarks/registration_ab.py; done
"""
import torch

import seeddrop
from seeddrop import _library
from seeddrop.ops import dropout as dropout_ops

from bench_overhead import min_per_call_us  # this folder: run as python benchmarks/registration_ab.py


def main():
    dropout_ops.apply_dropout = lambda x, p, seed, shared, per_row, out=None: torch.empty_like(x)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.randn(64, device=device)
    xr = x.clone().requires_grad_()
    compiled = torch.compile(lambda t: seeddrop.dropout(t, 0.1), fullgraph=True)
    op = torch.ops.seeddrop.dropout.default
    seed = torch.tensor(3, device=device)
    no_grad, fwd_bwd, op_call = min_per_call_us(
        [lambda: compiled(x), lambda: compiled(xr).sum().backward(), lambda: op(x, seed, 0, 0.1, [], False)])
    print(f"{_library.REGISTRATION} on {device}: compiled call, no grad {no_grad:.1f} us; "
          f"compiled fwd+bwd {fwd_bwd:.1f} us; op call, no grad {op_call:.1f} us")


if __name__ == "__main__":
    main()
