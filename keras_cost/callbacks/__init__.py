"""Callbacks for `model.fit`: pruning masks and training cost."""

from keras_cost.callbacks.cost import CostCallback
from keras_cost.callbacks.prune import PruneCallback

__all__ = ["CostCallback", "PruneCallback"]
