"""Classic models: logistic regression, MLP, CNNs, LeNet-5, CIFAR ResNets, MobileNetV2, EfficientNet and recurrent
networks.

Importing this package registers every model of the ``classic`` family.
"""

from . import cnn, dp_cnn, efficientnet, lenet, logistic, mlp, mobilenetv2, resnet, rnn  # noqa: F401
