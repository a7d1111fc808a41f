"""nn.Module wrappers around the seeddrop ops."""
from __future__ import annotations

import torch
from torch import nn

from ._common import check_p, normalize_dims
from .ops.dropout import dropout


class Dropout(nn.Module):
    """Drop-in for torch.nn.Dropout: each training forward draws a fresh seed from
    torch's generator; backward keeps only that seed."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        self.p = check_p(p)
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
