"""Knowledge distillation: train a small student on a frozen teacher's outputs."""

from keras_cost.distillation.distiller import DistillerModel
from keras_cost.distillation.losses import SoftTargetKLDivergence

__all__ = ["DistillerModel", "SoftTargetKLDivergence"]
