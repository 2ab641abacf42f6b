"""Federated learning: data partitions, client algorithms (FedAvg/FedSGD, FedProx, SCAFFOLD) and server
optimizers (FedAvgM, FedAdagrad, FedYogi, FedAdam). The rounds loop that runs them is
:mod:`archlab.train.rounds` (``train.loop = "federated"``); see docs/federated.md."""

from .fedavg import FedAvg
from .fedprox import FedProx
from .partition import SCHEMES, class_counts, partition, plot_counts
from .scaffold import Scaffold
from .server import ServerOptConfig, ServerOptimizer

__all__ = ["SCHEMES", "FedAvg", "FedProx", "Scaffold", "ServerOptConfig", "ServerOptimizer", "class_counts",
           "partition", "plot_counts"]
