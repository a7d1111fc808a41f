"""_library.define_op: the ops compiled graphs call (seeddrop::dropout, dropout_add,
dropout_add_backward, sparse_jl) against the eager paths."""
import os
import subprocess
import sys

import pytest
import torch

import seeddrop


def test_registered_ops_match_the_eager_path_and_differentiate():
    """The torch.library ops (what compiled graphs call) give eager's values and gradients;
    the backward-only op runs on inputs that require grad and refuses to be differentiated
    (instead of silently giving no gradient)."""
    x = torch.randn(5, 24, requires_grad=True)
    g = torch.randn(5, 24)
    y_op = torch.ops.seeddrop.dropout(x, None, 321, 0.4, [], False)
    y_eager = seeddrop.dropout(x, 0.4, seed=321)
    assert torch.equal(y_op, y_eager) and y_op.grad_fn is not None
    (g_op,) = torch.autograd.grad(y_op, x, g)
    (g_eager,) = torch.autograd.grad(y_eager, x, g)
    assert torch.equal(g_op, g_eager)
    with torch.no_grad():
        assert torch.equal(torch.ops.seeddrop.dropout(x, None, 321, 0.4, [], False), y_eager)
    grad_x, _ = torch.ops.seeddrop.dropout_add_backward(g.requires_grad_(), None, None, None, 1, 0.4, True, [],
                                                        False, 0, torch.float32, False)
    assert torch.equal(grad_x, seeddrop.dropout(g.detach(), 0.4, seed=1))
    with pytest.raises(RuntimeError, match="not differentiable|no autograd formula"):  # define_op | custom_op
        grad_x.sum().backward()


def test_registered_dropout_add_and_sparse_jl_ops_match_eager():
    x = torch.randn(6, 16, requires_grad=True)
    residual = torch.randn(6, 16, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    act = seeddrop.ops.dropout_add.check_activation("gelu")
    y_op = torch.ops.seeddrop.dropout_add(x, residual, bias, None, 9, 0.3, True, [], False, act)
    y_eager = seeddrop.dropout_add(x, residual, 0.3, bias=bias, activation="gelu", seed=9)
    assert torch.equal(y_op, y_eager)
    g = torch.randn_like(y_op)
    for a, b in zip(torch.autograd.grad(y_op, (x, residual, bias), g),
                    torch.autograd.grad(y_eager, (x, residual, bias), g)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    z_op = torch.ops.seeddrop.sparse_jl(x, None, 4, 8, 16, 0.25, True)
    z_eager = seeddrop.sparse_jl(x, 8, 4, density=0.25)
    assert torch.equal(z_op, z_eager)
    (gz_op,) = torch.autograd.grad(z_op.sum(), x)
    (gz_eager,) = torch.autograd.grad(z_eager.sum(), x)
    assert torch.equal(gz_op, gz_eager)


def test_custom_op_registration_switch():
    """SEEDDROP_OP_REGISTRATION=custom_op (for host-cost comparisons) defines the same ops."""
    code = (
        "import torch, seeddrop\n"
        "from seeddrop import _library\n"
        "assert _library.REGISTRATION == 'custom_op'\n"
        "x = torch.randn(40, requires_grad=True)\n"
        "y = torch.ops.seeddrop.dropout(x, None, 321, 0.4, [], False)\n"
        "assert torch.equal(y, seeddrop.dropout(x, 0.4, seed=321))\n"
        "(g,) = torch.autograd.grad(y.sum(), x)\n"
        "assert torch.equal(g, seeddrop.dropout(torch.ones(40), 0.4, seed=321))\n"
    )
    env = dict(os.environ, SEEDDROP_OP_REGISTRATION="custom_op")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    env["SEEDDROP_OP_REGISTRATION"] = "bogus"
    failed = subprocess.run([sys.executable, "-c", "import seeddrop"], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "SEEDDROP_OP_REGISTRATION must be" in failed.stderr
