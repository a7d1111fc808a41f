"""Compile a seeddrop kernel for sm_90 on any machine (no GPU needed: Triton ships ptxas
and nvdisasm) and print SASS instruction counts, to compare kernel variants offline.

python scripts/sass_stats.py dropout_add_fwd --act 2 --dtype bf16
python scripts/sass_stats.py jl_matmul --dtype bf16
python scripts/sass_stats.py jl_gather --dtype bf16
"""
import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def compile_sass(fn, signature, constexprs, num_warps=8, aligned=(), **options):
    """`aligned`: names of pointer / int arguments Triton would see as multiples of 16."""
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = ASTSource(fn, signature=signature, constexprs=constexprs, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, **options))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
        sass = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True).stdout
    return k, sass


def loop_body(sass):
    """The instructions of the kernel's last loop: from the label its backward branch jumps
    to, to that branch (with nested loops, the outer one that ends last)."""
    label_at, body, pending = {}, [], []
    for ln in sass.splitlines():
        m = re.match(r"\s*(\.L_x_\d+):", ln)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]+)\*/", ln)
        if m:
            for name in pending:
                label_at[name] = len(body)
            pending = []
            body.append(ln)
    for i in range(len(body) - 1, -1, -1):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", body[i])
        if m and label_at.get(m.group(1), i) < i:  # (not the branch-to-self after EXIT)
            return "\n".join(body[label_at[m.group(1)]:i + 1])
    return ""


def stats(sass):
    ops = collections.Counter()
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if m:
            ops[m.group(1).split(".")[0]] += 1
    return ops


def dropout_add_fwd(dtype, act, mask=1, block_r=1, block_g=512, fusion=False, num_warps=4, maxnreg="library"):
    """The forward kernel, aligned mask mode by default (the library's 16-bit plan for wide
    rows: [1, 512, 8] tiles, 4 warps; maxnreg "library": the library's register limit);
    dtype: bf16, fp16, fp32 or fp64."""
    from seeddrop.ops import dropout_add as da
    p = "*" + dtype
    sig = {"x_ptr": p, "res_ptr": p, "bias_ptr": p, "out_ptr": p, "seed_ptr": "*i64", "seed_value": "i64",
           "mask_ptr": "*i8", "mask_row_ptr": "*i64", "mask_col_stride": "i32", "R": "i32", "C": "i32",
           "N": "i32", "threshold": "i32", "scale_hi": "i32", "scale_lo": "i32"}
    cdt = tl.float64 if dtype == "fp64" else tl.float32
    const = {"ACT": act, "HAS_BIAS": True, "MASK": mask, "SEED_FROM_PTR": False, "FLAT": False, "CDT": cdt,
             "SOFTWARE_BF16": False, "BLOCK_R": block_r, "BLOCK_G": block_g}
    for k, v in const.items():
        sig[k] = "constexpr"
    aligned = ("x_ptr", "res_ptr", "bias_ptr", "out_ptr", "seed_ptr", "C", "N", "R")
    if maxnreg == "library":
        itemsize = {"fp32": 4, "fp64": 8}.get(dtype, 2)
        maxnreg = dict(da.compiler_options(da.Config(0.1, True, (), False, act), itemsize, False, True)).get("maxnreg")
    options = {} if maxnreg is None else {"maxnreg": maxnreg}
    return compile_sass(da._dropout_add_fwd_kernel, sig, const, num_warps=num_warps, aligned=aligned,
                        enable_fp_fusion=fusion, **options)


def dropout_add_bwd(dtype, act, reduce_bias=True, block_r=16, block_g=8, fusion=None, num_warps=4, prefetch=None,
                    maxnreg="library"):
    """The backward kernel (bias-reducing by default, the library's 16-bit tiles); fusion,
    prefetch None and maxnreg "library": as the library compiles it."""
    from seeddrop.ops import dropout_add as da
    p = "*" + dtype
    cdt = tl.float64 if dtype == "fp64" else tl.float32
    sig = {"g_ptr": p, "x_ptr": p, "bias_ptr": p, "gx_ptr": p, "partial_ptr": "*" + ("fp64" if dtype == "fp64" else "fp32"),
           "seed_ptr": "*i64", "seed_value": "i64", "mask_ptr": "*i8", "mask_row_ptr": "*i64", "mask_col_stride": "i32",
           "R": "i32", "C": "i32", "N": "i32", "tiles_per_program": "i32", "threshold": "i32", "scale_hi": "i32", "scale_lo": "i32"}
    itemsize = {"fp32": 4, "fp64": 8}.get(dtype, 2)
    cfg = da.Config(0.1, True, (), False, act)
    if prefetch is None:
        prefetch = da.prefetches(cfg, itemsize, reduce_bias)
    if maxnreg == "library":
        maxnreg = dict(da.compiler_options(cfg, itemsize, reduce_bias, False)).get("maxnreg")
    const = {"ACT": act, "HAS_BIAS": True, "REDUCE_BIAS": reduce_bias, "MASK": 1, "SEED_FROM_PTR": False, "FLAT": False,
             "CDT": cdt, "SOFTWARE_BF16": False, "PREFETCH": prefetch, "BLOCK_R": block_r, "BLOCK_G": block_g}
    for k in const:
        sig[k] = "constexpr"
    aligned = ("g_ptr", "x_ptr", "bias_ptr", "gx_ptr", "partial_ptr", "C", "N", "R")
    fusion = act in da.TRANSCENDENTAL_ACTIVATIONS if fusion is None else fusion
    options = {} if maxnreg is None else {"maxnreg": maxnreg}
    return compile_sass(da._dropout_add_bwd_kernel, sig, const, num_warps=num_warps, aligned=aligned,
                        enable_fp_fusion=fusion, **options)


def jl_matmul(dtype, block_m=16, block_n=64, block_r=128, num_warps=4, num_stages=3):
    """sparse_jl's dense-tile forward kernel (split partials, the B <= 64 config by default)."""
    from seeddrop.ops import sparse_jl as sj
    sig = {"a_ptr": "*" + dtype, "out_ptr": "*fp64" if dtype == "fp64" else "*fp32", "seed_ptr": "*i64",
           "seed_value": "i64", "table_ptr": "*i64", "M": "i32", "N": "i32", "R": "i32", "r_per_split": "i32",
           "a_sm": "i32", "a_sr": "i32", "o_ss": "i32", "o_sm": "i32", "o_sn": "i32", "scale_hi": "i32",
           "scale_lo": "i32"}
    dot_mode = {"fp32": 2, "fp64": 1}.get(dtype, 0)
    const = {"FORWARD": True, "SWAP": False, "PARTIAL": True, "SEED_FROM_PTR": False, "DOT_MODE": dot_mode,
             "USE_WHILE": False, "SOFTWARE_BF16": False, "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_R": block_r}
    for k in const:
        sig[k] = "constexpr"
    return compile_sass(sj._jl_matmul_kernel, sig, const, num_warps=num_warps,
                        aligned=("a_ptr", "out_ptr", "seed_ptr", "table_ptr", "R", "a_sm"), num_stages=num_stages)


def jl_gather(dtype, block_j=16, block_g=16, block_m=1, num_warps=4):
    """sparse_jl's nonzero-walking forward kernel (split partials, B = 1 by default)."""
    from seeddrop.ops import sparse_jl as sj
    sig = {"a_ptr": "*" + dtype, "out_ptr": "*fp64" if dtype == "fp64" else "*fp32", "seed_ptr": "*i64",
           "seed_value": "i64", "table_ptr": "*i64", "M": "i32", "N": "i32", "R": "i32",
           "cells_per_split": "i32", "a_sm": "i32", "a_sr": "i32", "o_ss": "i32", "scale_hi": "i32",
           "scale_lo": "i32"}
    const = {"PARTIAL": True, "SEED_FROM_PTR": False, "SOFTWARE_BF16": False,
             "BLOCK_J": block_j, "BLOCK_G": block_g, "BLOCK_M": block_m}
    for k in const:
        sig[k] = "constexpr"
    return compile_sass(sj._jl_gather_kernel, sig, const, num_warps=num_warps,
                        aligned=("a_ptr", "out_ptr", "seed_ptr", "table_ptr", "R"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("kernel", choices=["dropout_add_fwd", "dropout_add_bwd", "jl_matmul", "jl_gather"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "fp64"])
    ap.add_argument("--act", type=int, default=2, help="activation code: 0 none, 1 relu, 2 gelu, 3 gelu_tanh, 4 silu")
    ap.add_argument("--fusion", action="store_true", help="forward: compile with fp fusion")
    ap.add_argument("--block-r", type=int, help="dropout_add: rows per tile (default: the kernel helper's)")
    ap.add_argument("--block-g", type=int, help="dropout_add: 8-element groups per tile row")
    a = ap.parse_args()
    tile = {k: v for k, v in (("block_r", a.block_r), ("block_g", a.block_g)) if v}
    if a.kernel == "dropout_add_fwd":
        _, sass = dropout_add_fwd(a.dtype, a.act, fusion=a.fusion, **tile)
    elif a.kernel == "jl_matmul":
        _, sass = jl_matmul(a.dtype)
    elif a.kernel == "jl_gather":
        _, sass = jl_gather(a.dtype)
    else:
        _, sass = dropout_add_bwd(a.dtype, a.act, **tile)
    st = stats(sass)
    print(sum(st.values()), "instructions;", st.most_common(25))
    loop = stats(loop_body(sass))
    if loop:
        print("last loop:", sum(loop.values()), "instructions;", loop.most_common(25))
