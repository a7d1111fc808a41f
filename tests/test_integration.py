"""seeddrop inside PyTorch's machinery: torch.compile (no graph breaks), activation
checkpointing, model conversion. CPU parts; the CUDA-graph checks live in test_cuda.py."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import seeddrop
from seeddrop._common import TRITON_INTERPRET


def _model():
    return nn.Sequential(
        nn.Linear(16, 32), seeddrop.Dropout(0.3), nn.ReLU(),
        seeddrop.VariationalDropout(0.2, shared_dims=(0,)), nn.Linear(32, 8),
    )


def _loss_and_grads(model, x, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    y = model(x)
    y.square().sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(backend):
    if backend == "inductor" and TRITON_INTERPRET:
        pytest.skip("inductor is covered in the reference run; the interpreter run checks aot_eager")
    # Inductor replaces torch's RNG with its own unless told to keep it; seeds then match eager.
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        _check_compiled_matches_eager(backend)


def _check_compiled_matches_eager(backend):
    torch.manual_seed(0)
    model = _model()
    x = torch.randn(12, 16)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    y_eager, g_eager = _loss_and_grads(model, x, seed=7)
    y_comp, g_comp = _loss_and_grads(compiled, x, seed=7)
    assert torch.equal(y_eager, y_comp)
    for a, b in zip(g_eager, g_comp):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # Each call draws new masks.
    torch.manual_seed(8)
    assert not torch.equal(compiled(x), y_comp)


def test_compile_explicit_seeds_and_per_row():
    x = torch.randn(6, 40, requires_grad=True)
    seeds = torch.randint(-(2**63), 2**63 - 1, (6,))

    def f(t):
        return seeddrop.dropout(t, 0.4, seed=seeds) + seeddrop.dropout(t, 0.25, seed=1234, shared_dims=(0,))

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    y_eager, y_comp = f(x), compiled(x)
    assert torch.equal(y_eager, y_comp)
    g = torch.randn_like(y_eager)
    (ge,) = torch.autograd.grad(y_eager, x, g)
    (gc,) = torch.autograd.grad(y_comp, x, g)
    assert torch.equal(ge, gc)


def test_checkpoint_recomputation_reuses_the_seed():
    """Non-reentrant checkpointing without RNG-state preservation: the recomputed forward
    draws nothing new (the seed is an input of the op), so gradients equal no checkpointing."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16))
    x = torch.randn(10, 16, requires_grad=True)

    def forward(inp, seed):
        return seeddrop.dropout(block(inp), 0.5, seed=seed) + inp

    y_ref = forward(x, 99)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    y_ck = checkpoint(forward, x, 99, use_reentrant=False, preserve_rng_state=False)
    (g_ck,) = torch.autograd.grad(y_ck.square().sum(), x)
    assert torch.equal(y_ref, y_ck)
    assert torch.equal(g_ref, g_ck)


def test_checkpoint_module_with_drawn_seed():
    """A module drawing its seed from torch's generator inside a checkpointed block."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(16, 16), seeddrop.Dropout(0.5), nn.Linear(16, 16))
    x = torch.randn(10, 16)

    torch.manual_seed(5)
    y_ref = block(x)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(block.parameters()))
    torch.manual_seed(5)
    y_ck = checkpoint(block, x, use_reentrant=False, preserve_rng_state=True)
    grads_ck = torch.autograd.grad(y_ck.square().sum(), list(block.parameters()))
    assert torch.equal(y_ref, y_ck)
    for a, b in zip(grads_ref, grads_ck):
        assert torch.equal(a, b)


def test_replace_dropout_transformer_encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    n_native = sum(type(m) is nn.Dropout for m in model.modules())
    assert n_native > 0
    state = copy.deepcopy(model.state_dict())
    copy_model = seeddrop.replace_dropout(model, inplace=False)
    assert sum(type(m) is nn.Dropout for m in model.modules()) == n_native  # original untouched
    converted = seeddrop.replace_dropout(model)
    assert converted is model
    assert sum(type(m) is nn.Dropout for m in model.modules()) == 0
    swapped = [m for m in model.modules() if isinstance(m, seeddrop.Dropout)]
    assert len(swapped) == n_native and all(m.p == 0.1 for m in swapped)
    assert model.state_dict().keys() == state.keys()
    model.load_state_dict(state)
    copy_model.load_state_dict(model.state_dict())
    x = torch.randn(3, 5, 32)
    model.eval()
    ref = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
    ref.load_state_dict(state)
    ref.eval()
    torch.testing.assert_close(model(x), ref(x))
    model.train()
    out = model(x)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_replace_dropout_channel_and_training_flag():
    model = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Dropout2d(0.3), nn.Sequential(nn.Dropout1d(0.4)))
    model[1].eval()
    seeddrop.replace_dropout(model)
    assert isinstance(model[0], seeddrop.Dropout) and model[0].inplace
    assert type(model[1]) is nn.Dropout2d  # left alone without channel_dropout
    seeddrop.replace_dropout(model, channel_dropout=True)
    assert isinstance(model[1], seeddrop.VariationalDropout) and not model[1].training
    assert model[1].shared_dims == (-2, -1) and model[2][0].shared_dims == (-1,)
    x = torch.randn(4, 6, 5, 7)
    model[1].train()
    y = model[1](x)
    zero_channels = (y == 0).all(dim=(-2, -1))
    assert torch.equal((y == 0), zero_channels[..., None, None].expand_as(y))
    with pytest.raises(TypeError):
        seeddrop.replace_dropout("not a module")


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_compile_dropout_add_module_matches_eager(activation):
    torch.manual_seed(0)
    block = seeddrop.DropoutAdd(0.3, activation=activation)
    x = torch.randn(6, 24, requires_grad=True)
    residual = torch.randn(6, 24, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)

    def f(x, residual, bias):
        return block(x, residual, bias)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    y_eager = f(x, residual, bias)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), (x, residual, bias))
    torch.manual_seed(3)
    y_comp = compiled(x, residual, bias)
    grads_comp = torch.autograd.grad(y_comp.square().sum(), (x, residual, bias))
    assert torch.equal(y_eager, y_comp)
    for a, b in zip(grads_eager, grads_comp):
        assert torch.equal(a, b)


def test_seed_generator_gives_tensor_parallel_masks():
    """Replicated activations: every rank's generator seeded alike -> identical masks;
    sharded activations: a generator seeded per rank -> distinct masks."""
    x = torch.ones(64, 64)
    drop = seeddrop.Dropout(0.5)

    def masks(rank):
        replicated = torch.Generator().manual_seed(1234)
        sharded = torch.Generator().manual_seed(1234 + 1_000_003 * rank)
        torch.manual_seed(rank)  # the default generator differs per rank (e.g. DDP ranks)
        with seeddrop.seed_generator(replicated):
            rep = drop(x) != 0
        with seeddrop.seed_generator(sharded):
            sha = drop(x) != 0
        default = drop(x) != 0
        return rep, sha, default

    rep0, sha0, def0 = masks(0)
    rep1, sha1, def1 = masks(1)
    assert torch.equal(rep0, rep1)
    assert not torch.equal(sha0, sha1) and not torch.equal(def0, def1)
    with pytest.raises(TypeError):
        with seeddrop.seed_generator(1234):
            pass


def test_compile_sparse_jl_module_matches_eager():
    proj = seeddrop.SparseJL(64, 16, seed=5)
    x = torch.randn(4, 3, 64, requires_grad=True)
    compiled = torch.compile(proj, fullgraph=True, backend="aot_eager")
    y_eager, y_comp = proj(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager, rtol=0, atol=0)
    g = torch.randn_like(y_eager)
    (ge,) = torch.autograd.grad(y_eager, x, g)
    (gc,) = torch.autograd.grad(y_comp, x, g)
    torch.testing.assert_close(gc, ge, rtol=0, atol=0)


def test_replace_dropout_transformers_bert():
    """A real Hugging Face model (built from a config: no download): every nn.Dropout is
    swapped, the state_dict round-trips and eval outputs are unchanged."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 100, (2, 12))
    ref = model(ids).last_hidden_state
    n_native = sum(type(m) is nn.Dropout for m in model.modules())
    state = copy.deepcopy(model.state_dict())
    seeddrop.replace_dropout(model)
    assert n_native > 0 and sum(type(m) is nn.Dropout for m in model.modules()) == 0
    assert sum(isinstance(m, seeddrop.Dropout) for m in model.modules()) == n_native
    model.load_state_dict(state)
    torch.testing.assert_close(model(ids).last_hidden_state, ref)
    model.train()
    torch.manual_seed(1)
    out = model(ids).last_hidden_state
    out.sum().backward()
    assert not torch.equal(out, ref)
