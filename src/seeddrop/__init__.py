"""seeddrop: seeded dropout kernels whose only state is a seed.

See docs/mask_stream.md for the mask stream every op follows.
"""
from .ops.dropout import dropout, dropout_mask
from .modules import Dropout, VariationalDropout

__version__ = "0.1.0"

__all__ = ["dropout", "dropout_mask", "Dropout", "VariationalDropout"]
