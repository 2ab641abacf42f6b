"""Self-supervised methods (family ``ssl``): SimCLR, MoCo v2, BYOL, SwAV, MAE, SimMIM, CPC, CLIP. Each wraps
an encoder from the ``classic`` or ``transformers`` family; the ``ssl`` training loop (archlab/train/ssl.py)
trains them (CLIP: the ``clip`` loop, archlab/train/clip.py) and ``archlab probe`` measures their
representations. Importing this package registers them."""

from . import byol, clip, cpc, mae, moco, simclr, simmim, swav  # noqa: F401
