"""The lean launcher's argument handling (the CUDA launch itself runs in test_cuda.py and
every CUDA test; here what can be checked without a GPU)."""
import inspect

import pytest
import torch

from seeddrop import stream
from seeddrop._launch import FastKernel, raw_pointer_args

pytestmark = pytest.mark.skipif(not stream.HAS_TRITON, reason="needs triton")


def test_pointer_positions_are_the_ptr_parameters_of_every_kernel():
    from seeddrop.ops import dropout, dropout_add

    for fn in (dropout._dropout_kernel, dropout_add._dropout_add_fwd_kernel, dropout_add._dropout_add_bwd_kernel):
        kernel = FastKernel(fn)
        names = [fn.arg_names[i] for i in kernel.pointer_positions]
        assert names and all(n.endswith("_ptr") for n in names)
        assert len(names) == sum(n.endswith("_ptr") for n in fn.arg_names)
    assert [dropout._dropout_kernel.arg_names[i] for i in FastKernel(dropout._dropout_kernel).pointer_positions] == [
        "x_ptr", "out_ptr", "seed_ptr"]


def test_raw_pointer_args_replaces_tensors_and_keys_alignment():
    base = torch.empty(64, dtype=torch.float32)
    aligned, offset = base[:8], base[1:9]  # data_ptr() % 16: 0 and 4
    assert aligned.data_ptr() % 16 == 0 and offset.data_ptr() % 16 == 4
    args = (aligned, 3, None, offset, 7.5)
    call, key = raw_pointer_args(args, (0, 2, 3))
    assert call == [aligned.data_ptr(), 3, None, offset.data_ptr(), 7.5]
    assert args[0] is aligned  # the caller's tuple is left alone
    keys = {raw_pointer_args(a, (0, 1))[1] for a in [(aligned, None), (None, aligned), (aligned, offset),
                                                      (offset, aligned), (aligned, aligned), (None, None)]}
    assert len(keys) == 6  # every combination of None / aligned / unaligned gets its own kernel key


def test_launch_keyed_keys_every_specialized_argument_and_pointer_dtype():
    """launch_keyed's key: the values of the arguments Triton specializes on (not the
    do_not_specialize ones, e.g. seed_value, which are typed int64) and each pointer's
    dtype: a bf16 and an fp32 call of the same shape must not share a compiled kernel."""
    from seeddrop.ops import sparse_jl

    kernel = FastKernel(sparse_jl._jl_matrix_kernel)
    keys = []
    kernel.launch = lambda key, grid, args, num_warps, **options: keys.append(key)
    seed = torch.tensor(3)
    table = torch.zeros(128, dtype=torch.int64)

    def call(out, seed_tensor, seed_value, k=4, block_g=2):
        kernel.launch_keyed(1, (out, seed_tensor, seed_value, table, k, 64, 64, 1, 0, 0, False, True, 4, block_g), 4)

    out16, out32 = torch.empty(4, 64, dtype=torch.bfloat16), torch.empty(4, 64)
    call(out16, None, 5)
    call(out16, None, 2**40)  # another seed value: the same kernel
    call(out32, None, 5)  # another output dtype
    call(out16, seed, 0)  # seed from a tensor
    call(out16, None, 5, k=16)  # K divisible by 16
    call(out16, None, 5, block_g=4)  # a constexpr
    assert keys[0] == keys[1]
    assert len(set(keys)) == 5


def _fake_compiled(signature, **metadata):
    """What FastKernel.recipe reads of Triton's CompiledKernel."""
    from types import SimpleNamespace

    meta = dict(num_warps=4, shared=512, num_ctas=1, launch_cooperative_grid=False, launch_pdl=False,
                global_scratch_size=0, profile_scratch_size=0)
    meta.update(metadata)
    return SimpleNamespace(function=0xABC0, metadata=SimpleNamespace(**meta), src=SimpleNamespace(signature=signature))


def test_recipe_lists_the_compiled_kernels_parameters_with_their_sources():
    """The C++ launcher replays a recipe: one (source, bytes, value) per parameter Triton kept
    (constexprs and arguments specialized to constants are not parameters), the per-call ones
    by source, the others by value; launches it cannot replay get no recipe."""
    from seeddrop._common import Seed
    from seeddrop.ops import dropout

    x, out = torch.empty(3, 40), torch.empty(3, 40)
    key, cfg, args = dropout._prepare(x, out, (), Seed(None, 77), 0.3, False, 0)
    kernel = FastKernel(dropout._dropout_kernel)
    names = kernel.names
    # as Triton 3.6 types this call: constexpr parameters, the None seed pointer and ints equal
    # to 1 (P, S, seed_stride, ...) are not parameters; int64 annotations; other ints 32-bit
    unspecialized = ("seed_value", "index_offset", "threshold", "scale_hi", "scale_lo")
    annotations = inspect.signature(dropout._dropout_kernel.fn).parameters.values()
    constexprs = {p.name for p in annotations if "constexpr" in str(p.annotation)} | {
        n for n, a in zip(names, args) if a is None or (n not in unspecialized and type(a) is int and a == 1)}
    signature = {n: "constexpr" if n in constexprs else "*fp32" if n.endswith("_ptr") else
                 "i64" if n in ("seed_value", "index_offset") else "i32" for n in names}
    _, alignment = raw_pointer_args(args, kernel.pointer_positions)
    full_key = (key, cfg.num_warps, x.get_device(), alignment)

    assert kernel.recipe(key, cfg.grid, args, cfg.num_warps, dropout._PARAM_SOURCES) is None  # nothing compiled
    kernel.kernels[full_key] = _fake_compiled(signature)
    function, grid, threads, shared, params = kernel.recipe(key, cfg.grid, args, cfg.num_warps,
                                                           dropout._PARAM_SOURCES)
    assert (function, grid, threads, shared) == (0xABC0, cfg.grid, 128, 512)
    kept = [n for n in names if n not in constexprs]
    assert len(params) == len(kept)
    by_name = dict(zip(kept, params))
    assert by_name["x_ptr"] == (1, 8, 0) and by_name["out_ptr"] == (2, 8, 0)
    assert by_name["seed_value"] == (4, 8, 0) and by_name["threshold"] == (5, 4, 0)
    assert by_name["scale_hi"] == (6, 4, 0) and by_name["scale_lo"] == (7, 4, 0)
    assert by_name["index_offset"] == (0, 8, 0)
    assert by_name["Q"] == (0, 4, 120) and "P" not in by_name  # [3, 40] viewed as P = 1, Q = 120

    for refused in (dict(global_scratch_size=64), dict(profile_scratch_size=64), dict(num_ctas=2),
                    dict(launch_pdl=True), dict(launch_cooperative_grid=True)):
        kernel.kernels[full_key] = _fake_compiled(signature, **refused)
        assert kernel.recipe(key, cfg.grid, args, cfg.num_warps, dropout._PARAM_SOURCES) is None, refused
    kernel.kernels[full_key] = _fake_compiled({**signature, "threshold": "fp32"})  # a float parameter
    assert kernel.recipe(key, cfg.grid, args, cfg.num_warps, dropout._PARAM_SOURCES) is None
    kernel.kernels[full_key] = _fake_compiled(signature)  # a pointer the launcher would not fill in
    sources = {k: v for k, v in dropout._PARAM_SOURCES.items() if k != "out_ptr"}
    assert kernel.recipe(key, cfg.grid, args, cfg.num_warps, sources) is None
