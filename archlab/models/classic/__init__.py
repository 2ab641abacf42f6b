"""Classic models: logistic regression, MLP, CNNs, LeNet-5, CIFAR ResNets and recurrent networks.

Importing this package registers every model of the ``classic`` family.
"""

from . import cnn, dp_cnn, lenet, logistic, mlp, resnet, rnn  # noqa: F401
