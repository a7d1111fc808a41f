"""Input validation, seeds, backend choice and layout planning shared by every op."""
from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import struct
import threading
from typing import NamedTuple, Optional, Sequence

import torch

from .stream import HAS_TRITON, seed_to_int64

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Read once: triton.jit picks interpreter or compiler when the kernels are defined.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def check_p(p, name: str = "p") -> float:
    if type(p) is float and 0.0 <= p <= 1.0:  # the common case, first (host time per call)
        return p
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a real number, but got {type(p).__name__}")
    if not (0.0 <= p <= 1.0):  # NaN fails too
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return float(p)


def check_float_tensor(x, name: str = "input") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, but got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float16, bfloat16, float32 or float64, but got {x.dtype}")


def use_triton(x: torch.Tensor) -> bool:
    """True: run the Triton kernels; False: run the PyTorch reference (CPU)."""
    kind = x.device.type
    if kind == "cuda":
        if not HAS_TRITON:
            raise RuntimeError("seeddrop needs triton to run on CUDA tensors; pip install triton")
        return True
    if kind == "cpu":
        return TRITON_INTERPRET and HAS_TRITON
    raise ValueError(f"seeddrop supports CPU and CUDA tensors, but got a tensor on device '{x.device}'")


def normalize_dims(dims: Sequence[int], ndim: int, name: str = "shared_dims") -> tuple:
    if isinstance(dims, int):
        dims = (dims,)
    try:
        dims = tuple(dims)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, but got {type(dims).__name__}") from None
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{name} must hold ints, but got {d!r}")
        if not -ndim <= d < ndim:
            raise ValueError(f"{name}: dim {d} is out of range for a tensor with {ndim} dims")
        out.append(int(d) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a dim, but got {dims}")
    return tuple(sorted(out))


def mask_shape_of(shape: Sequence[int], shared: tuple) -> tuple:
    return tuple(1 if d in shared else s for d, s in enumerate(shape))


def check_no_internal_overlap(x: torch.Tensor, name: str = "input") -> None:
    """Reject tensors where several elements share memory (as torch does for in-place ops)."""
    dims = sorted((st, sz) for sz, st in zip(x.shape, x.stride()) if sz > 1)
    extent = 1
    for st, sz in dims:
        if st < extent:
            raise ValueError(
                f"{name}: unsupported operation: more than one element of the written-to tensor "
                "refers to a single memory location. Please clone() the tensor before "
                "performing the operation."
            )
        extent = st * sz


# --------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------
_C_FUNCTION_APPLY = torch._C._FunctionBase.__dict__["apply"]


def lean_apply(function: type):
    """`function.apply` (positional arguments only) without autograd.Function.apply's
    Python layer, which binds default arguments for setup_context Functions (ours are not)
    and, outside functorch transforms, unwraps "dead" functorch wrappers: tensors that
    escaped an exited vmap/grad, which seeddrop's ops are not given. While transforms are
    active the regular apply runs. Saves ~5 us of host time per call."""
    c_apply = _C_FUNCTION_APPLY.__get__(None, function)
    regular_apply = function.apply
    transforms_active = torch._C._are_functorch_transforms_active

    def apply(*args):
        return regular_apply(*args) if transforms_active() else c_apply(*args)

    return apply


# --------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------
class Seed(NamedTuple):
    """A resolved seed: either `value` (signed int64, tensor is None) or `tensor`
    (int64 on the op's device, shape [] or [rows])."""

    tensor: Optional[torch.Tensor]
    value: int


_HOST_DRAW = threading.local()
_SEED_LOW, _SEED_HIGH = -(1 << 63), (1 << 63) - 1


def draw_seed(device: torch.device) -> Seed:
    """A fresh seed in [-2**63, 2**63 - 1) from PyTorch's default generator, so
    torch.manual_seed makes runs reproducible. Eagerly on CUDA: from the CPU generator into
    a Python int (no device work, no sync). On CPU, while compiling or while capturing a CUDA
    graph: `torch.randint` on the tensor's device (CPU draws give the same values as the
    eager path), so under a graph every replay draws a new seed on the device."""
    generator = getattr(_HOST_DRAW, "generator", None)
    if generator is not None or (device.type == "cuda" and not _in_graph()):
        buf = getattr(_HOST_DRAW, "buf", None)
        if buf is None:
            buf = _HOST_DRAW.buf = torch.empty((), dtype=torch.int64)
        return Seed(None, buf.random_(_SEED_LOW, _SEED_HIGH, generator=generator).item())
    return Seed(torch.randint(_SEED_LOW, _SEED_HIGH, (), dtype=torch.int64, device=device), 0)


@contextlib.contextmanager
def seed_generator(generator: torch.Generator):
    """Within the block, seed=None draws (every seeddrop module and op, this thread, eager
    mode) come from `generator` (a CPU torch.Generator) instead of torch's default one.

    Tensor parallelism: give every rank of a tensor-parallel group a generator seeded alike
    for replicated activations (identical masks on every rank) and one seeded per rank for
    sharded activations (distinct masks), as Megatron's RNG tracker does.
    """
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator, but got {generator!r}")
    previous = getattr(_HOST_DRAW, "generator", None)
    _HOST_DRAW.generator = generator
    try:
        yield generator
    finally:
        _HOST_DRAW.generator = previous


def eager_host_draw_allowed() -> bool:
    """For an eager (not compiling) call on CUDA: draw_seed would draw from torch's default
    CPU generator on the host (no seed_generator block, not capturing a CUDA graph)."""
    return getattr(_HOST_DRAW, "generator", None) is None and not torch.cuda.is_current_stream_capturing()


def _in_graph() -> bool:
    return torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing()


def resolve_seed(seed, device: torch.device, rows_shape: Optional[tuple]) -> Seed:
    """Turn the user's `seed` into a Seed. `rows_shape` is the shape a per-row seed
    tensor must have (None where per-row seeds are not accepted)."""
    if seed is None:
        return draw_seed(device)
    if type(seed) is int and _SEED_LOW <= seed <= _SEED_HIGH:  # the common case, first
        return Seed(None, seed)
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.dtype == torch.bool:
            raise TypeError(f"seed must be an int or an integer tensor, but got a tensor of dtype {seed.dtype}")
        if rows_shape is not None and seed.dim() > 0 and tuple(seed.shape) == tuple(rows_shape):
            return Seed(seed.to(device=device, dtype=torch.int64).reshape(-1).contiguous(), 0)
        if seed.numel() == 1:
            if seed.device == device:
                return Seed(seed.to(torch.int64).reshape(()), 0)
            return Seed(None, seed_to_int64(int(seed.item())))
        expected = "a single value" if rows_shape is None else f"a single value or shape {tuple(rows_shape)}"
        raise ValueError(f"seed tensor must hold {expected}, but got shape {tuple(seed.shape)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, an integer tensor or None, but got {type(seed).__name__}")
    seed = int(seed)
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"seed must lie in [-2**63, 2**64), but got {seed}")
    return Seed(None, seed_to_int64(seed))


def seed_as_tensor(seed: Seed, device: torch.device) -> torch.Tensor:
    if seed.tensor is not None:
        return seed.tensor
    return torch.tensor(seed.value, dtype=torch.int64, device=device)


# --------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)  # sparse_jl asks for its scale's halves on every call
def float64_halves(value: float) -> tuple:
    """(hi, lo): the 64 bits of the float64 `value` as two signed 32-bit ints, hi the upper
    word (stream.float64_from_halves rebuilds it in a kernel). Two int32 arguments give
    every p the same kernel signature (an int64 argument would be typed i32 for p = 1's
    zero bits), and are what Inductor can pass to a user kernel (not ints beyond 32 bits)."""
    bits = struct.unpack("<q", struct.pack("<d", value))[0]
    hi, lo = bits >> 32, bits & 0xFFFFFFFF
    return hi, lo - (1 << 32) if lo >= 1 << 31 else lo


def scale_halves(p: float) -> tuple:
    """float64_halves of the dropout scale 1/(1-p) (0 for p == 1)."""
    return float64_halves(0.0 if p >= 1.0 else 1.0 / (1.0 - p))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------
# layout planning: view x as [P, S, Q]
# --------------------------------------------------------------------------
class View(NamedTuple):
    """x viewed as [P, S, Q]: mask index = p * Q + q (scalar seed) or (row p, column q)
    (per-row seeds); S runs over the shared dims. Strides in elements."""

    P: int
    S: int
    Q: int
    x_strides: tuple  # (p, s, q)
    out_strides: tuple


def _collapse(dims, shape, *strides_list):
    """(size, strides...) of dims (outer to inner) merged into one, or None."""
    dims = [d for d in dims if shape[d] != 1]
    size = math.prod(shape[d] for d in dims)
    merged = []
    for strides in strides_list:
        if not dims:
            merged.append(0)
            continue
        for outer, inner in zip(dims, dims[1:]):
            if strides[outer] != shape[inner] * strides[inner]:
                return None
        merged.append(strides[dims[-1]])
    return (size, *merged)


def plan_view(shape, x_strides, out_strides, shared: tuple, per_row: bool) -> Optional[View]:
    """The [P, S, Q] view of a tensor of `shape`, or None when its strides do not collapse."""
    ndim = len(shape)
    if ndim == 0:
        return View(1, 1, 1, (0, 0, 0), (0, 0, 0))
    non_shared = [d for d in range(ndim) if d not in shared]
    q_dims = [ndim - 1] if non_shared and non_shared[-1] == ndim - 1 else []
    p_dims = [d for d in non_shared if d not in q_dims]
    s = _collapse(list(shared), shape, x_strides, out_strides)
    if s is None:
        return None
    if not per_row:
        pq = _collapse(p_dims + q_dims, shape, x_strides, out_strides)
        if pq is not None:
            return View(1, s[0], pq[0], (0, s[1], pq[1]), (0, s[2], pq[2]))
    p = _collapse(p_dims, shape, x_strides, out_strides)
    q = _collapse(q_dims, shape, x_strides, out_strides)
    if p is None or q is None:
        return None
    return View(p[0], s[0], q[0], (p[1], s[1], q[1]), (p[2], s[2], q[2]))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


_SM_COUNT = {}


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]
