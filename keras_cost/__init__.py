"""keras-cost: make Keras 3 models cheaper to train and to deploy."""

from keras_cost import datasets

__version__ = "0.1.0"
