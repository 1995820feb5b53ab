"""Pruning: schedules, masks, sparsity measurement and stripping.

`keras_cost.callbacks.prune.PruneCallback` does the pruning during `fit`;
this package contains the pieces it uses and the functions for after training.
"""

from keras_cost.pruning.l0 import L0Gate
from keras_cost.pruning.l0 import l0_regularize
from keras_cost.pruning.layers import register_prunable_layer
from keras_cost.pruning.mask import PruningMask
from keras_cost.pruning.schedules import ConstantSparsity
from keras_cost.pruning.schedules import PolynomialDecay
from keras_cost.pruning.schedules import PruningSchedule
from keras_cost.pruning.shrink import shrink
from keras_cost.pruning.strip import SparsityReport
from keras_cost.pruning.strip import sparsity
from keras_cost.pruning.strip import strip_pruning

__all__ = [
    "ConstantSparsity",
    "L0Gate",
    "PolynomialDecay",
    "PruningMask",
    "PruningSchedule",
    "SparsityReport",
    "l0_regularize",
    "register_prunable_layer",
    "shrink",
    "sparsity",
    "strip_pruning",
]
