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
        self.kernels = {}  # the same keys: Triton's CompiledKernel, for recipes

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
                self.kernels[full_key] = kernel
            return
        c_launch, head = entry
        c_launch(grid, 1, 1, torch._C._cuda_getCurrentRawStream(device), *head, *call)

    def launch_for_recipe(self, key, grid: int, args: tuple, num_warps: int, sources: dict, **options):
        """launch(key, grid, args, num_warps, **options), then its recipe (below): the C++
        planners' step."""
        self.launch(key, grid, args, num_warps, **options)
        return self.recipe(key, grid, args, num_warps, sources, **options)

    def recipe(self, key, grid: int, args: tuple, num_warps: int, sources: dict, **options):
        """The launch that `launch(key, grid, args, num_warps, **options)` made, described for
        the C++ launcher (csrc/fast_dropout.cpp), or None when that launcher cannot replay it.

        (CUfunction, grid, threads per block, dynamic shared memory bytes, params): params
        holds one (source, bytes, value) per parameter of the compiled kernel (constexprs and
        arguments Triton specialized away are not parameters); source is sources[name] for
        the values that change from call to call (pointers, seed, p's constants) and 0 for
        a constant `value`."""
        call, alignment = raw_pointer_args(args, self.pointer_positions)
        kernel = self.kernels.get((key, num_warps, args[0].get_device(), alignment, *options.items()))
        if kernel is None or getattr(kernel, "function", None) is None:
            return None
        meta = kernel.metadata
        if (getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "launch_cooperative_grid", False)
                or getattr(meta, "launch_pdl", False) or getattr(meta, "global_scratch_size", 0)
                or getattr(meta, "profile_scratch_size", 0)):
            return None
        signature = kernel.src.signature
        params = []
        for name, value in zip(self.names, call):
            kind = signature.get(name)
            if kind == "constexpr":
                continue
            size = 8 if kind is not None and (kind.startswith("*") or kind in ("i64", "u64")) else (
                4 if kind in ("i32", "u32") else None)
            if size is None or (size == 8 and kind.startswith("*") and name not in sources):
                return None  # (a tensor the launcher would not know to fill in)
            params.append((sources.get(name, 0), size, 0 if name in sources else int(value)))
        return kernel.function, grid, 32 * meta.num_warps, meta.shared, tuple(params)

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
