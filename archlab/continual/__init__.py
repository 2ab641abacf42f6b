"""Continual learning: one model trained on a stream of tasks (``train.loop = "continual"``).

Task streams (Split / Permuted MNIST in the Task-, Domain- and Class-IL scenarios of van de Ven &
Tolias 2019) are in :mod:`~archlab.continual.streams`, the accuracy matrix and its summaries in
:mod:`~archlab.continual.metrics`, and one method per file: fine-tuning (``base``), EWC and Online
EWC (``ewc``), SI (``si``), LwF (``lwf``), experience replay and joint training (``replay``),
generative replay (``dgr``), PackNet (``packnet``),
progressive networks (``progressive``).
"""

from . import base, dgr, ewc, lwf, packnet, progressive, replay, si  # noqa: F401
from .base import METHODS, Method, MethodContext  # noqa: F401
