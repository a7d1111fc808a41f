"""A lean launcher for @triton.jit kernels.

Triton's `kernel[grid](...)` binds and specializes every argument on every call
(tens of microseconds of Python). Our launchers already know, from a cached plan,
everything Triton specializes on except pointer alignment, so once a variant is
compiled we call Triton's C launcher directly, with raw device addresses (a tensor
argument would cost the launcher a Python method call and a driver query each).
"""
from __future__ import annotations

import torch

try:
    import triton

    _runtime = getattr(getattr(triton, "knobs", None), "runtime", None)
except ImportError:  # pragma: no cover
    triton = None
    _runtime = None


def _hook_set(hook) -> bool:
    return hook is not None and bool(getattr(hook, "calls", True))


def _hooks_installed() -> bool:
    """Launch hooks (e.g. a profiler) are installed: use Triton's own launch path."""
    return _runtime is None or _hook_set(_runtime.launch_enter_hook) or _hook_set(_runtime.launch_exit_hook)


def raw_pointer_args(args: tuple, pointer_positions: tuple):
    """(args with each tensor at `pointer_positions` replaced by its data_ptr(), an int
    that encodes, per pointer, None / 16-byte aligned / not aligned: part of the compiled-
    kernel key, since Triton specializes on pointer alignment)."""
    call = list(args)
    alignment = 0
    for i in pointer_positions:
        t = call[i]
        if t is None:
            alignment = alignment * 3 + 2
        else:
            ptr = call[i] = t.data_ptr()
            alignment = alignment * 3 + (ptr % 16 == 0)
    return call, alignment


class FastKernel:
    """Wraps a JIT kernel whose pointer parameters are the ones named ``*_ptr``.

    `launch(key, grid, args, num_warps, **options)`: `args` are ALL kernel parameters in
    order (constexprs included), args[0] a tensor on the launch device; `key` must determine
    every integer argument Triton specializes on (value 1, divisibility by 16, 32/64-bit
    range) and every constexpr. Pointer alignment is added here; `options` (e.g.
    num_stages) go to Triton's compiler. `launch_keyed(grid, args, num_warps, **options)`
    uses as key the values of every argument that is neither a pointer nor named in the
    kernel's do_not_specialize, and every pointer's dtype (for launchers without a cached
    plan of their own).
    """

    def __init__(self, fn):
        self.fn = fn
        self.names = fn.arg_names
        self.pointer_positions = tuple(i for i, name in enumerate(self.names) if name.endswith("_ptr"))
        unspecialized = getattr(fn, "do_not_specialize", None) or getattr(fn, "kwargs", {}).get("do_not_specialize")
        unspecialized = set(unspecialized or ())  # names or indices (the interpreter keeps them in kwargs)
        self.key_positions = tuple(i for i, name in enumerate(self.names)
                                   if not name.endswith("_ptr") and name not in unspecialized and i not in unspecialized)
        self.compiled = {}

    def launch_keyed(self, grid: int, args: tuple, num_warps: int, **options) -> None:
        key = [args[i] for i in self.key_positions]
        key += [None if args[i] is None else args[i].dtype for i in self.pointer_positions]
        self.launch(tuple(key), grid, args, num_warps, **options)

    def launch(self, key, grid: int, args: tuple, num_warps: int, **options) -> None:
        if not args[0].is_cuda:  # Triton's interpreter
            self._jit_launch(grid, args, num_warps, options)
            return
        call, alignment = raw_pointer_args(args, self.pointer_positions)
        device = args[0].get_device()
        full_key = (key, num_warps, device, alignment, *options.items())
        entry = self.compiled.get(full_key)
        if entry is None or _hooks_installed():
            kernel = self._jit_launch(grid, args, num_warps, options)
            if hasattr(kernel, "run") and hasattr(kernel, "packed_metadata"):
                self.compiled[full_key] = self._direct_call(kernel)
            return
        c_launch, head = entry
        c_launch(grid, 1, 1, torch._C._cuda_getCurrentRawStream(device), *head, *call)

    @staticmethod
    def _direct_call(kernel):
        """(callable, leading arguments) launching `kernel` with the fewest Python layers:
        the C launcher itself when the kernel needs no scratch memory."""
        launcher = kernel.run
        try:
            if launcher.global_scratch_size == 0 and launcher.profile_scratch_size == 0:
                return launcher.launch, (kernel.function, launcher.launch_cooperative_grid, launcher.launch_pdl,
                                         None, None, kernel.packed_metadata, None, None, None)
        except AttributeError:  # another Triton version: its Python launcher
            pass
        return launcher, (kernel.function, kernel.packed_metadata, None, None, None)

    def _jit_launch(self, grid, args, num_warps, options):
        return self.fn[(grid,)](**dict(zip(self.names, args)), num_warps=num_warps, **options)
