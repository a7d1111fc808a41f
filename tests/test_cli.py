"""The command line (src/seeddrop/__main__.py): the demo's pieces (src/seeddrop/demo.py),
the benchmark's plumbing (src/seeddrop/bench.py) and the Triton tutorial's baseline
kernels (src/seeddrop/baselines.py), at tiny sizes on the CPU. The GPU timings themselves
run through the device (tests marked cuda at the end)."""
import csv
import gzip
import math
import struct

import numpy as np
import pytest
import torch
from torch import nn

import seeddrop
from seeddrop import baselines, bench, demo
from seeddrop.__main__ import build_parser, main

from conftest import INTERPRET, binomial_bound, needs_interpreter, np_keep, np_philox4x32_10, spec_dropout

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------
# IDX files (written here from the format's definition, independently of demo.parse_idx)
# --------------------------------------------------------------------------
def idx_bytes(array: np.ndarray, type_code: int, big_endian_dtype: str) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian_dtype).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_roundtrip(tmp_path, compressed):
    rng = np.random.default_rng(0)
    cases = [("images", rng.integers(0, 256, (5, 3, 4)).astype(np.uint8), 0x08, "u1"),
             ("ints", rng.integers(-2**31, 2**31, (7,)).astype(np.int32), 0x0C, ">i4"),
             ("doubles", rng.standard_normal((2, 3)), 0x0E, ">f8")]
    for name, array, code, dt in cases:
        data = idx_bytes(array, code, dt)
        path = tmp_path / (name + (".gz" if compressed else ""))
        path.write_bytes(gzip.compress(data) if compressed else data)
        got = demo.read_idx(str(path))
        assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
        np.testing.assert_array_equal(got, array)


def test_parse_idx_rejects_bad_data():
    good = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3), 0x08, "u1")
    with pytest.raises(ValueError, match="not an IDX file"):
        demo.parse_idx(b"\x01" + good[1:])
    with pytest.raises(ValueError, match="unknown IDX element type"):
        demo.parse_idx(good[:2] + b"\x07" + good[3:])
    with pytest.raises(ValueError, match="expected 6"):
        demo.parse_idx(good[:-1])
    with pytest.raises(ValueError, match="truncated"):
        demo.parse_idx(good[:6])


def test_load_fashion_mnist(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"train_x": rng.integers(0, 256, (12, 28, 28)).astype(np.uint8),
              "train_y": rng.integers(0, 10, 12).astype(np.uint8),
              "test_x": rng.integers(0, 256, (5, 28, 28)).astype(np.uint8),
              "test_y": rng.integers(0, 10, 5).astype(np.uint8)}
    for i, (key, stem) in enumerate(demo.FASHION_FILES.items()):
        data = idx_bytes(arrays[key], 0x08, "u1")
        if i % 2:  # mix plain and gzip-compressed files, as downloads come
            (tmp_path / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (tmp_path / stem).write_bytes(data)
    data = demo.load_fashion_mnist(str(tmp_path))
    train = arrays["train_x"].reshape(12, 784).astype(np.float64) / 255
    mean, std = train.mean(), train.std(ddof=1)
    assert data.train_x.shape == (12, 784) and data.test_x.shape == (5, 784)
    np.testing.assert_allclose(data.train_x.numpy(), (train - mean) / std, rtol=1e-4, atol=1e-5)
    test = arrays["test_x"].reshape(5, 784).astype(np.float64) / 255
    np.testing.assert_allclose(data.test_x.numpy(), (test - mean) / std, rtol=1e-4, atol=1e-5)
    assert data.train_y.dtype == torch.int64 and data.train_y.tolist() == arrays["train_y"].tolist()
    assert data.test_y.tolist() == arrays["test_y"].tolist()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        demo.load_fashion_mnist(str(tmp_path))


# --------------------------------------------------------------------------
# demo: the tutorial's table and the memory lines
# --------------------------------------------------------------------------
def test_tutorial_rows_match_the_spec():
    torch.manual_seed(0)
    x = torch.randn(10)
    rows = demo.tutorial_rows(x, p=0.5, seeds=(123, 123, 512))
    for r in rows:
        keep = torch.from_numpy(np_keep(r.seed, np.arange(10, dtype=np.uint64), 0.5))
        assert torch.equal(r.keep, keep)
        assert torch.equal(r.output, spec_dropout(x, 0.5, keep))
    assert torch.equal(rows[0].output, rows[1].output)
    assert not torch.equal(rows[0].keep, rows[2].keep)
    table = demo.format_tutorial_table(x, rows).splitlines()
    assert len(table) == 7 and table[0].startswith("input")
    for r, mask_line in zip(rows, table[1::2]):
        assert f"seed = {r.seed}" in mask_line and mask_line.split("|")[1].split().count("keep") == int(r.keep.sum())
    assert "-0.000" not in "\n".join(table)


def test_saved_for_backward_is_the_seed_only():
    x = torch.randn(2, 8, 16, dtype=torch.bfloat16, requires_grad=True)
    assert demo.saved_for_backward(seeddrop.Dropout(0.1), x) == [(torch.int64, (), 8)]
    native = demo.saved_for_backward(nn.Dropout(0.1), x)
    assert sum(b for _, _, b in native) >= x.numel()  # at least one byte per element
    lines = demo.memory_lines((2, 8, 16), p=0.1)
    assert "8 bytes" in lines[2] and "seeddrop.Dropout" in lines[2] and "nn.Dropout" in lines[1]


# --------------------------------------------------------------------------
# demo: model and training
# --------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [nn.Dropout, seeddrop.Dropout])
def test_make_mlp_is_the_classic_architecture(cls):
    model = demo.make_mlp(784, cls)
    kinds = [type(m) for m in model]
    assert kinds == [cls, nn.Linear, nn.ReLU, cls, nn.Linear, nn.ReLU, cls, nn.Linear]
    assert [m.p for m in model if isinstance(m, cls)] == [0.2, 0.5, 0.5]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == [(784, 256), (256, 256), (256, 10)]


def test_training_runs_differ_only_in_dropout():
    """With p = 0 both dropout classes are the identity, so the two runs must agree exactly."""
    gen = torch.Generator().manual_seed(3)
    data = demo.Dataset("synthetic", torch.randn(96, 12, generator=gen), torch.randint(0, 10, (96,), generator=gen),
                        torch.randn(40, 12, generator=gen), torch.randint(0, 10, (40,), generator=gen))
    cfg = demo.TrainConfig(epochs=2, batch_size=32, seed=5)
    histories = []
    for cls in (nn.Dropout, seeddrop.Dropout):
        torch.manual_seed(cfg.seed)
        model = demo.make_mlp(12, cls, p_input=0.0, p_hidden=0.0)
        h = demo.train(model, data, cfg, progress=False)
        histories.append((h.train_loss, h.train_acc, h.test_loss, h.test_acc))
    assert histories[0] == histories[1]
    assert len(histories[0][0]) == 2 and all(math.isfinite(v) for v in histories[0][0])


def test_plot_curves_writes_a_small_png(tmp_path):
    h = demo.History([1.0, 0.5], [0.5, 0.8], [1.1, 0.6], [0.4, 0.7], 1.0)
    path = demo.plot_curves({"nn.Dropout": h, "seeddrop.Dropout": h}, str(tmp_path / "sub" / "c.png"), "t")
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) < 200_000


def test_format_results():
    a = demo.History([0.3], [0.99], [0.2], [0.97], 2.0)
    b = demo.History([0.4], [0.98], [0.25], [0.955], 3.0)
    lines = demo.format_results({"nn.Dropout": a, "seeddrop.Dropout": b}).splitlines()
    assert "| test accuracy | 97.00% | 95.50% |" in lines
    assert "| train accuracy | 99.00% | 98.00% |" in lines


def test_demo_smoke_end_to_end(tmp_path, capsys):
    assert main(["demo", "--smoke", "--no-progress", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "seed 123 twice: identical = True" in out
    assert "seeddrop.Dropout  keeps    8 bytes" in out
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in out.splitlines() if line.startswith("| ")}
    accs = [float(c.strip().rstrip("%")) for c in rows["test accuracy"]]
    assert all(a > 50 for a in accs), accs  # 10 classes: chance is 10 %; both runs learn
    assert (tmp_path / "learning_curves_digits.png").read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------
# the tutorial's baseline kernels
# --------------------------------------------------------------------------
def tl_rand_keep(n: int, seed: int, p: float) -> torch.Tensor:
    """tl.rand(seed, i) > p for i < n: word 0 of Philox4x32-10 at counter (i, 0, 0, 0) with key
    (seed lo, seed hi), bitcast to int32, folded to >= 0 and scaled as
    triton.language.random.uint_to_uniform_float does, compared in fp32."""
    w0 = np_philox4x32_10((np.arange(n, dtype=np.uint64), 0, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))[0]
    signed = w0.astype(np.int64) - (w0 >= 2**31).astype(np.int64) * 2**32
    signed = np.where(signed < 0, -signed - 1, signed).astype(np.float32)
    return torch.from_numpy((signed * np.float32(4.6566127342e-10)) > np.float32(p))


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_dropout_applies_the_given_mask(dtype):
    torch.manual_seed(0)
    x = torch.randn(3001, dtype=dtype)
    keep = torch.rand(3001) > 0.3
    out = baselines.masked_dropout(x, keep, 0.3)
    assert torch.equal(out[~keep], torch.zeros_like(out[~keep]))
    torch.testing.assert_close(out[keep], x[keep] / (1 - 0.3), rtol=2e-7 if dtype == torch.float32 else 1e-7, atol=0)


@needs_interpreter
@pytest.mark.parametrize("seed", [123, 2**40 + 7])
def test_philox_dropout_is_one_philox_call_per_element(seed):
    """The tutorial's seeded kernel keeps element i iff tl.rand(seed, i) > p."""
    torch.manual_seed(1)
    n, p = 5000, 0.5
    x = torch.randn(n) + 10  # no zeros, so out != 0 marks a kept element
    out = baselines.philox_dropout(x, p, seed)
    keep = tl_rand_keep(n, seed, p)
    assert torch.equal(out != 0, keep)
    torch.testing.assert_close(out[keep], x[keep] * 2, rtol=0, atol=0)
    assert abs(int(keep.sum()) - n * (1 - p)) <= binomial_bound(n, 1 - p)


def test_baselines_reject_what_the_tutorial_does_not_handle():
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="contiguous"):
        baselines.philox_dropout(x.t(), 0.5, 1)
    with pytest.raises(ValueError, match="keep must be contiguous"):
        baselines.masked_dropout(x, torch.ones(4, 8, dtype=torch.bool), 0.5)


# --------------------------------------------------------------------------
# bench: options, results, outputs
# --------------------------------------------------------------------------
def bench_args(*argv):
    return build_parser().parse_args(["bench", *argv])


def test_bench_options():
    cfg, smoke = bench.config_from_args(bench_args("--ops", "dropout,variational", "--dtypes", "bf16",
                                                   "--sizes", "1,16", "--p", "0.2"), cuda=True)
    assert not smoke and cfg.ops == ("dropout", "variational") and cfg.dtypes == ("bf16",)
    assert cfg.sizes == (1, 16) and cfg.p == 0.2 and cfg.timer == "cuda" and cfg.compile_backend == "inductor"
    cfg, _ = bench.config_from_args(bench_args("--quick", "--no-compile"), cuda=True)
    assert cfg.sizes == bench.QUICK_SIZES and cfg.dtypes == bench.QUICK_DTYPES and cfg.compile_backend is None
    full, _ = bench.config_from_args(bench_args(), cuda=True)
    assert full.sizes == (1, 16, 256, 2048, 8192) and full.dtypes == ("fp16", "bf16", "fp32", "fp64")
    assert full.inner == (64, 768) and full.ops == bench.OPS
    cfg, smoke = bench.config_from_args(bench_args(), cuda=False)
    assert smoke and cfg.device == "cpu" and cfg.timer == "once" and cfg.compile_backend is None
    assert cfg.tutorial == INTERPRET
    cfg, smoke = bench.config_from_args(bench_args("--allow-cpu"), cuda=False)
    assert not smoke and cfg.timer == "cpu" and cfg.sizes == bench.CPU_SIZES and cfg.inner == (64, 768)
    assert full.rounds == 1
    cfg, _ = bench.config_from_args(bench_args("--rounds", "5"), cuda=True)
    assert cfg.rounds == 5
    for bad in (["--ops", "dropout,nope"], ["--dtypes", "fp8"], ["--sizes", "1,x"], ["--rounds", "0"],
                ["--rounds", "two"]):
        with pytest.raises(SystemExit):
            bench_args(*bad)


def test_available_ops_follow_the_package(monkeypatch):
    monkeypatch.delattr(seeddrop, "sparse_jl", raising=False)
    assert "sparse_jl" not in bench.available_ops(bench.OPS)
    assert bench.available_ops(("dropout", "memory")) == ["dropout", "memory"]


def test_cpu_time_takes_the_median():
    durations = iter([0.0, 0.03, 0.0, 0.0, 0.0])

    def fn():
        import time
        end = time.perf_counter() + next(durations)
        while time.perf_counter() < end:
            pass

    ms = bench.cpu_time(fn, rep_ms=0.0, min_reps=5)
    assert ms < 10  # the one slow call is not the median


def test_measure_reports_failures_instead_of_raising():
    def build():
        raise RuntimeError("boom\nmore")

    ms, traffic, error = bench._measure(lambda fn: 1.0, build)
    assert math.isnan(ms) and traffic == 0 and error == "RuntimeError: boom"
    assert bench._measure(lambda fn: 2.0, lambda: ((lambda: None), 4000)) == (2.0, 4000, "")


def test_measure_all_interleaves_rounds_and_takes_medians():
    order = []
    times = {"a": iter([5.0, 1.0, 2.0]), "b": iter([9.0, 7.0, 8.0]), "c": iter([3.0, RuntimeError("lost")])}

    def timer(fn):
        name = fn()
        order.append(name)
        value = next(times[name])
        if isinstance(value, Exception):
            raise value
        return value

    warmups = []

    def make(name, traffic):
        def fn():
            warmups.append(name)
            return name

        return lambda: (fn, traffic)

    def broken():
        raise ValueError("no input")

    builds = [make("a", 10), make("b", 20), broken, make("c", 30)]
    measured = bench._measure_all(timer, builds, rounds=3)
    assert warmups[:3] == ["a", "b", "c"]  # every callable built and warmed up before any timing
    assert order == ["a", "b", "c", "a", "b", "c", "a", "b"]  # passes over the list; c dropped after failing
    assert measured[0] == (2.0, 10, "") and measured[1] == (8.0, 20, "")
    assert math.isnan(measured[2][0]) and measured[2][2] == "ValueError: no input"
    assert math.isnan(measured[3][0]) and measured[3][1:] == (0, "RuntimeError: lost")
    order.clear()
    times.update(a=iter([4.0]), b=iter([6.0]))
    assert bench._measure_all(timer, builds[:2], rounds=1) == [(4.0, 10, ""), (6.0, 20, "")]


def test_run_with_rounds_names_them_in_the_header():
    cfg = bench.BenchConfig(ops=("dropout",), sizes=(2,), dtypes=("fp32",), inner=(2, 8), device="cpu", timer="cpu",
                            rep_ms=0.0, rounds=2, compile_backend=None, tutorial=False)
    report = bench.run(cfg, progress=False)
    assert "median of 2 interleaved rounds" in report.header
    assert {(r.method, r.direction) for r in report.results} >= {("copy", "fwd"), ("seeddrop", "bwd"), ("native", "bwd")}
    assert not [r for r in report.results if r.error] and all(r.ms > 0 for r in report.results)


def fake_report():
    results = [bench.Result("copy", "fwd", "copy", "bf16", 16, "16x8", 0.25, 2.0, 1.0),
               bench.Result("dropout", "fwd", "seeddrop", "bf16", 16, "16x8", 0.5, 1.0, 2.0),
               bench.Result("dropout", "fwd", "native", "bf16", 16, "16x8", math.nan, math.nan, math.nan, "OOM"),
               bench.Result("dropout", "bwd", "seeddrop", "bf16", 16, "16x8", 0.75, 0.5, 3.0)]
    memory = [{"model": "m", "method": "native", "saved_MiB": 3.0, "held_after_forward_MiB": None, "peak_fwd_bwd_MiB": None},
              {"model": "m", "method": "seeddrop", "saved_MiB": 2.0, "held_after_forward_MiB": 2.5, "peak_fwd_bwd_MiB": 4.0}]
    return bench.Report(results, memory, "header", (2, 4))


def test_markdown_table():
    lines = bench.markdown(fake_report()).splitlines()
    assert "| dtype | N | copy ms (GB/s) | seeddrop | native | seeddrop GB/s |" in lines
    assert "| bf16 | 16 | 0.2500 (2) | 0.5000 (2.00x) | error | 1 |" in lines
    assert "| bf16 | 16 | 0.2500 (2) | 0.7500 (3.00x) | 0.5 |" in lines
    assert "| seeddrop | 2.00 | 2.50 | 4.00 |" in lines and "| native | 3.00 | - | - |" in lines
    assert lines[-1] == "- dropout fwd native bf16 N=16: OOM"


def test_write_outputs(tmp_path):
    report = fake_report()
    paths = bench.write_outputs(report, str(tmp_path / "out"))
    names = sorted(p.rsplit("/", 1)[1] for p in paths)
    assert names == ["bench.csv", "bench.md", "dropout_bwd.png", "dropout_fwd.png", "memory.csv"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "bench.csv")))
    assert [(r["op"], r["method"], float(r["ms"])) for r in rows[:2]] == [("copy", "copy", 0.25), ("dropout", "seeddrop", 0.5)]
    assert (tmp_path / "out" / "dropout_fwd.png").read_bytes()[:8] == PNG_MAGIC


def test_memory_report_counts_saved_bytes():
    mem = bench.MemoryConfig(layers=3, width=8, batch=2, seq=4, dtype="fp32")
    native, seeded = bench.memory_report(mem, 0.5, "cpu")
    activation = 2 * 4 * 8 * 4  # bytes of one [2, 4, 8] fp32 activation
    # seeddrop: each Linear's input (x, then two dropout outputs) and three 8-byte seeds
    assert seeded["method"] == "seeddrop" and seeded["saved_MiB"] * bench.MiB == 3 * activation + 3 * 8
    # native additionally keeps a mask (at least a byte per element) per dropout layer
    assert native["saved_MiB"] * bench.MiB >= 3 * activation + 3 * (activation // 4)
    assert seeded["peak_fwd_bwd_MiB"] is None  # CUDA only


def test_compiled_baselines_compile_once_per_dtype(monkeypatch):
    """The torch.compile baselines go through dynamo (a counting backend here): one graph per
    function and dtype serves every N > 1, and nothing is compiled inside a timed call."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled_while_timed = []

    def make_timer(cfg):
        def time_fn(fn):
            before = len(graphs)
            fn()
            compiled_while_timed.append(len(graphs) - before)
            return 1.0

        return time_fn

    monkeypatch.setattr(bench, "make_timer", make_timer)
    ops = tuple(op for op in ("dropout", "variational", "dropout_add") if op in bench.available_ops(bench.OPS))
    cfg = bench.BenchConfig(ops=ops, dtypes=("bf16", "fp32"), sizes=(2, 3, 5), inner=(4, 8), device="cpu",
                            timer="once", compile_backend=counting_backend, tutorial=False)
    report = bench.run(cfg, progress=False)
    assert not [r for r in report.results if r.error]
    assert len([r for r in report.results if r.method.endswith("compiled")]) == len(ops) * 2 * 3
    assert len(graphs) == len(ops) * 2
    assert compiled_while_timed and not any(compiled_while_timed)


def test_bench_cpu_smoke_end_to_end(tmp_path, capsys):
    """No GPU: bench explains, runs the tiny smoke pass through every op family and exits 0."""
    assert main(["bench", "--out", str(tmp_path), "--dtypes", "bf16,fp32", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "timings need a CUDA GPU" in captured.err
    assert captured.out.rstrip().splitlines()[-1].startswith("| seeddrop |")  # the memory table ends the output
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert not [r for r in rows if r["error"]]
    ops = bench.available_ops(bench.OPS)
    found = {(r["op"], r["direction"], r["method"]) for r in rows if r["dtype"] == "bf16"}
    expected = {("copy", "fwd", "copy")}
    tutorial = {("dropout", "fwd", "tutorial_mask"), ("dropout", "fwd", "tutorial_philox")}
    expected |= {("dropout", d, m) for d in ("fwd", "bwd") for m in ("seeddrop", "native")} | (tutorial if INTERPRET else set())
    expected |= {("per_row", d, "seeddrop") for d in ("fwd", "bwd")}
    expected |= {("variational", d, m) for d in ("fwd", "bwd") for m in ("seeddrop", "conventional")}
    if "dropout_add" in ops:
        expected |= {("dropout_add", d, m) for d in ("fwd", "bwd") for m in ("seeddrop", "unfused")}
    if "sparse_jl" in ops:
        expected |= {("sparse_jl", d, m) for d in ("fwd", "bwd") for m in ("seeddrop", "dense")}
    assert found == expected
    assert {r["dtype"] for r in rows} == {"bf16", "fp32"} and {r["rows"] for r in rows} == {"1", "3"}
    assert not [r for r in rows if r["op"] == "sparse_jl" and r["dtype"] != "bf16"]
    for r in rows:
        copy_ms = next(float(c["ms"]) for c in rows if c["op"] == "copy" and (c["dtype"], c["rows"]) == (r["dtype"], r["rows"]))
        assert float(r["x_copy"]) == pytest.approx(float(r["ms"]) / copy_ms)
    for op, direction in {(o, d) for o, d, _ in found if o != "copy"}:
        assert (tmp_path / f"{op}_{direction}.png").read_bytes()[:8] == PNG_MAGIC
    memory = list(csv.DictReader(open(tmp_path / "memory.csv")))
    assert [m["method"] for m in memory] == ["native", "seeddrop"]
    assert float(memory[1]["saved_MiB"]) < float(memory[0]["saved_MiB"])


# --------------------------------------------------------------------------
# on the GPU (the lead runs these on the H100)
# --------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_small_sweep_on_cuda(tmp_path):
    cfg = bench.BenchConfig(sizes=(1, 16), dtypes=("bf16", "fp32"), warmup_ms=1.0, rep_ms=5.0,
                            memory=bench.MemoryConfig(layers=2, width=64, batch=2, seq=16))
    report = bench.run(cfg, progress=False)
    assert not [r for r in report.results if r.error], bench.markdown(report)
    methods = {(r.op, r.method) for r in report.results}
    assert {("dropout", m) for m in ("seeddrop", "native", "compiled", "tutorial_mask", "tutorial_philox")} <= methods
    assert all(r.ms > 0 for r in report.results)
    native, seeded = report.memory
    assert seeded["peak_fwd_bwd_MiB"] < native["peak_fwd_bwd_MiB"]
    bench.write_outputs(report, str(tmp_path))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_baselines_on_cuda():
    torch.manual_seed(0)
    x = torch.randn(70_000, device="cuda") + 10
    keep = torch.rand(70_000, device="cuda") > 0.3
    out = baselines.masked_dropout(x, keep, 0.3)
    assert torch.equal(out == 0, ~keep)
    out = baselines.philox_dropout(x, 0.5, 123)
    assert torch.equal((out != 0).cpu(), tl_rand_keep(70_000, 123, 0.5))
