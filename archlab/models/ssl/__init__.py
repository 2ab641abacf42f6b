"""Self-supervised methods (family ``ssl``): SimCLR, MoCo v2, BYOL, SwAV, MAE. Each wraps an encoder from the
``classic`` or ``transformers`` family; the ``ssl`` training loop (archlab/train/ssl.py) trains them
and ``archlab probe`` measures their representations. Importing this package registers them."""

from . import byol, mae, moco, simclr, swav  # noqa: F401
