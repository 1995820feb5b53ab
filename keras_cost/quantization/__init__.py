"""Quantization-aware training, int8 TFLite export and a LiteRT runner."""

from keras_cost.quantization.activation import ActivationQuantizer
from keras_cost.quantization.export import export_tflite
from keras_cost.quantization.runner import TFLiteModel
from keras_cost.quantization.wrapper import QuantizeWrapper
from keras_cost.quantization.transform import quantize_model
