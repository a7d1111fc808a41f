"""seeddrop: seeded dropout kernels whose only state is a seed.

See docs/mask_stream.md for the mask stream every op follows.
"""
from .ops.dropout import dropout, dropout_mask
from .ops.dropout_add import dropout_add
from .modules import Dropout, DropoutAdd, VariationalDropout
from .modules import SparseJL
from .ops.sparse_jl import jl_matrix, sparse_jl
from .convert import replace_dropout
from ._common import seed_generator

__version__ = "0.1.0"

__all__ = ["dropout", "dropout_mask", "Dropout", "VariationalDropout", "replace_dropout", "seed_generator", "dropout_add", "DropoutAdd",
           "sparse_jl", "jl_matrix", "SparseJL"]
