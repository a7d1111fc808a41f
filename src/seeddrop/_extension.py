"""The optional C++ host path (csrc/fast_dropout.cpp), built on first use on CUDA.

`load()` compiles the extension with torch.utils.cpp_extension (a C++ compiler and ninja
are needed; the result is cached by PyTorch, ~1 min the first time) and returns the
module, or None: without Triton, when SEEDDROP_EXTENSION=0, or when the build fails (then
a warning says why and every call keeps the Python path, which computes the same
results). Kernels, planning and the mask stream stay in Python and Triton; the extension
only replays launches that Python planned (see the C++ file's header).
"""
from __future__ import annotations

import os
import threading
import warnings

_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "fast_dropout.cpp")
_LOCK = threading.Lock()
_state = {"tried": False, "module": None}


def enabled() -> bool:
    return os.environ.get("SEEDDROP_EXTENSION", "1") != "0"


def set_planners(module, **overrides) -> None:
    """Hand the extension the Python planners whose recipes it replays, and the Python kernels
    and autograd of the dropout_add ops for the calls its C++ kernels leave to Python
    (`overrides` replace some by name, e.g. a counting planner in a test)."""
    from ._library import AUTOGRAD_APPLY
    from .ops import dropout_add as da
    from .ops.dropout import p_constants, plan_for_extension

    hooks = dict(dropout=plan_for_extension, dropout_add_forward=da.plan_forward_for_extension,
                 dropout_add_backward=da.plan_backward_for_extension, p_constants=p_constants,
                 dropout_add_op=da.dropout_add_op_impl, dropout_add_backward_op=da.dropout_add_backward_op_impl,
                 dropout_add_autograd=AUTOGRAD_APPLY["dropout_add"],
                 dropout_add_backward_autograd=AUTOGRAD_APPLY["dropout_add_backward"])
    hooks.update(overrides)
    module.set_planners(**hooks)


def load_for(t) -> None:
    """Build / load the extension when `t` is a CUDA tensor. The op kernels call this: once
    loaded, the C++ kernels serve seeddrop's ops on CUDA (the call that loads it still runs
    in Python), also in a compiled graph whose ops were never called eagerly."""
    if t.is_cuda:
        load()


def load():
    """The built extension module, or None (see the module docstring)."""
    if _state["tried"]:
        return _state["module"]
    with _LOCK:
        if _state["tried"]:
            return _state["module"]
        module = None
        from .stream import HAS_TRITON

        if enabled() and HAS_TRITON:  # without Triton, CUDA calls raise the Python path's error
            try:
                from torch.utils.cpp_extension import load as build

                module = build(name="seeddrop_fast_dropout", sources=[_SOURCE], extra_cflags=["-O2"], verbose=False)
                set_planners(module)
            except Exception as error:  # noqa: BLE001 (any build failure falls back to Python)
                warnings.warn(f"seeddrop: the C++ host path did not build, using the Python path ({error})",
                              RuntimeWarning, stacklevel=2)
                module = None
        _state["module"] = module
        _state["tried"] = True
        return module
