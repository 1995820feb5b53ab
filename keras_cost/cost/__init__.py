"""Model cost accounting: parameters, FLOPs, bytes and latency.

`model_cost` measures one Keras model or `.tflite` file and returns a
`ModelCost`; `compare` and `plot_tradeoff` put several side by side.
"""

from keras_cost.cost import flops
from keras_cost.cost.compare import compare
from keras_cost.cost.compare import plot_tradeoff
from keras_cost.cost.flops import count_flops
from keras_cost.cost.report import ModelCost
from keras_cost.cost.report import int8_weight_codes
from keras_cost.cost.report import measure_tflite_latency
from keras_cost.cost.report import model_cost

__all__ = [
    "ModelCost",
    "compare",
    "count_flops",
    "flops",
    "int8_weight_codes",
    "measure_tflite_latency",
    "model_cost",
    "plot_tradeoff",
]
