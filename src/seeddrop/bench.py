"""The benchmark behind ``python -m seeddrop bench``.

Sweeps x of shape [N, 64 * 768] (N in 1, 16, 256, 2048, 8192) in fp16/bf16/fp32/fp64
for each op family seeddrop has, and times forward and backward against torch's
native dropout, ``torch.compile``'d PyTorch, the two baseline kernels of Triton's
low-memory-dropout tutorial (:mod:`seeddrop.baselines`) and the copy floor
``out.copy_(x)``. Adds a memory report: a stack of Linear -> dropout layers,
forward + backward, with ``nn.Dropout`` vs ``seeddrop.Dropout``.

Every timed callable only launches work (no host sync; inputs, seeds and masks are
made beforehand from fresh random values). Each callable runs once and the device
synchronizes before timing (torch.compile and Triton compile there); GPU times are
``triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")`` (10/30 ms
with --quick). torch.compile uses dynamic shapes, one graph per function and dtype.
Results: CSV, Markdown and one PNG per (op, direction) in --out; the Markdown last
on stdout.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import seeddrop

from . import baselines
from ._common import TRITON_INTERPRET
from .stream import HAS_TRITON

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
SIZES = (1, 16, 256, 2048, 8192)
INNER = (64, 768)  # x is [N, 64 * 768]; variational dropout views it as [N, 64, 768]
OPS = ("dropout", "per_row", "variational", "dropout_add", "sparse_jl", "memory")
OP_NEEDS = {"dropout": "dropout", "per_row": "dropout", "variational": "dropout",
            "dropout_add": "dropout_add", "sparse_jl": "sparse_jl", "memory": "Dropout"}
QUICK_SIZES = (256, 8192)
QUICK_DTYPES = ("bf16", "fp32")
CPU_SIZES = (1, 16)
SEED = 1234
MiB = 2**20


@dataclass
class MemoryConfig:
    """The memory report's model: `layers` x [Linear(width, width) -> dropout] on [batch, seq, width]."""

    layers: int = 12
    width: int = 768
    batch: int = 8
    seq: int = 1024
    dtype: str = "bf16"


@dataclass
class BenchConfig:
    """What to run. `compile_backend=None` skips the torch.compile baselines;
    `tutorial=False` skips the tutorial's kernels; `timer` is "cuda" (do_bench),
    "cpu" (median of wall-clock repeats) or "once" (a single untimed-quality call)."""

    ops: Tuple[str, ...] = OPS
    dtypes: Tuple[str, ...] = tuple(DTYPES)
    sizes: Tuple[int, ...] = SIZES
    inner: Tuple[int, int] = INNER
    p: float = 0.1
    jl_out: int = 1024
    device: str = "cuda"
    timer: str = "cuda"
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    rounds: int = 1
    compile_backend: Optional[str] = "inductor"
    tutorial: bool = True
    memory: MemoryConfig = field(default_factory=MemoryConfig)


@dataclass
class Result:
    """One timed measurement. gbps: nominal bytes (inputs read once + outputs written
    once, the same for every method of a row) / time; x_copy: ms / copy ms of x."""

    op: str
    direction: str
    method: str
    dtype: str
    rows: int
    shape: str
    ms: float
    gbps: float
    x_copy: float
    error: str = ""


@dataclass
class Report:
    results: List[Result]
    memory: List[dict]
    header: str
    inner: Tuple[int, int] = INNER


@dataclass
class Spec:
    """A measurement to make: build() returns (fn, nominal bytes) and runs outside timing."""

    direction: str
    method: str
    build: Callable[[], Tuple[Callable[[], object], int]]


@dataclass
class Case:
    x: torch.Tensor  # [N, prod(inner)], fresh random values
    g: torch.Tensor  # like x: the incoming gradient for backward
    cfg: BenchConfig
    compiled: Callable[[str, Callable], Callable]


# --------------------------------------------------------------------------
# timers
# --------------------------------------------------------------------------
def make_timer(cfg: BenchConfig) -> Callable[[Callable], float]:
    """fn -> median milliseconds."""
    if cfg.timer == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=cfg.warmup_ms, rep=cfg.rep_ms, return_mode="median")
    if cfg.timer == "cpu":
        return lambda fn: cpu_time(fn, cfg.rep_ms)
    if cfg.timer == "once":
        return lambda fn: cpu_time(fn, 0.0, min_reps=1)
    raise ValueError(f"timer must be 'cuda', 'cpu' or 'once', but got {cfg.timer!r}")


def cpu_time(fn: Callable, rep_ms: float, min_reps: int = 3, max_reps: int = 100) -> float:
    """Median wall-clock ms of fn over at least min_reps calls (more while within rep_ms)."""
    times = []
    while len(times) < min_reps or (sum(times) * 1e3 < rep_ms and len(times) < max_reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


class CompileCache:
    """torch.compile'd functions by name, compiled once per dtype (dynamic shapes, so
    one graph serves every N > 1). Creating one resets dynamo's caches."""

    def __init__(self, backend: Optional[str]) -> None:
        self.backend = backend
        self.fns: Dict[str, Callable] = {}
        if backend is not None:
            torch._dynamo.reset()

    def __call__(self, name: str, fn: Callable) -> Callable:
        if name not in self.fns:
            self.fns[name] = torch.compile(fn, backend=self.backend, dynamic=True)
        return self.fns[name]


# --------------------------------------------------------------------------
# the op families: lists of Specs for one (dtype, N)
# --------------------------------------------------------------------------
def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def backward_spec(method: str, forward: Callable, inputs: Iterable[torch.Tensor], grad: torch.Tensor,
                  traffic: int) -> Spec:
    """Times autograd's backward of forward(*inputs) (the forward runs untimed, once)."""

    def build():
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = forward(*leaves)
        return (lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)), traffic

    return Spec("bwd", method, build)


def forward_spec(method: str, fn: Callable, traffic: int) -> Spec:
    return Spec("fwd", method, lambda: (fn, traffic))


def dropout_specs(case: Case) -> List[Spec]:
    """seeddrop.dropout (fresh seed per call, as nn.Dropout) vs native, compiled and the tutorial."""
    x, g, p = case.x, case.g, case.cfg.p
    traffic = nbytes(x, x)
    specs = [forward_spec("seeddrop", lambda: seeddrop.dropout(x, p), traffic),
             forward_spec("native", lambda: F.dropout(x, p), traffic)]
    if case.cfg.compile_backend is not None:
        specs.append(Spec("fwd", "compiled", lambda: (_bind(case.compiled("dropout", _native_dropout(p)), x), traffic)))
    if case.cfg.tutorial:
        specs.append(Spec("fwd", "tutorial_mask", lambda: _tutorial_mask(x, p, traffic)))
        specs.append(forward_spec("tutorial_philox", lambda: baselines.philox_dropout(x, p, SEED), traffic))
    specs.append(backward_spec("seeddrop", lambda t: seeddrop.dropout(t, p), [x], g, traffic))
    specs.append(backward_spec("native", lambda t: F.dropout(t, p), [x], g, traffic))
    return specs


def per_row_specs(case: Case) -> List[Spec]:
    """seeddrop.dropout with one seed per row (a seed tensor of shape [N])."""
    x, g, p = case.x, case.g, case.cfg.p
    traffic = nbytes(x, x)

    def seeds():
        return torch.randint(-(2**63), 2**63 - 1, (x.shape[0],), device=x.device)

    def build_fwd():
        s = seeds()
        return (lambda: seeddrop.dropout(x, p, seed=s)), traffic

    def build_bwd():
        s = seeds()
        return backward_spec("seeddrop", lambda t: seeddrop.dropout(t, p, seed=s), [x], g, traffic).build()

    return [Spec("fwd", "seeddrop", build_fwd), Spec("bwd", "seeddrop", build_bwd)]


def conventional_variational(p: float) -> Callable:
    """The usual variational dropout: one mask of [1, *x.shape[1:]] broadcast over dim 0."""

    def fn(t):
        return t * F.dropout(torch.ones((1, *t.shape[1:]), device=t.device, dtype=t.dtype), p)

    return fn


def variational_specs(case: Case) -> List[Spec]:
    """x viewed as [N, 64, 768], mask shared over N: seeddrop (shared_dims=(0,)) vs the conventional way."""
    x3 = case.x.view(case.x.shape[0], *case.cfg.inner)
    g3 = case.g.view_as(x3)
    p = case.cfg.p
    traffic = nbytes(x3, x3)
    conventional = conventional_variational(p)
    specs = [forward_spec("seeddrop", lambda: seeddrop.dropout(x3, p, shared_dims=(0,)), traffic),
             forward_spec("conventional", lambda: conventional(x3), traffic)]
    if case.cfg.compile_backend is not None:
        specs.append(Spec("fwd", "conventional_compiled",
                          lambda: (_bind(case.compiled("variational", conventional), x3), traffic)))
    specs.append(backward_spec("seeddrop", lambda t: seeddrop.dropout(t, p, shared_dims=(0,)), [x3], g3, traffic))
    specs.append(backward_spec("conventional", conventional, [x3], g3, traffic))
    return specs


def unfused_dropout_add(p: float) -> Callable:
    """residual + dropout(gelu(x + bias)) as separate PyTorch ops."""

    def fn(x, residual, bias):
        return residual + F.dropout(F.gelu(x + bias), p)

    return fn


def dropout_add_specs(case: Case) -> List[Spec]:
    """seeddrop.dropout_add(x, residual, bias=, activation="gelu") vs the unfused expression."""
    x, g, p = case.x, case.g, case.cfg.p
    residual = torch.randn_like(x)
    bias = torch.randn(x.shape[-1], device=x.device, dtype=x.dtype)
    traffic = nbytes(x, residual, x)  # read x and residual, write the output
    bwd_traffic = nbytes(g, x, x)  # read grad and x (gelu'), write grad_x

    def fused(x_, r_, b_):
        return seeddrop.dropout_add(x_, r_, p, bias=b_, activation="gelu")

    unfused = unfused_dropout_add(p)
    specs = [forward_spec("seeddrop", lambda: fused(x, residual, bias), traffic),
             forward_spec("unfused", lambda: unfused(x, residual, bias), traffic)]
    if case.cfg.compile_backend is not None:
        specs.append(Spec("fwd", "unfused_compiled",
                          lambda: (_bind(case.compiled("dropout_add", unfused), x, residual, bias), traffic)))
    specs.append(backward_spec("seeddrop", fused, [x, residual, bias], g, bwd_traffic))
    specs.append(backward_spec("unfused", unfused, [x, residual, bias], g, bwd_traffic))
    return specs


def sparse_jl_specs(case: Case) -> List[Spec]:
    """x [N, d] -> [N, k]: seeddrop.sparse_jl vs x @ R.T with R materialized (cuBLAS). bf16 only."""
    x = case.x
    if x.dtype != torch.bfloat16:
        return []
    k, d = case.cfg.jl_out, x.shape[-1]
    grad = torch.randn(x.shape[0], k, device=x.device, dtype=x.dtype)
    traffic = nbytes(x, grad)  # read x, write [N, k] (backward: read [N, k], write x-sized)

    def dense_matrix():
        return seeddrop.jl_matrix(k, d, SEED, dtype=x.dtype, device=x.device)

    def build_dense():
        r = dense_matrix()
        return (lambda: x @ r.T), traffic

    def build_dense_bwd():
        r = dense_matrix()
        return backward_spec("dense", lambda t: t @ r.T, [x], grad, traffic).build()

    return [forward_spec("seeddrop", lambda: seeddrop.sparse_jl(x, k, SEED), traffic),
            Spec("fwd", "dense", build_dense),
            backward_spec("seeddrop", lambda t: seeddrop.sparse_jl(t, k, SEED), [x], grad, traffic),
            Spec("bwd", "dense", build_dense_bwd)]


FAMILIES: Dict[str, Callable[[Case], List[Spec]]] = {
    "dropout": dropout_specs,
    "per_row": per_row_specs,
    "variational": variational_specs,
    "dropout_add": dropout_add_specs,
    "sparse_jl": sparse_jl_specs,
}


def _native_dropout(p: float) -> Callable:
    def fn(t):
        return F.dropout(t, p)

    return fn


def _bind(fn: Callable, *args) -> Callable:
    return lambda: fn(*args)


def _tutorial_mask(x: torch.Tensor, p: float, traffic: int):
    keep = torch.rand(x.shape, device=x.device) > p  # precomputed, as the tutorial's baseline assumes
    return (lambda: baselines.masked_dropout(x, keep, p)), traffic


def available_ops(ops: Iterable[str]) -> List[str]:
    """The requested ops whose seeddrop functions exist in this install."""
    return [op for op in ops if hasattr(seeddrop, OP_NEEDS[op])]


# --------------------------------------------------------------------------
# memory report
# --------------------------------------------------------------------------
def saved_tensor_bytes(fn: Callable, exclude: Iterable[torch.Tensor] = ()):
    """Run fn() recording what autograd saves for backward. Returns (fn's result,
    {storage ptr: (dtype, shape, bytes)}) over distinct storages, leaving out
    storages shared with `exclude` (e.g. parameters)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in saved:
            saved[ptr] = (t.dtype, tuple(t.shape), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


def memory_report(mem: MemoryConfig, p: float, device: str) -> List[dict]:
    """Forward + backward of mem.layers x [Linear -> dropout] with nn.Dropout and with
    seeddrop.Dropout (same weights): bytes saved for backward (any device), and on CUDA
    the memory held between forward and backward and the peak over forward + backward
    (both relative to the memory allocated before the forward)."""
    dtype = DTYPES[mem.dtype]
    torch.manual_seed(0)
    linears = [nn.Linear(mem.width, mem.width, device=device, dtype=dtype) for _ in range(mem.layers)]
    params = [q for lin in linears for q in lin.parameters()]
    x = torch.randn(mem.batch, mem.seq, mem.width, device=device, dtype=dtype)
    g = torch.randn_like(x)
    cuda = torch.device(device).type == "cuda"
    label = f"{mem.layers} x [Linear({mem.width},{mem.width}) -> dropout({p})], x [{mem.batch},{mem.seq},{mem.width}] {mem.dtype}"
    rows = []
    for method, make in (("native", nn.Dropout), ("seeddrop", seeddrop.Dropout)):
        model = nn.Sequential(*[m for lin in linears for m in (lin, make(p))])
        model(x).backward(g)  # warm-up: allocates .grad, cuBLAS workspaces
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        y, saved = saved_tensor_bytes(lambda: model(x), exclude=params)
        held = torch.cuda.memory_allocated() - start if cuda else None
        y.backward(g)
        del y
        peak = torch.cuda.max_memory_allocated() - start if cuda else None
        rows.append({
            "model": label,
            "method": method,
            "saved_MiB": sum(b for _, _, b in saved.values()) / MiB,
            "held_after_forward_MiB": None if held is None else held / MiB,
            "peak_fwd_bwd_MiB": None if peak is None else peak / MiB,
        })
    return rows


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
def progress_bar(total: int, desc: str, disable: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        return _NoBar()
    return tqdm(total=total, desc=desc, disable=disable, file=sys.stderr)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def environment(cfg: BenchConfig) -> str:
    if torch.device(cfg.device).type == "cuda":
        where = torch.cuda.get_device_name(torch.device(cfg.device))
    else:
        where = "CPU" + (" (Triton interpreter)" if TRITON_INTERPRET else " (PyTorch reference)")
    triton_version = "none"
    if HAS_TRITON:
        import triton

        triton_version = triton.__version__
    timing = {"cuda": "triton.testing.do_bench median", "cpu": "wall-clock median",
              "once": "one call (smoke pass, not a timing)"}[cfg.timer]
    if cfg.rounds > 1 and cfg.timer != "once":
        timing += f", median of {cfg.rounds} interleaved rounds"
    return (f"{datetime.date.today().isoformat()} | {where} | torch {torch.__version__} | triton {triton_version} | "
            f"p = {cfg.p} | x = [N, {cfg.inner[0]}*{cfg.inner[1]}] | {timing}")


def run(cfg: BenchConfig, progress: bool = True) -> Report:
    """Run every requested (op, dtype, N) and the memory report."""
    ops = [op for op in available_ops(cfg.ops) if op != "memory"]
    timer = make_timer(cfg)
    cols = math.prod(cfg.inner)
    results: List[Result] = []
    bar = progress_bar(len(cfg.dtypes) * len(cfg.sizes) * (1 + len(ops)) + ("memory" in cfg.ops),
                       "seeddrop bench", not progress)
    for dname in cfg.dtypes:
        dtype = DTYPES[dname]
        compiled = CompileCache(cfg.compile_backend)
        for n in cfg.sizes:
            torch.manual_seed(n)
            x = torch.randn(n, cols, device=cfg.device, dtype=dtype)
            g = torch.randn_like(x)
            case = Case(x, g, cfg, compiled)
            batches = [lambda: [("copy", Spec("fwd", "copy", lambda: _copy_build(x)))]]
            batches += [lambda op=op: _family_rows(op, case) for op in ops]
            if cfg.rounds > 1:  # every method of the size in one batch, timed in interleaved passes
                parts = batches
                batches = [lambda: [row for make in parts for row in make()]]
            bar.set_postfix_str(f"{dname} N={n}")
            shape, copy_ms = f"{n}x{cols}", math.nan
            for make in batches:  # one family at a time when rounds == 1: less memory held
                rows = make()
                measured = _measure_all(timer, [spec.build for _, spec in rows], cfg.rounds)
                for (op, spec), m in zip(rows, measured):
                    copy_ms = m[0] if op == "copy" else copy_ms  # the copy row comes first
                    results.append(_result(op, spec.direction, spec.method, dname, n, shape, m, copy_ms))
                del rows
            bar.update(1 + len(ops))
            del case, batches, x, g
    memory = []
    if "memory" in available_ops(cfg.ops):
        bar.set_postfix_str("memory")
        try:
            memory = memory_report(cfg.memory, cfg.p, cfg.device)
        except Exception as e:
            memory = [{"model": "memory report", "method": "error", "error": f"{type(e).__name__}: {e}"}]
        bar.update()
    bar.close()
    return Report(results, memory, environment(cfg), tuple(cfg.inner))


def _copy_build(x: torch.Tensor):
    out = torch.empty_like(x)
    return (lambda: out.copy_(x)), nbytes(x, x)


def _family_rows(op: str, case: Case) -> List[Tuple[str, Spec]]:
    """(op, spec) for each measurement of op family `op`; a setup failure becomes one row
    that reports it."""
    try:
        return [(op, spec) for spec in FAMILIES[op](case)]
    except Exception as e:  # report and go on with the other ops
        return [(op, Spec("fwd", "setup", _raiser(e)))]


def _raiser(e: Exception):
    def build():
        raise e

    return build


def _error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def _prepare(build) -> Tuple[Optional[Callable], int, str]:
    """(fn, nominal bytes, error) of build(), fn run once (the warm-up: torch.compile and
    Triton compile here); fn None and the error on failure."""
    try:
        fn, traffic = build()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return fn, traffic, ""
    except Exception as e:  # a failing method must not stop the sweep
        return None, 0, _error_text(e)


def _measure(timer, build) -> Tuple[float, int, str]:
    """(ms, nominal bytes, error) of the callable build() returns; NaN and the error on failure."""
    fn, traffic, error = _prepare(build)
    if fn is None:
        return math.nan, 0, error
    try:
        return timer(fn), traffic, ""
    except Exception as e:
        return math.nan, 0, _error_text(e)


def _measure_all(timer, builds: List[Callable], rounds: int) -> List[Tuple[float, int, str]]:
    """_measure of each build. rounds > 1: all callables are built first, then timed in
    `rounds` passes over the list (each callable's time: its median over the passes), so
    that a host whose speed drifts during the sweep weighs on every method alike."""
    if rounds <= 1:
        return [_measure(timer, build) for build in builds]  # one at a time: less memory held
    prepared = [list(_prepare(build)) for build in builds]
    times: List[List[float]] = [[] for _ in prepared]
    for _ in range(rounds):
        for entry, spent in zip(prepared, times):
            if entry[0] is None:
                continue
            try:
                spent.append(timer(entry[0]))
            except Exception as e:
                entry[0], entry[2] = None, _error_text(e)
    return [(statistics.median(spent) if fn is not None and spent else math.nan, traffic if fn is not None else 0, error)
            for (fn, traffic, error), spent in zip(prepared, times)]


def _result(op, direction, method, dtype, rows, shape, measured, copy_ms: float) -> Result:
    ms, traffic, error = measured
    gbps = traffic / (ms * 1e-3) / 1e9 if ms > 0 else math.nan
    return Result(op, direction, method, dtype, rows, shape, ms, gbps, ms / copy_ms if copy_ms > 0 else math.nan, error)


# --------------------------------------------------------------------------
# output: CSV, Markdown, plots
# --------------------------------------------------------------------------
def groups(results: List[Result]) -> Dict[Tuple[str, str], List[Result]]:
    """Results by (op, direction), in order of appearance; copy rows left out."""
    out: Dict[Tuple[str, str], List[Result]] = {}
    for r in results:
        if r.op != "copy":
            out.setdefault((r.op, r.direction), []).append(r)
    return out


def _fmt_ms(ms: float) -> str:
    return "-" if math.isnan(ms) else f"{ms:.4f}" if ms < 10 else f"{ms:.2f}"


def _fmt_gbps(gbps: float) -> str:
    return "-" if math.isnan(gbps) else f"{gbps:.0f}" if gbps >= 10 else f"{gbps:.2g}"


def markdown(report: Report) -> str:
    """One table per (op, direction): rows (dtype, N), cells 'ms (x copy)'; then the memory table."""
    copy = {(r.dtype, r.rows): r for r in report.results if r.op == "copy"}
    lines = [f"seeddrop bench: {report.header}", "",
             "Cells: median ms (time / time of `out.copy_(x)` at the same size). GB/s: nominal bytes "
             "(inputs read once + outputs written once) / time."]
    for (op, direction), rs in groups(report.results).items():
        methods = list(dict.fromkeys(r.method for r in rs))
        lines += ["", f"### {op} {'forward' if direction == 'fwd' else 'backward'}", "",
                  "| dtype | N | copy ms (GB/s) | " + " | ".join(methods) + " | seeddrop GB/s |",
                  "|---|---:|---:|" + "---:|" * len(methods) + "---:|"]
        by_row: Dict[Tuple[str, int], Dict[str, Result]] = {}
        for r in rs:
            by_row.setdefault((r.dtype, r.rows), {})[r.method] = r
        for (dtype, rows), cells in by_row.items():
            c = copy.get((dtype, rows))
            copy_cell = f"{_fmt_ms(c.ms)} ({_fmt_gbps(c.gbps)})" if c and not math.isnan(c.ms) else "-"
            row = [dtype, str(rows), copy_cell]
            for m in methods:
                r = cells.get(m)
                if r is None:
                    row.append("")
                elif r.error:
                    row.append("error")
                else:
                    row.append(f"{_fmt_ms(r.ms)} ({r.x_copy:.2f}x)")
            sd = cells.get("seeddrop")
            row.append(_fmt_gbps(sd.gbps) if sd and not sd.error else "-")
            lines.append("| " + " | ".join(row) + " |")
    if report.memory:
        lines += ["", "### memory: forward + backward of a layer stack", "",
                  f"Model: {report.memory[0].get('model', '')}. Saved for backward: distinct non-parameter "
                  "storages autograd keeps; held/peak: CUDA bytes above those allocated before the forward.", "",
                  "| dropout | saved for backward MiB | held after forward MiB | peak fwd+bwd MiB |",
                  "|---|---:|---:|---:|"]
        for m in report.memory:
            if "error" in m:
                lines.append(f"| error | {m['error']} | | |")
                continue
            lines.append(f"| {m['method']} | {_fmt_opt(m['saved_MiB'])} | {_fmt_opt(m['held_after_forward_MiB'])} | "
                         f"{_fmt_opt(m['peak_fwd_bwd_MiB'])} |")
    errors = [r for r in report.results if r.error]
    if errors:
        lines += ["", "Errors:"] + [f"- {r.op} {r.direction} {r.method} {r.dtype} N={r.rows}: {r.error}" for r in errors]
    return "\n".join(lines)


def _fmt_opt(v) -> str:
    return "-" if v is None else f"{v:.2f}" if v >= 1 else f"{v:.3g}"


def write_csv(report: Report, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fld for fld in Result.__dataclass_fields__])
        w.writeheader()
        for r in report.results:
            w.writerow(asdict(r))


def write_memory_csv(report: Report, path: str) -> None:
    keys = list(dict.fromkeys(k for m in report.memory for k in m))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(report.memory)


def plot(report: Report, out_dir: str, dpi: int = 80) -> List[str]:
    """One PNG per (op, direction): time vs N, one panel per dtype, a line per method,
    the copy floor dashed. Returns the paths written (none without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return []
    copy = [r for r in report.results if r.op == "copy"]
    paths = []
    for (op, direction), rs in groups(report.results).items():
        dtypes = list(dict.fromkeys(r.dtype for r in rs))
        sizes = sorted({r.rows for r in rs})
        fig = Figure(figsize=(3.2 * len(dtypes), 3.0))
        axes = fig.subplots(1, len(dtypes), squeeze=False)[0]
        for ax, dtype in zip(axes, dtypes):
            for method in dict.fromkeys(r.method for r in rs):
                pts = sorted((r.rows, r.ms) for r in rs if r.dtype == dtype and r.method == method and not r.error)
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, label=method)
            pts = sorted((r.rows, r.ms) for r in copy if r.dtype == dtype and not math.isnan(r.ms))
            if pts:
                ax.plot(*zip(*pts), "k--", linewidth=1, label="copy")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(n) for n in sizes])
            ax.minorticks_off()
            ax.set_title(f"{op} {direction} {dtype}", fontsize=9)
            ax.set_xlabel(f"N (x = [N, {report.inner[0]}*{report.inner[1]}])", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, which="both", linewidth=0.3)
        axes[0].set_ylabel("ms (median)", fontsize=8)
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{op}_{direction}.png")
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def write_outputs(report: Report, out_dir: str, plots: bool = True) -> List[str]:
    """bench.csv, memory.csv, bench.md and the PNGs into out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "bench.csv"), os.path.join(out_dir, "bench.md")]
    write_csv(report, paths[0])
    with open(paths[1], "w") as f:
        f.write(markdown(report) + "\n")
    if report.memory:
        paths.append(os.path.join(out_dir, "memory.csv"))
        write_memory_csv(report, paths[-1])
    if plots:
        paths += plot(report, out_dir)
    return paths


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def _csv_list(kind, choices=None):
    def parse(text: str):
        try:
            items = [kind(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}, but got {text!r}") from None
        bad = [t for t in items if choices is not None and t not in choices]
        if bad or not items:
            allowed = f" of {','.join(map(str, choices))}" if choices else ""
            raise argparse.ArgumentTypeError(f"expected a comma-separated list{allowed}, but got {text!r}")
        return tuple(items)

    parse.__name__ = "list"
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, but got {text!r}")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("--ops", type=_csv_list(str, OPS), default=OPS,
                        help=f"comma-separated op families (default: all that exist): {','.join(OPS)}")
    parser.add_argument("--dtypes", type=_csv_list(str, tuple(DTYPES)), default=None,
                        help="comma-separated dtypes (default: fp16,bf16,fp32,fp64; --quick: bf16,fp32)")
    parser.add_argument("--sizes", type=_csv_list(int), default=None,
                        help="comma-separated row counts N of x = [N, 64*768] (default: 1,16,256,2048,8192; "
                             "--quick: 256,8192; --allow-cpu: 1,16)")
    parser.add_argument("--p", type=float, default=0.1, help="dropout probability (default 0.1)")
    parser.add_argument("--out", default="bench_out", help="output folder (default ./bench_out)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and dtypes, shorter timing (< 1 min on an H100)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines (saves compile time)")
    parser.add_argument("--allow-cpu", action="store_true", help="without a CUDA GPU: time on the CPU with small sizes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--rounds", type=_positive_int, default=1,
                        help="time every method of a (dtype, N) in this many interleaved passes and report each "
                             "one's median (default 1: one pass, one method at a time; R > 1 holds all of a size's "
                             "inputs and graphs at once); for small N, where host time decides")


def config_from_args(args, cuda: bool) -> Tuple[BenchConfig, bool]:
    """(config, smoke): the run the arguments ask for on this machine. Without CUDA and
    without --allow-cpu, a tiny smoke pass (smoke=True)."""
    cfg = BenchConfig(ops=tuple(args.ops), p=args.p, rounds=args.rounds,
                      compile_backend=None if args.no_compile else "inductor")
    if args.quick:
        cfg = replace(cfg, sizes=QUICK_SIZES, dtypes=QUICK_DTYPES, warmup_ms=10.0, rep_ms=30.0)
    if cuda:
        cfg = replace(cfg, device="cuda", timer="cuda")
        smoke = False
    else:
        smoke = not args.allow_cpu
        # CPU: the PyTorch reference (Triton interpreter under TRITON_INTERPRET=1); the tutorial
        # kernels need Triton, and torch.compile'd baselines are timed on CUDA only.
        cfg = replace(cfg, device="cpu", compile_backend=None, tutorial=HAS_TRITON and TRITON_INTERPRET,
                      timer="once" if smoke else "cpu", rep_ms=200.0,
                      sizes=(1, 3) if smoke else CPU_SIZES,
                      memory=MemoryConfig(layers=2, width=16, batch=2, seq=4) if smoke else
                      MemoryConfig(layers=4, width=256, batch=4, seq=128))
        if smoke:
            cfg = replace(cfg, inner=(4, 8), jl_out=8)
    if args.dtypes:
        cfg = replace(cfg, dtypes=tuple(args.dtypes))
    if args.sizes:
        cfg = replace(cfg, sizes=tuple(args.sizes))
    return cfg, smoke


CPU_MESSAGE = ("seeddrop bench: timings need a CUDA GPU, and none is available. Running a tiny smoke pass of the "
               "benchmark's plumbing on the CPU instead (its numbers are not timings). Pass --allow-cpu to time "
               "on the CPU with small sizes.")


def main(args) -> int:
    cuda = torch.cuda.is_available()
    cfg, smoke = config_from_args(args, cuda)
    if smoke:
        print(CPU_MESSAGE, file=sys.stderr)
    missing = [op for op in cfg.ops if op not in available_ops(cfg.ops)]
    if missing:
        print(f"skipping ops this seeddrop does not have: {', '.join(missing)}", file=sys.stderr)
    report = run(cfg, progress=not args.no_progress)
    for path in write_outputs(report, args.out):
        print(f"wrote {path}")
    print()
    print(markdown(report))
    return 0
