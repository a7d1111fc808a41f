"""Model conversion: swap torch's dropout modules for seeddrop's."""
from __future__ import annotations

import copy

from torch import nn

from .modules import Dropout, VariationalDropout

# nn.DropoutNd zeroes whole channels of [N, C, *spatial] (or unbatched [C, *spatial]) input:
# a mask shared along the trailing spatial dims.
_CHANNEL_DROPOUT_SHARED_DIMS = {nn.Dropout1d: (-1,), nn.Dropout2d: (-2, -1), nn.Dropout3d: (-3, -2, -1)}


def replace_dropout(module: nn.Module, *, inplace: bool = True, channel_dropout: bool = False) -> nn.Module:
    """Replace every nn.Dropout in `module` by seeddrop.Dropout with the same p and inplace
    flag (and, with channel_dropout=True, nn.Dropout1d/2d/3d by VariationalDropout sharing the
    mask over the spatial dims). inplace=False converts a deep copy. Returns the model.

    Dropout applied through functional calls (e.g. nn.MultiheadAttention's attention-weight
    dropout, SDPA's dropout_p) is not a module and stays as it is.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, but got {type(module).__name__}")
    if not inplace:
        module = copy.deepcopy(module)
    _replace_children(module, channel_dropout)
    return module


def _replace_children(module: nn.Module, channel_dropout: bool) -> None:
    for name, child in module.named_children():
        replacement = None
        if type(child) is nn.Dropout:
            replacement = Dropout(child.p, child.inplace)
        elif channel_dropout and type(child) in _CHANNEL_DROPOUT_SHARED_DIMS:
            replacement = VariationalDropout(child.p, _CHANNEL_DROPOUT_SHARED_DIMS[type(child)], child.inplace)
        if replacement is not None:
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            _replace_children(child, channel_dropout)
