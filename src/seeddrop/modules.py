"""nn.Module wrappers around the seeddrop ops."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ._common import check_p
from .ops.dropout import dropout
from .ops.dropout_add import check_activation, dropout_add
from .ops.sparse_jl import fixed_seed, jl_params, sparse_jl


class Dropout(nn.Module):
    """Drop-in for torch.nn.Dropout: each training forward draws a fresh seed from
    torch's generator; backward keeps only that seed."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        check_p(p)
        self.p = p  # kept as given, as torch.nn.Dropout does
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class VariationalDropout(nn.Module):
    """Locked dropout: one mask per forward, shared along `shared_dims`.

    The default shares over time for [batch, time, features]; shared_dims=(0,) gives
    AWD-LSTM's LockedDropout for [time, batch, features].
    """

    def __init__(self, p: float = 0.5, shared_dims=(1,), inplace: bool = False) -> None:
        super().__init__()
        self.p = check_p(p)
        self.shared_dims = tuple(shared_dims) if not isinstance(shared_dims, int) else (shared_dims,)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.inplace, shared_dims=self.shared_dims)

    def extra_repr(self) -> str:
        return f"p={self.p}, shared_dims={self.shared_dims}, inplace={self.inplace}"


class DropoutAdd(nn.Module):
    """Fused residual dropout: forward(x, residual, bias=None) = residual + dropout(act(x + bias)).
    Each training forward draws a fresh seed; eval mode returns residual + act(x + bias)."""

    def __init__(self, p: float = 0.5, activation=None) -> None:
        super().__init__()
        self.p = check_p(p)
        check_activation(activation)
        self.activation = activation

    def forward(self, x: torch.Tensor, residual: torch.Tensor, bias=None) -> torch.Tensor:
        return dropout_add(x, residual, self.p, self.training, bias=bias, activation=self.activation)

    def extra_repr(self) -> str:
        return f"p={self.p}, activation={self.activation!r}"


class SparseJL(nn.Module):
    """Seeded very sparse random projection y = x @ S.T, [..., in_features] -> [..., out_features]
    (see seeddrop.sparse_jl); S is generated inside the kernel and costs no memory. The seed is
    fixed at construction (drawn from torch's generator when None) and kept as the int64 buffer
    `seed`, so a state_dict round trip reproduces the same projection. The buffer
    `stream_version` records the projection stream that defines S (2: docs/sparse_jl.md);
    loading a state_dict of another version (or none: saved before 2026-11-30) warns, since
    the same seed then gives another S."""

    STREAM_VERSION = 2

    def __init__(self, in_features: int, out_features: int, density=None, seed=None) -> None:
        super().__init__()
        params = jl_params(out_features, in_features, density)
        self.in_features, self.out_features = params.in_features, params.out_features
        self.density = density  # as given; None means 1 / sqrt(in_features)
        self.register_buffer("seed", fixed_seed(seed))
        self.register_buffer("stream_version", torch.tensor(self.STREAM_VERSION))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "stream_version"
        version = state_dict.get(key)
        if prefix + "seed" in state_dict and (version is None or (not version.is_meta
                                                                  and int(version) != self.STREAM_VERSION)):
            found = "none (saved before 2026-11-30: version 1)" if version is None else int(version)
            warnings.warn(f"SparseJL state_dict with projection stream version {found}; this seeddrop "
                          f"generates S with version {self.STREAM_VERSION}, so the same seed gives another "
                          f"projection (docs/sparse_jl.md)", stacklevel=2)
            state_dict[key] = self.stream_version.detach().clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and (x.dim() == 0 or x.shape[-1] != self.in_features):
            raise ValueError(f"SparseJL expects inputs of shape [..., {self.in_features}], but got {tuple(x.shape)}")
        return sparse_jl(x, self.out_features, self.seed, density=self.density)

    def extra_repr(self) -> str:
        density = jl_params(self.out_features, self.in_features, self.density).density
        return f"in_features={self.in_features}, out_features={self.out_features}, density={density:.6g}"
