"""Training loops, one per paradigm: each is a :class:`archlab.engine.loop.Loop` registered by name
(``train.loop`` in a recipe). Importing this package registers them all; the engine's
:class:`~archlab.engine.driver.Driver` runs them."""

from . import gan, graph_level, link, lm, mlm, node, private, rl, rounds, seq2seq, supervised, temporal  # noqa: F401
from . import diffusion, elbo, image_gan  # noqa: F401  (generative models; archlab.models.generative)
from . import darts  # noqa: F401  (architecture search; archlab.models.search)
from . import episodic, stream  # noqa: F401  (meta-learning: archlab.meta; continual: archlab.continual)
from . import ssl  # noqa: F401  (self-supervised pretraining; archlab.models.ssl)
from . import born, qaoa, vqe  # noqa: F401  (variational quantum algorithms; archlab.quantum)
