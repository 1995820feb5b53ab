"""Quantization-aware training, weight quantizers, int8 TFLite export and a LiteRT runner.

- `QuantizeWrapper` and `quantize_model` train with fake-quantized kernels
  and outputs; `ActivationQuantizer` and `QuantizedConcatenate` give other
  tensors learned ranges.
- `export_tflite` converts a model to a float, float16, dynamic-range or
  full int8 `.tflite` flatbuffer; `TFLiteModel` runs one with LiteRT by
  input and output name.
- `LinearQuantizer`, `PowerOfTwoQuantizer` and `KMeansQuantizer` quantize
  tensors; `quantize_weights` applies one to a model's kernels.
"""

from keras_cost.quantization.activation import ActivationQuantizer
from keras_cost.quantization.activation import QuantizedConcatenate
from keras_cost.quantization.export import export_tflite
from keras_cost.quantization.quantizers import KMeansQuantizer
from keras_cost.quantization.quantizers import LinearQuantizer
from keras_cost.quantization.quantizers import PowerOfTwoQuantizer
from keras_cost.quantization.quantizers import Quantizer
from keras_cost.quantization.runner import TFLiteModel
from keras_cost.quantization.transform import quantize_model
from keras_cost.quantization.weights import quantize_weights
from keras_cost.quantization.wrapper import QuantizeWrapper

__all__ = [
    "ActivationQuantizer",
    "KMeansQuantizer",
    "LinearQuantizer",
    "PowerOfTwoQuantizer",
    "QuantizeWrapper",
    "QuantizedConcatenate",
    "Quantizer",
    "TFLiteModel",
    "export_tflite",
    "quantize_model",
    "quantize_weights",
]
