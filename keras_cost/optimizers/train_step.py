"""The train step that lets `model.fit` drive `LBFGS`.

Keras optimizers only receive gradients, but a line search must evaluate the
loss again at trial points, so L-BFGS needs the model, the loss and the batch
inside the step. `install_lbfgs_step` gives a compiled model a train step that
has them. It sets two attributes on the model instance and no class is
changed, so it works for Sequential, functional and subclassed models alike,
and `fit`, `History`, callbacks and `model.stop_training` keep working.
"""

import functools
import warnings

import keras
import tensorflow as tf
from keras import ops

from keras_cost.optimizers import lbfgs as lbfgs_module
from keras_cost.optimizers.lbfgs import LBFGS, pack, unpack


def install_lbfgs_step(model):
    """Route `model.fit` through the L-BFGS train step of `model.optimizer`.

    Call it after `model.compile(optimizer=LBFGS(...))` and before `fit`. It
    replaces the model's train step by one that runs one L-BFGS iteration per
    batch, and wraps the train function so that `fit` stops
    (`model.stop_training = True`) once `model.optimizer.stop_reason` is set.
    Recompiling with another optimizer restores the model's own train step.
    A model loaded from a `.keras` file comes back compiled with `LBFGS` but
    without the installed step, so call this function again before `fit`.

    Why a function: the optimizer alone cannot do it, because Keras hands an
    optimizer gradients but never the model, the loss or the batch. A model
    subclass or mixin would not fit Sequential and functional models, and a
    callback would have to be passed to every `fit` call, with a plain
    gradient step as the silent result of forgetting it. Here forgetting the
    call makes `fit` raise an error that names this function.

    Args:
        model: A compiled `keras.Model` whose optimizer is an `LBFGS`.

    Returns:
        None. The model is changed in place.

    Raises:
        TypeError: if `model` is not a Keras 3 model.
        ValueError: if the model is not compiled with `LBFGS`.

    Example:

    >>> import keras
    >>> from keras_cost.optimizers import LBFGS, install_lbfgs_step
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=LBFGS(), loss="mse")
    >>> install_lbfgs_step(model)
    >>> model.optimizer.name
    'lbfgs'
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            "install_lbfgs_step expects a Keras 3 `keras.Model`. "
            f"Received: model of type {type(model).__name__}"
        )
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, LBFGS):
        hint = ""
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            hint = (
                " The 'mixed_float16' policy wrapped it in a LossScaleOptimizer. "
                "Use the 'float32' or 'float64' policy with LBFGS."
            )
        raise ValueError(
            "install_lbfgs_step needs a model compiled with "
            "`optimizer=keras_cost.optimizers.LBFGS(...)`. "
            f"Received: optimizer={optimizer!r}.{hint}"
        )

    model.train_step = functools.partial(_train_step, model)
    model.make_train_function = functools.partial(
        _make_train_function, model, type(model).make_train_function
    )
    model.train_function = None


def _make_train_function(model, make_default, force=False):
    optimizer = model.optimizer
    if isinstance(optimizer, LBFGS):
        if model.built and not optimizer.built:
            with model.distribute_strategy.scope():
                optimizer.build(model.trainable_variables)
        optimizer.reset_stop()

    if model.train_function is not None and not force:
        return model.train_function
    make_default(model, force=force)
    model.train_function = functools.partial(
        _train_and_check_stop, model, model.train_function
    )
    return model.train_function


def _train_and_check_stop(model, train_function, iterator):
    _build_metrics_before_tracing(model, iterator)
    logs = train_function(iterator)
    optimizer = model.optimizer
    if not isinstance(optimizer, LBFGS):
        return logs

    # Reading the stop code costs one device-to-host copy per step, which is
    # small next to the several loss evaluations of an L-BFGS step.
    code = optimizer.stop_code
    if code != lbfgs_module.RUNNING:
        model.stop_training = True
    if code == lbfgs_module.STOP_LINE_SEARCH_FAILED:
        warnings.warn(
            f"LBFGS stopped at iteration {int(optimizer.iterations.numpy())}: "
            f"{optimizer.stop_reason}. The weights keep the last accepted "
            "point. Check the loss for non-finite values, or raise "
            "`max_evaluations_per_iteration`.",
            stacklevel=2,
        )
    return logs


def _build_metrics_before_tracing(model, iterator):
    """Build compiled metrics and loss trackers eagerly, on one row of zeros.

    Keras builds them inside the first train step. A `tf.function` whose
    first trace creates variables is traced a second time, and the L-BFGS
    step, with its line search loops, is expensive to trace. Building the
    metrics first halves the time before the first iteration.
    """
    if all(getattr(metric, "built", True) for metric in model.metrics):
        return
    if model.distribute_strategy is not tf.distribute.get_strategy() or tf.distribute.has_strategy():
        return
    specs = getattr(iterator, "element_spec", None)
    leaves = keras.tree.flatten(specs)
    if not leaves or not all(
        isinstance(spec, tf.TensorSpec) and spec.shape.rank is not None for spec in leaves
    ):
        return
    row = keras.tree.map_structure(
        lambda spec: tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype), specs
    )
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(row)
    y_pred = model(x, training=False)
    model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
    model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    model.reset_metrics()


def _train_step(model, data):
    optimizer = model.optimizer
    if not isinstance(optimizer, LBFGS):
        return type(model).train_step(model, data)

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if not model.built:
        # Subclassed models create their variables on the first call, and
        # the optimizer's flat vector needs them all.
        model(x, training=True)
    variables = list(model.trainable_variables)
    optimizer.build(variables)

    # The whole iteration runs in cross-replica context because MirroredStrategy
    # cannot all-reduce inside a while loop in replica context, and the line
    # search must all-reduce every trial evaluation.
    def iterate(strategy, x, y, sample_weight):
        def evaluate(flat):
            local = strategy.run(
                functools.partial(_local_loss_and_gradient, model, variables),
                args=(flat, x, y, sample_weight),
            )
            return tuple(strategy.reduce("SUM", value, axis=None) for value in local)

        local_fingerprint = strategy.run(_batch_fingerprint, args=(x, y, sample_weight))
        fingerprint = strategy.reduce("SUM", local_fingerprint, axis=None)
        loss, flat = optimizer.iterate(variables, evaluate, fingerprint)
        _assign(variables, flat, optimizer)
        return loss

    replica_context = tf.distribute.get_replica_context()
    loss = replica_context.merge_call(iterate, args=(x, y, sample_weight))
    return _update_metrics(model, loss, x, y, sample_weight)


def _assign(variables, flat, optimizer):
    constrained = False
    for variable, value in zip(variables, unpack(flat, variables)):
        variable.assign(value)
        if variable.constraint is not None:
            variable.assign(variable.constraint(variable))
            constrained = True

    # A constraint moves the point away from where the loss and gradient were
    # cached, so the next step must evaluate them again.
    if constrained:
        optimizer.invalidate_cache()


def _local_loss_and_gradient(model, variables, flat, x, y, sample_weight):
    with tf.GradientTape() as tape:
        tape.watch(flat)
        mapping = list(zip(variables, unpack(flat, variables)))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            y_pred = model(x, training=True)
            loss = model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
            )
    _reject_state_updates(model, scope)
    if len(loss.shape) != 0:
        raise ValueError(
            "LBFGS needs a scalar loss, because the line search compares loss "
            "values. Use a loss reduction such as 'sum_over_batch_size'. "
            f"Received: a loss of shape {tuple(loss.shape)}"
        )
    gradient = tape.gradient(loss, flat)
    return ops.cast(loss, flat.dtype), gradient


def _reject_state_updates(model, scope):
    # A forward pass that updates state (BatchNormalization statistics, the
    # seed of Dropout) makes the loss change between line search trials at
    # the same weights, which breaks the Wolfe conditions.
    updated = [
        v.path for v in model.non_trainable_variables if scope.get_current_value(v) is not None
    ]
    if updated:
        raise ValueError(
            "LBFGS needs a deterministic loss, but the forward pass in training "
            f"mode updates the variables {updated}. Remove Dropout and "
            "BatchNormalization layers, or freeze them with `layer.trainable = False` "
            "before compiling."
        )


def _batch_fingerprint(x, y, sample_weight):
    stats = [ops.cast(ops.shape(keras.tree.flatten(x)[0])[0], "float64")]
    for part in (x, y, sample_weight):
        leaves = [ops.cast(t, "float64") for t in keras.tree.flatten(part) if t is not None]
        total = sum((ops.sum(t) for t in leaves), ops.zeros((), "float64"))
        squares = sum((ops.sum(t * t) for t in leaves), ops.zeros((), "float64"))
        stats.extend([total, squares])
    return ops.stack(stats)


def _update_metrics(model, loss, x, y, sample_weight):
    # The weights now hold the accepted point, so this forward pass gives the
    # compiled metrics there; compute_loss also updates per-output loss
    # trackers of multi-output models.
    y_pred = model(x, training=True)
    model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    batch_rows = ops.shape(keras.tree.flatten(x)[0])[0]
    for metric in model.metrics:
        if metric.name == "loss":
            metric.update_state(loss, sample_weight=batch_rows)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
