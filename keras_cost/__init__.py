"""keras-cost: make Keras 3 models cheaper to train and to deploy.

Importing `keras_cost` registers every keras-cost class with Keras, so that
`keras.models.load_model` reads `.keras` files that use them without a
`custom_objects` scope.
"""

from keras_cost import callbacks
from keras_cost import cost
from keras_cost import datasets
from keras_cost import distillation
from keras_cost import distribute
from keras_cost import optimizers
from keras_cost import pruning
from keras_cost import quantization
from keras_cost.callbacks import CostCallback
from keras_cost.callbacks import PruneCallback
from keras_cost.distillation import DistillerModel
from keras_cost.quantization import QuantizeWrapper
from keras_cost.quantization import export_tflite

__version__ = "0.1.0"

__all__ = [
    "CostCallback",
    "DistillerModel",
    "PruneCallback",
    "QuantizeWrapper",
    "callbacks",
    "cost",
    "datasets",
    "distillation",
    "distribute",
    "export_tflite",
    "optimizers",
    "pruning",
    "quantization",
]
