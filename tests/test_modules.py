"""seeddrop.Dropout and seeddrop.VariationalDropout (src/seeddrop/modules.py): drop-in
behaviour of torch.nn.Dropout, a fresh seed per training forward, no state."""
import copy

import pytest
import torch
from torch import nn

import seeddrop

from conftest import binomial_bound, np_threshold


def _kept_fraction_ok(kept: int, n: int, p: float) -> bool:
    """|kept - n q| <= 6 sqrt(n q (1 - q)) for the Binomial(n, q) count of kept elements."""
    q = 1.0 - np_threshold(p) / 65536
    return abs(kept - n * q) <= binomial_bound(n, q)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------
def test_dropout_constructor_and_repr_match_torch():
    for args, kwargs in (((), {}), ((0.2,), {}), ((), {"p": 0.7, "inplace": True}), ((0.5, False), {})):
        ours, ref = seeddrop.Dropout(*args, **kwargs), nn.Dropout(*args, **kwargs)
        assert isinstance(ours, nn.Module)
        assert (ours.p, ours.inplace) == (ref.p, ref.inplace)
        assert ours.extra_repr() == ref.extra_repr()
        assert repr(ours) == repr(ref)


def test_dropout_repr_matches_torch_for_int_p():
    """torch keeps p as given: nn.Dropout(0) prints 'p=0'."""
    for p in (0, 1):
        assert seeddrop.Dropout(p).extra_repr() == nn.Dropout(p).extra_repr()


@pytest.mark.parametrize("p", [-0.5, 1.5, 2])
def test_dropout_constructor_rejects_bad_p_like_torch(p):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        nn.Dropout(p)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        seeddrop.Dropout(p)


def test_dropout_train_eval():
    torch.manual_seed(0)
    m, ref = seeddrop.Dropout(0.4), nn.Dropout(0.4)
    assert m.training
    x = torch.randn(6, 50)
    y = m(x)
    assert y is not x and y.shape == x.shape
    scale = torch.tensor(1 / 0.6, dtype=torch.float32)
    assert bool(((y == 0) | (y == x * scale)).all())  # every element dropped or scaled
    m.eval(), ref.eval()
    assert not m.training
    assert m(x) is x and ref(x) is x
    m.train()
    assert m.training and not torch.equal(m(x), x)
    assert seeddrop.Dropout(0.0)(x) is x and nn.Dropout(0.0)(x) is x


def test_dropout_fresh_seed_per_forward_reproducible_with_manual_seed():
    m = seeddrop.Dropout(0.5)
    x = torch.randn(8, 257)
    torch.manual_seed(123)
    a, b = m(x), m(x)
    assert not torch.equal(a, b)  # 2056 elements at p = 0.5: same mask has probability 2**-2056
    torch.manual_seed(123)
    assert torch.equal(m(x), a) and torch.equal(m(x), b)
    # the module is the functional op with a seed drawn from torch's generator
    torch.manual_seed(123)
    assert torch.equal(seeddrop.dropout(x, 0.5), a)
    torch.manual_seed(124)
    assert not torch.equal(m(x), a)


def test_dropout_keep_fraction():
    torch.manual_seed(5)
    n = 20_000
    for p in (0.1, 0.5, 0.8):
        kept = int((seeddrop.Dropout(p)(torch.ones(n)) != 0).sum())
        assert _kept_fraction_ok(kept, n, p), (p, kept)


def test_dropout_inplace_and_backward():
    torch.manual_seed(6)
    m = seeddrop.Dropout(0.3, inplace=True)
    x = torch.randn(5, 40)
    before = x.clone()
    y = m(x)
    assert y is x
    assert bool(((x == 0) | (x == before * torch.tensor(1 / 0.7))).all())
    # backward uses the forward's mask (x = ones: grad of sum == y)
    leaf = torch.ones(5, 40, requires_grad=True)
    y = seeddrop.Dropout(0.3)(leaf)
    torch.rand(10)  # generator moves on before backward
    y.sum().backward()
    assert torch.equal(leaf.grad, y.detach())


def test_dropout_has_no_state():
    m = seeddrop.Dropout(0.3)
    assert m.state_dict() == {} and list(m.parameters()) == [] and list(m.buffers()) == []
    m(torch.randn(3, 4))
    assert m.state_dict() == {} and list(m.buffers()) == []
    m2 = copy.deepcopy(m)
    assert m2.p == 0.3 and m2.extra_repr() == m.extra_repr()


def test_dropout_in_sequential_matches_nn_shapes_and_modes():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Linear(8, 16), seeddrop.Dropout(0.5), nn.Linear(16, 2))
    x = torch.randn(4, 8)
    net.eval()
    ref = nn.Sequential(net[0], nn.Dropout(0.5), net[2]).eval()
    assert torch.equal(net(x), ref(x))
    net.train()
    out = net(x)
    out.sum().backward()
    assert net[0].weight.grad is not None and out.shape == (4, 2)


# ---------------------------------------------------------------------------
# VariationalDropout
# ---------------------------------------------------------------------------
def test_variational_defaults_and_repr():
    m = seeddrop.VariationalDropout()
    assert isinstance(m, nn.Module)
    assert (m.p, tuple(m.shared_dims), m.inplace) == (0.5, (1,), False)
    r = m.extra_repr()
    assert "p=0.5" in r and "(1,)" in r
    assert tuple(seeddrop.VariationalDropout(0.2, shared_dims=0).shared_dims) == (0,)
    with pytest.raises(ValueError, match="dropout probability"):
        seeddrop.VariationalDropout(1.5)


def test_variational_default_shares_over_time():
    """[batch, time, features]: one mask per (batch, feature), equal across time steps."""
    torch.manual_seed(8)
    m = seeddrop.VariationalDropout(0.4)
    x = torch.ones(6, 3, 700)
    torch.manual_seed(9)
    y = m(x)
    assert torch.equal(y, y[:, :1].expand_as(y))
    kept = int((y[:, 0] != 0).sum())
    assert _kept_fraction_ok(kept, 6 * 700, 0.4), kept
    torch.manual_seed(9)
    assert torch.equal(seeddrop.dropout(x, 0.4, shared_dims=(1,)), y)
    torch.manual_seed(9)
    assert torch.equal(m(x), y)
    assert not torch.equal(m(x), y)  # next forward: a fresh seed
    xr = torch.randn(6, 3, 700)
    torch.manual_seed(9)
    yr = m(xr)
    assert bool(((yr == 0) | (yr == xr * torch.tensor(1 / 0.6))).all())
    assert torch.equal(yr == 0, (y == 0) | (xr == 0))


def test_variational_locked_dropout_time_major():
    """shared_dims=(0,): AWD-LSTM's LockedDropout for [time, batch, features]."""
    torch.manual_seed(10)
    m = seeddrop.VariationalDropout(0.25, shared_dims=(0,))
    x = torch.randn(4, 5, 64, requires_grad=True)
    y = m(x)
    mask = y.detach() != 0
    assert torch.equal(mask, mask[:1].expand_as(mask))
    y.sum().backward()
    assert torch.equal(x.grad != 0, mask)
    m.eval()
    assert m(x) is x


def test_variational_has_no_state():
    m = seeddrop.VariationalDropout(0.3, shared_dims=(0, 2))
    m(torch.randn(2, 3, 4))
    assert m.state_dict() == {} and list(m.parameters()) == [] and list(m.buffers()) == []


def test_variational_bad_dims_raise_at_forward():
    with pytest.raises(ValueError, match="shared_dims"):
        seeddrop.VariationalDropout(0.5, shared_dims=(3,))(torch.randn(2, 3, 4))
