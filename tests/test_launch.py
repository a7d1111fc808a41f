"""The lean launcher's argument handling (the CUDA launch itself runs in test_cuda.py and
every CUDA test; here what can be checked without a GPU)."""
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
