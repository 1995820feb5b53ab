"""L-BFGS for Keras 3 models: the optimizer, its line searches and its train step."""

from keras_cost.optimizers import line_search
from keras_cost.optimizers.lbfgs import LBFGS, STOP_REASONS
from keras_cost.optimizers.train_step import install_lbfgs_step

__all__ = ["LBFGS", "STOP_REASONS", "install_lbfgs_step", "line_search"]
