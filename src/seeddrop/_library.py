"""The ops torch.compile sees, registered with torch.library at a low host cost.

`torch.library.custom_op` wraps an op in several Python layers (a generic autograd kernel
that redispatches even without grad, a dynamo-disable wrapper, aliasing checks): about
20 us per call on a CPU host, paid for every seeddrop call inside a compiled graph. Here an
op is defined from its schema with one backend kernel for every device
(CompositeExplicitAutograd), a fake kernel for tracing, and an Autograd kernel that goes
straight to the backend when no gradient is needed; with a gradient it applies an
autograd.Function whose forward runs the op below autograd (so tracers record the op)
and whose backward is the given function.

SEEDDROP_OP_REGISTRATION=custom_op (read at import) registers the same ops with
`torch.library.custom_op` instead, to compare the two registrations' host cost on one
machine (benchmarks); the default is this module's lean registration.
"""
from __future__ import annotations

import os

import torch

from ._common import lean_apply

_LIB = torch.library.Library("seeddrop", "DEF")  # noqa: TOR901 (ops are defined below, by name)
REGISTRATION = os.environ.get("SEEDDROP_OP_REGISTRATION", "define_op")
if REGISTRATION not in ("define_op", "custom_op"):
    raise ValueError(f"SEEDDROP_OP_REGISTRATION must be 'define_op' or 'custom_op', but got {REGISTRATION!r}")


# name -> the callable that applies op `name` with autograd when a gradient is needed (an
# autograd.Function whose forward runs the op below autograd): the Python side of the C++
# host path's Autograd kernels (csrc/fast_dropout.cpp) calls it for those calls.
AUTOGRAD_APPLY = {}


def _autograd_apply(name: str, op, setup_context, backward):
    """apply(*args) of an autograd.Function: forward runs `op` below autograd (so tracers
    record the op) and calls setup_context; backward is the given function (or raises)."""
    below_autograd = torch._C._AutoDispatchBelowAutograd
    if backward is None:
        def backward(ctx, *grads):
            raise RuntimeError(f"seeddrop::{name} is not differentiable (no derivative is registered)")

    class OpFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with below_autograd():
                output = op(*args)
            if setup_context is not None:
                setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    OpFunction.__name__ = OpFunction.__qualname__ = f"{name}_function"
    return lean_apply(OpFunction)


def define_op(name: str, schema: str, impl, fake, setup_context=None, backward=None):
    """Define seeddrop::name(schema) and return the callable op (its default overload).

    impl(*args) computes the op on real tensors; fake(*args) returns empty outputs of the
    right metadata; setup_context(ctx, inputs, output) saves what backward(ctx, *grads)
    needs; backward returns one gradient (or None) per op argument. Without backward the
    op is not differentiable: it runs, and an error is raised when a backward pass
    reaches it (as for custom_op).
    """
    if REGISTRATION == "custom_op":
        op = _define_custom_op(name, schema, impl, fake, setup_context, backward)
        AUTOGRAD_APPLY[name] = _autograd_apply(name, op, setup_context, backward)
        return op
    _LIB.define(f"{name}{schema}", tags=(torch.Tag.pt2_compliant_tag,))
    _LIB.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"seeddrop::{name}", fake, lib=_LIB)
    op = getattr(torch.ops.seeddrop, name).default
    below_autograd = torch._C._AutoDispatchBelowAutograd
    apply = AUTOGRAD_APPLY[name] = _autograd_apply(name, op, setup_context, backward)

    def autograd_kernel(*args):
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            return apply(*args)
        with below_autograd():
            return op(*args)

    _LIB.impl(name, autograd_kernel, "Autograd")
    return op


def _define_custom_op(name, schema, impl, fake, setup_context, backward):
    """The same op through torch.library.custom_op (SEEDDROP_OP_REGISTRATION=custom_op)."""
    op = torch.library.custom_op(f"seeddrop::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    return getattr(torch.ops.seeddrop, name).default
