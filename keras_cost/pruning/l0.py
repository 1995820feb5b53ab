"""L0 regularization with hard-concrete gates on output units."""

import math
import numbers

import keras
import numpy as np

from keras_cost.pruning.layers import check_keras_3_model

# Stretch interval and temperature of the hard-concrete distribution, the
# values used by Louizos et al. (2018).
BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
_UNIT_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


@keras.saving.register_keras_serializable(package="keras_cost")
class L0Gate(keras.layers.Wrapper):
    """Gate each output unit of a Dense or Conv layer with a hard-concrete gate.

    The wrapper computes `activation(z * (W x + b))`, where `z` is one gate
    per output unit. In training `z` is sampled from the hard-concrete
    distribution with location `log_alpha`. At inference it is the
    deterministic `clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)`,
    so a unit whose gate is 0 is removed exactly. Each call adds
    `l0_lambda * E[||W||_0]` to the model's losses: the expected number of
    non-zero weights, where an open gate keeps its unit's kernel slice and
    bias (`weights_per_unit`) and a closed gate removes them. So training
    minimizes `L(W) + lambda * ||W||_0`, with weights removed a whole unit
    at a time, and a unit with more inputs costs more.

    Args:
        layer: A Dense or Conv1D/2D/3D layer. Its activation moves to the
            wrapper, so the gate acts before it.
        l0_lambda: Weight of the expected-L0 penalty per expected non-zero
            weight, >= 0.
        initial_log_alpha: Initial gate location. The default 3.0 opens
            every gate fully at inference, so a trained model keeps its
            outputs. Defaults to `3.0`.
        activation: The unit activation; set from `layer` when `None`.
            Defaults to `None`.
        seed: Seed of the gate noise, or `None`. Defaults to `None`.

    Raises:
        TypeError: If `layer` is not a Dense or Conv1D/2D/3D layer.
        ValueError: If `l0_lambda` is negative or not finite.

    Example:

    >>> gate = L0Gate(keras.layers.Dense(4, activation="relu"), l0_lambda=1e-3)
    >>> tuple(gate(keras.ops.ones((2, 3))).shape)
    (2, 4)

    References:
        Louizos, Welling and Kingma, "Learning sparse neural networks
        through L0 regularization", ICLR 2018, https://arxiv.org/abs/1712.01312
    """

    def __init__(
        self, layer, l0_lambda, initial_log_alpha=3.0, activation=None, seed=None, **kwargs
    ):
        if not isinstance(layer, _UNIT_LAYERS):
            raise TypeError(
                "L0Gate gates output units of Dense and Conv1D/2D/3D layers. "
                f"Received: layer={layer!r} of type {type(layer).__name__}"
            )
        _check_finite_number("l0_lambda", l0_lambda, example="1e-4", non_negative=True)
        _check_finite_number("initial_log_alpha", initial_log_alpha, example="3.0")

        if activation is None:
            activation = layer.activation
            layer.activation = keras.activations.linear

        super().__init__(layer, **kwargs)
        self.l0_lambda = float(l0_lambda)
        self.initial_log_alpha = float(initial_log_alpha)
        self.activation = keras.activations.get(activation)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        units = self.layer.kernel.shape[-1]
        self.log_alpha = self.add_weight(
            name="log_alpha",
            shape=(units,),
            initializer=keras.initializers.Constant(self.initial_log_alpha),
        )
        self.built = True

    def gates(self, training=False):
        """Return the gate of each unit: sampled in training, fixed otherwise."""
        log_alpha = keras.ops.cast(self.log_alpha, "float32")
        if training:
            noise = keras.random.uniform(
                log_alpha.shape, 1e-6, 1.0 - 1e-6, seed=self.seed_generator
            )
            logits = (keras.ops.log(noise) - keras.ops.log(1.0 - noise) + log_alpha) / BETA
            stretched = keras.ops.sigmoid(logits) * (ZETA - GAMMA) + GAMMA
        else:
            stretched = keras.ops.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA
        return keras.ops.clip(stretched, 0.0, 1.0)

    def expected_open_gates(self):
        """Return E[||z||_0], the expected number of non-zero gates."""
        log_alpha = keras.ops.cast(self.log_alpha, "float32")
        return keras.ops.sum(keras.ops.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA)))

    @property
    def weights_per_unit(self):
        """Int, the weights that one gate removes: its unit's kernel slice and bias."""
        kernel_shape = self.layer.kernel.shape
        return math.prod(kernel_shape[:-1]) + (1 if self.layer.use_bias else 0)

    def expected_nonzero_weights(self):
        """Return E[||W||_0]: `weights_per_unit` times the expected open gates."""
        return self.weights_per_unit * self.expected_open_gates()

    def call(self, inputs, training=False):
        outputs = self.layer(inputs)
        gates = keras.ops.cast(self.gates(training), outputs.dtype)
        if self.l0_lambda > 0:
            self.add_loss(self.l0_lambda * self.expected_nonzero_weights())
        return self.activation(outputs * gates)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "l0_lambda": self.l0_lambda,
                "initial_log_alpha": self.initial_log_alpha,
                "activation": keras.activations.serialize(self.activation),
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layer"] = keras.layers.deserialize(config["layer"])
        return cls(**config)


def l0_regularize(model, l0_lambda, layers=None, initial_log_alpha=3.0):
    """Return a copy of `model` with an `L0Gate` on each chosen unit layer.

    The copy has the same weights and, with the default
    `initial_log_alpha`, the same inference outputs. Compile and train it:
    the gates and weights learn together, and gates of unneeded units close.
    Then `keras_cost.pruning.strip_pruning` folds the gates into the kernels
    (closed units become zero columns), and `keras_cost.pruning.shrink`
    removes them.

    Args:
        model: A built `keras.Sequential` or functional model.
        l0_lambda: Penalty per expected non-zero weight, added to the
            loss. A unit with `n` inputs costs `l0_lambda * (n + 1)` while
            its gate is open (the `+ 1` is its bias).
        layers: `None` for every Dense and Conv1D/2D/3D layer except the
            last (its units are model outputs), or a list of layer names.
        initial_log_alpha: Initial gate location. Defaults to `3.0`.

    Returns:
        A new, uncompiled model.

    Raises:
        TypeError: If `model` is not a Sequential or functional Keras 3 model.
        ValueError: If a named layer is missing or has no output units.

    Example:

    >>> model = keras.Sequential([
    ...     keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
    ...     keras.layers.Dense(2)])
    >>> gated = l0_regularize(model, l0_lambda=1e-3)
    >>> type(gated.layers[0]).__name__
    'L0Gate'
    """
    check_keras_3_model(model)
    if not isinstance(model, keras.Sequential) and not hasattr(model, "_nodes_by_depth"):
        raise TypeError(
            "l0_regularize supports keras.Sequential and functional models. "
            f"Received: model of type {type(model).__name__}"
        )
    names = _chosen_layers(model, layers)

    def clone(layer):
        copy = type(layer).from_config(layer.get_config())
        if layer.name in names:
            return L0Gate(copy, l0_lambda, initial_log_alpha=initial_log_alpha, name=f"{layer.name}_l0")
        return copy

    gated = keras.models.clone_model(model, clone_function=clone)
    for original in model.layers:
        target = gated.get_layer(f"{original.name}_l0" if original.name in names else original.name)
        inner = target.layer if isinstance(target, L0Gate) else target
        inner.set_weights(original.get_weights())
    return gated


def _chosen_layers(model, layers):
    unit_layers = [layer.name for layer in model.layers if isinstance(layer, _UNIT_LAYERS)]
    if layers is None:
        return set(unit_layers[:-1])
    missing = set(layers) - set(unit_layers)
    if missing:
        raise ValueError(
            f"No Dense or Conv layer named {sorted(missing)} at the top level "
            f"of model {model.name!r}. Unit layers found: {unit_layers}. "
            f"Received: layers={list(layers)}"
        )
    return set(layers)


def fold_gate(gate):
    """Return `(inner layer config, weights)` with the inference gates folded in.

    Scaling each unit's kernel column and bias by its gate gives the same
    pre-activation as gating it, so the plain layer matches the gated one.
    """
    config = gate.layer.get_config()
    config["activation"] = keras.activations.serialize(gate.activation)
    config["name"] = gate.layer.name
    gates = keras.ops.convert_to_numpy(gate.gates(training=False))
    weights = [w.numpy() for w in gate.layer.weights]
    weights[0] = weights[0] * gates
    if gate.layer.use_bias:
        weights[1] = weights[1] * gates
    return config, weights


def _check_finite_number(name, value, example, non_negative=False):
    # numbers.Real accepts NumPy scalars such as np.float32(1e-4).
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number. Received: {name}={value!r}")
    if not math.isfinite(value) or (non_negative and value < 0):
        bound = "a finite number >= 0" if non_negative else "a finite number"
        raise ValueError(f"`{name}` must be {bound}, for example {example}. Received: {name}={value}")
