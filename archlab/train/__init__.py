"""Training loops, one per paradigm: each is a :class:`archlab.engine.loop.Loop` registered by name
(``train.loop`` in a recipe). Importing this package registers them all; the engine's
:class:`~archlab.engine.driver.Driver` runs them.

By family: classic ``supervised`` (and ``weighted_supervised``, a weight per example); graph ``node``,
``graph_level``, ``link``, ``temporal``; transformers ``lm``,
``lm_finetune``, ``mlm``, ``seq2seq``; reinforcement learning ``rl``; generative ``gan``, ``image_gan``,
``cycle_gan``, ``elbo``, ``adversarial_ae``, ``diffusion``, ``score``;
self-supervised ``ssl``, image-text ``clip``; meta-learning ``episodic``, zero-shot ``zeroshot``; continual
``stream``; federated ``rounds`` (and DP-SGD ``private``); architecture search ``darts``; quantum ``vqe``, ``qaoa``,
``born``; compression ``distill``, ``prune``, ``qat``."""

from . import (  # noqa: F401
    adversarial_ae,
    born,
    clip,
    cycle_gan,
    darts,
    diffusion,
    distill,
    elbo,
    episodic,
    gan,
    graph_level,
    image_gan,
    link,
    lm,
    lm_finetune,
    mlm,
    node,
    private,
    prune,
    qaoa,
    qat,
    rl,
    rounds,
    score,
    seq2seq,
    ssl,
    stream,
    supervised,
    temporal,
    vqe,
    weighted,
    zeroshot,
)
