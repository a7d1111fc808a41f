"""The newcomer demo behind ``python -m seeddrop demo`` (what ``make demo`` runs).

1. The Triton low-memory-dropout tutorial's table: one input row, its output with
   seed 123 twice (identical) and with seed 512 (different), keep masks shown.
2. What autograd keeps for backward: nn.Dropout vs seeddrop.Dropout (the seed).
3. The classic dropout MLP (Srivastava et al. 2014: two hidden layers of 256, ReLU,
   dropout 0.2 on the input and 0.5 after each hidden layer, SGD with momentum)
   trained twice, with nn.Dropout and with seeddrop.Dropout, on scikit-learn's
   handwritten digits (or Fashion-MNIST IDX files with --fashion-mnist DIR),
   learning curves written to a PNG.
4. On a GPU: seeddrop vs torch native vs torch.compile at [8192, 64*768] bf16.
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import seeddrop

from . import bench
from ._common import TRITON_INTERPRET
from .bench import MiB


# --------------------------------------------------------------------------
# 1. the tutorial's table
# --------------------------------------------------------------------------
@dataclass
class SeededRow:
    seed: int
    keep: torch.Tensor  # bool
    output: torch.Tensor


def tutorial_rows(x: torch.Tensor, p: float = 0.5, seeds: Sequence[int] = (123, 123, 512)) -> List[SeededRow]:
    """seeddrop.dropout(x, p, seed=s) and its keep mask for each seed."""
    return [SeededRow(s, seeddrop.dropout_mask(x.shape, p, s, device=x.device), seeddrop.dropout(x, p, seed=s))
            for s in seeds]


def format_tutorial_table(x: torch.Tensor, rows: List[SeededRow]) -> str:
    cells = [("input", [f"{v:.3f}" for v in x.tolist()])]
    for r in rows:
        cells.append((f"keep mask (seed = {r.seed})", ["keep" if k else "." for k in r.keep.tolist()]))
        cells.append((f"output    (seed = {r.seed})", [f"{v + 0.0:.3f}" for v in r.output.tolist()]))  # -0.0 -> 0.0
    label_w = max(len(label) for label, _ in cells)
    col_w = max(len(c) for _, vals in cells for c in vals)
    return "\n".join(f"{label:<{label_w}} | " + " ".join(f"{c:>{col_w}}" for c in vals) for label, vals in cells)


# --------------------------------------------------------------------------
# 2. memory kept for backward
# --------------------------------------------------------------------------
def saved_for_backward(fn, x: torch.Tensor) -> List[Tuple[torch.dtype, tuple, int]]:
    """(dtype, shape, bytes) of each distinct storage autograd saves while running fn(x),
    leaving out x itself."""
    _, saved = bench.saved_tensor_bytes(lambda: fn(x), exclude=[x])
    return list(saved.values())


def memory_lines(shape: Sequence[int] = (8, 1024, 768), dtype: torch.dtype = torch.bfloat16, p: float = 0.1,
                 device="cpu") -> List[str]:
    """What nn.Dropout and seeddrop.Dropout keep for backward for an activation of `shape`, measured."""
    x = torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)
    size = x.numel() * x.element_size()
    lines = [f"x = {list(shape)} {str(dtype).replace('torch.', '')} ({_bytes(size)}), p = {p}, device {x.device.type}:"]
    for name, module in (("nn.Dropout", nn.Dropout(p)), ("seeddrop.Dropout", seeddrop.Dropout(p))):
        saved = saved_for_backward(module, x)
        total = sum(b for _, _, b in saved)
        what = ", ".join(f"{str(d).replace('torch.', '')}{list(s)}" for d, s, _ in saved) or "nothing"
        lines.append(f"  {name:<17} keeps {_bytes(total):>10}  ({what})")
    if x.device.type != "cuda":
        lines.append(f"  (on CUDA, torch's fused dropout keeps a bool mask instead: {_bytes(x.numel())}; "
                     "on the CPU it keeps the scaled noise in x's dtype)")
    return lines


def _bytes(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{n / MiB:.2f} MiB"


# --------------------------------------------------------------------------
# 3. data
# --------------------------------------------------------------------------
@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # float32 [n, features], standardized
    train_y: torch.Tensor  # int64 [n]
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device) -> "Dataset":
        return Dataset(self.name, *(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))

    def subset(self, n_train: int, n_test: int) -> "Dataset":
        return Dataset(self.name, self.train_x[:n_train], self.train_y[:n_train], self.test_x[:n_test], self.test_y[:n_test])


def _standardize(train: torch.Tensor, test: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(), train.std()
    return (train - mean) / std, (test - mean) / std


def load_digits_data(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1797 8x8 images, shipped with the package),
    a stratified train/test split, standardized with the training set's mean and std."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("the demo needs scikit-learn: pip install scikit-learn (or pip install seeddrop[demo])")
    digits = load_digits()
    xtr, xte, ytr, yte = train_test_split(digits.data, digits.target, test_size=test_fraction,
                                          random_state=seed, stratify=digits.target)
    xtr, xte = _standardize(torch.tensor(xtr, dtype=torch.float32), torch.tensor(xte, dtype=torch.float32))
    return Dataset("handwritten digits (scikit-learn, 8x8)", xtr, torch.tensor(ytr), xte, torch.tensor(yte))


# IDX (http://yann.lecun.com/exdb/mnist/): magic 0x00 0x00 <type> <ndim>, ndim big-endian
# uint32 sizes, then the data in big-endian C order.
IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(data: bytes, name: str = "IDX data"):
    """The numpy array an IDX file's bytes hold."""
    import numpy as np

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: not an IDX file (magic {data[:4].hex() or 'missing'})")
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_TYPES[type_code])
    count = math.prod(dims)
    if len(data) != header + count * dtype.itemsize:
        raise ValueError(f"{name}: {len(data) - header} data bytes for shape {dims} of {dtype}, "
                         f"expected {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str):
    """Read an IDX file (gzip-compressed when its name ends in .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), path)


FASHION_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
                 "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def load_fashion_mnist(directory: str) -> Dataset:
    """Fashion-MNIST from its four IDX files in `directory` (plain or .gz): 28x28 images
    flattened to 784 features, standardized with the training set's mean and std."""
    arrays = {}
    for key, stem in FASHION_FILES.items():
        candidates = [os.path.join(directory, stem + ext) for ext in ("", ".gz")]
        path = next((c for c in candidates if os.path.exists(c)), None)
        if path is None:
            raise FileNotFoundError(f"--fashion-mnist: no {stem} or {stem}.gz in {directory}")
        arrays[key] = read_idx(path)
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"--fashion-mnist: {part} images {images.shape} and labels {labels.shape} do not match")
    xtr = torch.tensor(arrays["train_x"].reshape(len(arrays["train_x"]), -1), dtype=torch.float32) / 255
    xte = torch.tensor(arrays["test_x"].reshape(len(arrays["test_x"]), -1), dtype=torch.float32) / 255
    xtr, xte = _standardize(xtr, xte)
    return Dataset(f"Fashion-MNIST ({xtr.shape[1]} features)", xtr, torch.tensor(arrays["train_y"], dtype=torch.int64),
                   xte, torch.tensor(arrays["test_y"], dtype=torch.int64))


# --------------------------------------------------------------------------
# 3. model and training
# --------------------------------------------------------------------------
def make_mlp(in_features: int, dropout_cls, hidden: int = 256, classes: int = 10,
             p_input: float = 0.2, p_hidden: float = 0.5) -> nn.Sequential:
    """in -> 256 -> 256 -> classes, ReLU, dropout p_input on the input and p_hidden after each hidden layer."""
    return nn.Sequential(
        dropout_cls(p_input), nn.Linear(in_features, hidden), nn.ReLU(),
        dropout_cls(p_hidden), nn.Linear(hidden, hidden), nn.ReLU(),
        dropout_cls(p_hidden), nn.Linear(hidden, classes),
    )


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0


@dataclass
class History:
    """Per epoch: mean minibatch loss in training mode (dropout on), and loss/accuracy in eval mode."""

    train_loss: List[float] = field(default_factory=list)
    train_acc: List[float] = field(default_factory=list)
    test_loss: List[float] = field(default_factory=list)
    test_acc: List[float] = field(default_factory=list)
    seconds: float = 0.0


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 8192) -> Tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch])
        loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return loss / len(x), correct / len(x)


def train(model: nn.Module, data: Dataset, cfg: TrainConfig, desc: str = "train", progress: bool = True) -> History:
    """SGD with momentum on cross-entropy, learning rate cosine-annealed to 0 over the epochs;
    data order from a generator seeded with cfg.seed, so two runs differ only in their dropout masks."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    hist = History()
    bar = _epoch_bar(cfg.epochs, desc, progress)
    start = time.perf_counter()
    n = len(data.train_x)
    for _ in bar:
        model.train()
        order = torch.randperm(n, generator=order_gen).to(data.train_x.device)
        total = torch.zeros((), device=data.train_x.device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        schedule.step()
        hist.train_loss.append(total.item() / n)
        _, train_acc = evaluate(model, data.train_x, data.train_y)
        test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
        hist.train_acc.append(train_acc)
        hist.test_loss.append(test_loss)
        hist.test_acc.append(test_acc)
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"loss {hist.train_loss[-1]:.3f} test acc {test_acc:.1%}")
    hist.seconds = time.perf_counter() - start
    return hist


def _epoch_bar(epochs: int, desc: str, progress: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return range(epochs)
    return tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, file=sys.stderr)


DROPOUTS = {"nn.Dropout": nn.Dropout, "seeddrop.Dropout": seeddrop.Dropout}


def compare(data: Dataset, cfg: TrainConfig, device="cpu", progress: bool = True) -> Dict[str, History]:
    """Train the MLP with each dropout class from the same initial weights and data order.
    On the CPU with one thread: for a model this small threads only add overhead (several
    times slower on a busy machine)."""
    data = data.to(device)
    histories = {}
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        for name, cls in DROPOUTS.items():
            torch.manual_seed(cfg.seed)
            model = make_mlp(data.train_x.shape[1], cls).to(device)
            torch.manual_seed(cfg.seed + 1)  # the dropout masks' randomness
            histories[name] = train(model, data, cfg, desc=f"{name:<16}", progress=progress)
    finally:
        torch.set_num_threads(threads)
    return histories


def format_results(histories: Dict[str, History]) -> str:
    names = list(histories)
    rows = [("train loss (last epoch, dropout on)", lambda h: f"{h.train_loss[-1]:.4f}"),
            ("train accuracy", lambda h: f"{h.train_acc[-1]:.2%}"),
            ("test accuracy", lambda h: f"{h.test_acc[-1]:.2%}"),
            ("best test accuracy", lambda h: f"{max(h.test_acc):.2%}"),
            ("training time", lambda h: f"{h.seconds:.1f} s")]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(histories[n]) for n in names) + " |")
    return "\n".join(lines)


def plot_curves(histories: Dict[str, History], path: str, title: str, dpi: int = 80) -> Optional[str]:
    """Training loss and test accuracy per epoch for each run, side by side, as a PNG."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    fig = Figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (name, h) in enumerate(histories.items()):
        epochs = range(1, len(h.train_loss) + 1)
        color = f"C{i}"
        ax_loss.plot(epochs, h.train_loss, color=color, label=f"{name} train (dropout on)")
        ax_loss.plot(epochs, h.test_loss, "--", color=color, label=f"{name} test")
        ax_acc.plot(epochs, [a * 100 for a in h.test_acc], color=color, label=f"{name} test")
        ax_acc.plot(epochs, [a * 100 for a in h.train_acc], ":", color=color, label=f"{name} train")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# --------------------------------------------------------------------------
# 4. GPU benchmark
# --------------------------------------------------------------------------
def gpu_benchmark(device="cuda", rows: int = 8192) -> str:
    """seeddrop vs native vs torch.compile, forward and backward, at [rows, 64*768] bf16."""
    cfg = bench.BenchConfig(ops=("dropout",), dtypes=("bf16",), sizes=(rows,), tutorial=False,
                            device=str(device), warmup_ms=10.0, rep_ms=50.0)
    return bench.markdown(bench.run(cfg, progress=False))


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--fashion-mnist", metavar="DIR", default=None,
                        help="train on Fashion-MNIST's IDX files in DIR (train-images-idx3-ubyte[.gz], "
                             "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) "
                             "with the original 784-256-256-10 setup instead of scikit-learn's digits")
    parser.add_argument("--out", default="demo_out", help="folder for the learning-curve PNG (default ./demo_out)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 30 digits, 10 Fashion-MNIST)")
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: 64 digits, 128 Fashion-MNIST)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05; momentum 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, data order and dropout (default 0)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # a seconds-long pass, for tests


def backend_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"CUDA ({torch.cuda.get_device_name(device)}): the Triton kernels"
    return "CPU: " + ("the Triton kernels in Triton's interpreter" if TRITON_INTERPRET
                      else "the pure-PyTorch reference of the mask stream")


def main(args) -> int:
    """Run the demo; --smoke shrinks everything to a seconds-long pass (for tests)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()
    print(f"seeddrop {seeddrop.__version__} demo, running on {backend_name(device)}\n")

    print("1. Seeded dropout, as in Triton's low-memory-dropout tutorial (p = 0.5): the mask is a pure "
          "function of the seed,\n   so the same seed gives the same output and backward can regenerate "
          "the mask instead of storing it.\n")
    torch.manual_seed(args.seed)
    x = torch.randn(10, device=device)
    rows = tutorial_rows(x)
    print(format_tutorial_table(x, rows))
    same = torch.equal(rows[0].output, rows[1].output)
    differ = int((rows[0].keep != rows[2].keep).sum())
    print(f"\nseed 123 twice: identical = {same}; seed 512: {differ} of {x.numel()} keep decisions differ from seed 123\n")

    print("2. Memory autograd keeps between forward and backward for one dropout layer, measured:\n")
    shape = (2, 8, 16) if args.smoke else (8, 1024, 768)
    print("\n".join(memory_lines(shape, device=device)) + "\n")

    fashion = args.fashion_mnist is not None
    data = load_fashion_mnist(args.fashion_mnist) if fashion else load_digits_data(seed=args.seed)
    cfg = TrainConfig(epochs=args.epochs or (10 if fashion else 30), batch_size=args.batch_size or (128 if fashion else 64),
                      lr=args.lr, seed=args.seed)
    if args.smoke:
        data = data.subset(384, 128)
        cfg.epochs, cfg.batch_size = args.epochs or 2, args.batch_size or 32
    features = data.train_x.shape[1]
    print(f"3. The classic dropout MLP ({features}-256-256-10, ReLU, dropout 0.2 on the input and 0.5 after each hidden "
          f"layer,\n   SGD lr {cfg.lr} momentum {cfg.momentum}, batch {cfg.batch_size}, {cfg.epochs} epochs) on "
          f"{data.name}: {len(data.train_x)} train / {len(data.test_x)} test samples,\n   trained from the same "
          "initial weights with nn.Dropout and with seeddrop.Dropout.\n")
    histories = compare(data, cfg, device=device, progress=not args.no_progress)
    print()
    print(format_results(histories))
    gap = abs(histories["nn.Dropout"].test_acc[-1] - histories["seeddrop.Dropout"].test_acc[-1])
    print(f"\ntest accuracy gap: {gap:.2%} (different random masks, same training otherwise)")
    name = "fashion_mnist" if fashion else "digits"
    path = plot_curves(histories, os.path.join(args.out, f"learning_curves_{name}.png"),
                       f"{data.name}: nn.Dropout vs seeddrop.Dropout")
    if path:
        print(f"learning curves: {os.path.abspath(path)}")

    if device.type == "cuda" and not args.smoke:
        print("\n4. Dropout on the GPU at [8192, 64*768] bf16: seeddrop vs torch native vs torch.compile "
              "(python -m seeddrop bench for the full sweep):\n")
        print(gpu_benchmark(device))
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s")
    return 0
