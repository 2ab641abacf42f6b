"""Meta-learning and few-shot classification: learners trained on episodes (``train.loop = "episodic"``).

One method per file: Prototypical Networks (``protonet``), Matching Networks (``matching_net``),
MAML / first-order MAML (``maml``) and Reptile (``reptile``), all on the 4-block convolutional
network of :mod:`archlab.meta.conv4`; zero-shot learning from class descriptions (``train.loop = "zeroshot"``):
the bilinear compatibility model ``compat_zsl`` (:mod:`archlab.meta.compatibility`) and ESZSL
(:mod:`archlab.meta.zeroshot`, scored by :mod:`archlab.meta.gzsl`). Importing this package registers them (family
``meta``).
"""

from . import compatibility, maml, matching, protonet, reptile  # noqa: F401
