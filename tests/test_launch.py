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
