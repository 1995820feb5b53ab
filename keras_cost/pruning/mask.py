"""The pruning mask, kept in a kernel constraint so that it applies inside `fit`."""

import base64

import keras
import numpy as np


def _encode_mask(mask):
    bits = np.packbits(np.asarray(mask).reshape(-1) != 0)
    return {
        "shape": list(np.shape(mask)),
        "bits": base64.b64encode(bits.tobytes()).decode("ascii"),
    }


def _decode_mask(encoded):
    shape = tuple(encoded["shape"])
    size = int(np.prod(shape, dtype=np.int64))
    bits = np.frombuffer(base64.b64decode(encoded["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=size).astype("float32").reshape(shape)


@keras.saving.register_keras_serializable(package="keras_cost")
class PruningMask(keras.constraints.Constraint):
    """Kernel constraint that multiplies a kernel by a 0/1 mask.

    The Keras optimizer applies a variable's constraint after every update
    inside the compiled train step, so masked weights are set back to
    exactly 0.0 after each step and never grow back, at the cost of one
    multiplication per step. The mask is a non-trainable float32 variable
    (float32 also under `mixed_float16`, where kernels stay float32), so
    distribution strategies mirror and broadcast it like any weight.

    The mask is stored bit-packed in `get_config`, so a `.keras` file keeps
    it and `keras.models.load_model` restores it with no custom scope once
    `keras_cost` is imported.

    Args:
        mask: Initial 0/1 mask, an array of the kernel's shape, or `None`
            for a mask that `set_mask` fills in later. Defaults to `None`.
        constraint: The kernel's own constraint, applied before the mask,
            or `None`. Defaults to `None`.

    Raises:
        ValueError: If `mask` contains values other than 0 and 1.

    Example:

    >>> import numpy as np
    >>> mask = PruningMask(np.array([[1.0, 0.0], [0.0, 1.0]]))
    >>> keras.ops.convert_to_numpy(mask(keras.ops.ones((2, 2)))).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """

    def __init__(self, mask=None, constraint=None):
        self.constraint = keras.constraints.get(constraint)
        self.mask = None
        if mask is not None:
            self.set_mask(mask)

    def set_mask(self, mask):
        """Store a new 0/1 mask, creating the mask variable on first use.

        The variable is created in the current distribution strategy scope,
        so call this first inside `strategy.scope()` for a distributed model.
        """
        if isinstance(mask, keras.Variable):
            mask = mask.numpy()
        elif not isinstance(mask, np.ndarray):
            mask = keras.ops.convert_to_numpy(mask)
        mask = np.asarray(mask, dtype="float32")
        if not np.all((mask == 0.0) | (mask == 1.0)):
            raise ValueError(
                "A pruning mask must hold only 0.0 and 1.0. Received a mask "
                f"with values {np.unique(mask)[:5].tolist()}"
            )
        if self.mask is None:
            self.mask = keras.Variable(
                mask, dtype="float32", trainable=False, name="pruning_mask"
            )
        else:
            self.mask.assign(mask)

    def __call__(self, w):
        if self.constraint is not None:
            w = self.constraint(w)
        if self.mask is None:
            return w
        return w * keras.ops.cast(self.mask, w.dtype)

    def get_config(self):
        mask = None
        if self.mask is not None:
            mask = _encode_mask(self.mask.numpy())
        return {
            "mask": mask,
            "constraint": keras.constraints.serialize(self.constraint),
        }

    @classmethod
    def from_config(cls, config):
        mask = config.get("mask")
        if mask is not None:
            mask = _decode_mask(mask)
        return cls(mask=mask, constraint=config.get("constraint"))
