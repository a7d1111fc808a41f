"""A lean launcher for @triton.jit kernels.

Triton's `kernel[grid](...)` binds and specializes every argument on every call
(tens of microseconds of Python). Our launchers already know, from a cached plan,
everything Triton specializes on except pointer alignment, so once a variant is
compiled we call the compiled kernel directly.
"""
from __future__ import annotations

import torch

try:
    import triton

    _knobs = getattr(triton, "knobs", None)
except ImportError:  # pragma: no cover
    triton = None
    _knobs = None


def _hook_set(hook) -> bool:
    return hook is not None and bool(getattr(hook, "calls", True))


def _hooks_installed() -> bool:
    """Launch hooks (e.g. a profiler) are installed: use Triton's own launch path."""
    runtime = getattr(_knobs, "runtime", None)
    return runtime is None or _hook_set(runtime.launch_enter_hook) or _hook_set(runtime.launch_exit_hook)


class FastKernel:
    """Wraps a JIT kernel. `launch(key, grid, args, num_warps)`: `args` are ALL kernel
    parameters in order (constexprs included); `key` must determine every integer
    argument Triton specializes on (value 1, divisibility by 16, 32/64-bit range) and
    every constexpr. Pointer alignment is added here."""

    def __init__(self, fn):
        self.fn = fn
        self.names = fn.arg_names
        self.compiled = {}

    def launch(self, key, grid: int, args: tuple, num_warps: int, tensors: tuple) -> None:
        device = tensors[0].device
        if device.type != "cuda":  # Triton's interpreter
            self._jit_launch(grid, args, num_warps)
            return
        full_key = (key, num_warps, device.index, tuple(t is None or t.data_ptr() % 16 == 0 for t in tensors))
        kernel = self.compiled.get(full_key)
        if kernel is None or _hooks_installed():
            kernel = self._jit_launch(grid, args, num_warps)
            if hasattr(kernel, "run") and hasattr(kernel, "packed_metadata"):
                self.compiled[full_key] = kernel
            return
        stream = torch._C._cuda_getCurrentRawStream(device.index)
        kernel.run(grid, 1, 1, stream, kernel.function, kernel.packed_metadata, None, None, None, *args)

    def _jit_launch(self, grid, args, num_warps):
        return self.fn[(grid,)](**dict(zip(self.names, args)), num_warps=num_warps)
