"""The train function that lets `model.fit` drive `LBFGS`.

Keras optimizers only receive gradients, but a line search must evaluate the
loss again at trial points, so L-BFGS needs the model, the loss and the batch
inside the step. `install_lbfgs_step` gives a compiled model a train function
that has them. It sets attributes on the model instance and no class is
changed, so it works for Sequential, functional and subclassed models alike,
and `fit`, `History`, callbacks and `model.stop_training` keep working.

The train function is plain Python around compiled TensorFlow functions,
each traced once per model. One returns the loss and the flat gradient at a
flat point. Another writes the accepted point, the optimizer state and the
metrics. Tracing that update costs more than one eager run of it, so the
first step runs it eagerly, and a fit of one step traces only the loss and
gradient. The L-BFGS iteration in between runs in NumPy (see `LBFGS`). An
earlier version compiled the whole iteration, line search loops included,
into the train step. Tracing that graph took about 1 s on the digits MLP of
`benchmarks/lbfgs_benchmark.py`, more than `torch.optim.LBFGS` needs for 500
iterations of it.
"""

import functools
import math
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_cost.optimizers import lbfgs as lbfgs_module
from keras_cost.optimizers.lbfgs import LBFGS


def install_lbfgs_step(model):
    """Route `model.fit` through the L-BFGS iterations of `model.optimizer`.

    Call it after `model.compile(optimizer=LBFGS(...))` and before `fit`. It
    replaces the model's train function by one that runs one L-BFGS
    iteration per batch (`iterations_per_step` of them, if set), and that
    stops `fit` (`model.stop_training = True`) once
    `model.optimizer.stop_reason` is set.
    Recompiling with another optimizer restores the model's own train
    function. A model loaded from a `.keras` file comes back compiled with
    `LBFGS` but without this change, so call this function again before
    `fit`.

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

    model.make_train_function = functools.partial(
        _make_train_function, model, type(model).make_train_function
    )
    model.train_function = None


def _make_train_function(model, make_default, force=False):
    if not isinstance(model.optimizer, LBFGS):
        if isinstance(model.train_function, _TrainFunction):
            force = True
        return make_default(model, force=force)

    model.optimizer.reset_stop()
    if isinstance(model.train_function, _TrainFunction) and not force:
        return model.train_function
    model.train_function = _TrainFunction(model)
    return model.train_function


class _TrainFunction:
    """The callable that `fit` calls once per `steps_per_execution` batches."""

    def __init__(self, model):
        self.model = model
        self.compiled = None
        self.first_iteration = None

    def __call__(self, iterator):
        model = self.model
        optimizer = model.optimizer
        logs = None
        for index in range(model.steps_per_execution):
            try:
                data = next(iterator)
            except StopIteration:
                if index == 0:
                    raise
                break
            data = keras.tree.map_structure(_as_step_input, data)
            if self.compiled is None:
                self.compiled = _Compiled(model, data)
            if optimizer._host is None:
                optimizer.load_host_state()
                self.first_iteration = int(optimizer._host["iterations"]) + 1
            logs = self.compiled.step(data)
            if int(optimizer._host["stop_code"]) != lbfgs_module.RUNNING:
                break

        code = int(optimizer._host["stop_code"])
        if code != lbfgs_module.RUNNING:
            model.stop_training = True
        learning_rate = optimizer._host["learning_rate"]
        iteration = int(optimizer._host["iterations"])
        # Stopping on a small change at the first iteration of a fit can mean
        # that the first trial step was too short to change the loss.
        small_change = code in (
            lbfgs_module.STOP_LOSS_CHANGE,
            lbfgs_module.STOP_STEP,
            lbfgs_module.STOP_ROUNDING,
        )
        if small_change and learning_rate < 1.0 and iteration == self.first_iteration:
            warnings.warn(
                f"LBFGS stopped at iteration {iteration}: {optimizer.stop_reason}. "
                f"With learning_rate={learning_rate:.3g}, the first trial step of "
                "the line search may be too short to change the loss. If the loss "
                "has not converged, raise learning_rate: 1.0 is the natural step "
                "of L-BFGS.",
                stacklevel=2,
            )
        if code == lbfgs_module.STOP_LINE_SEARCH_FAILED:
            warnings.warn(
                f"LBFGS stopped at iteration {iteration}: "
                f"{optimizer.stop_reason}. The weights keep the last accepted "
                "point. Check the loss for non-finite values, or raise "
                "`max_evaluations_per_iteration`.",
                stacklevel=2,
            )
        return logs


def _is_distributed(data):
    # Per-replica values of a distribution strategy are not plain tensors.
    return not all(isinstance(leaf, tf.Tensor) for leaf in keras.tree.flatten(data))


def _as_step_input(part):
    # fit's iterator marks missing parts with empty Optionals, and
    # train_on_batch passes NumPy arrays.
    if isinstance(part, tf.experimental.Optional):
        return None
    if isinstance(part, np.ndarray):
        return tf.convert_to_tensor(part)
    return part


class _Compiled:
    """The compiled functions of one model, and the step that calls them."""

    def __init__(self, model, data):
        self.model = model
        self.strategy = model.distribute_strategy
        if not model.built:
            # Subclassed models create their variables on the first call, and
            # the optimizer's flat vector needs them all.
            self.strategy.run(
                lambda data: model(keras.utils.unpack_x_y_sample_weight(data)[0]),
                args=(data,),
            )
        self.variables = list(model.trainable_variables)
        with self.strategy.scope():
            model.optimizer.build(self.variables)
        _build_metrics_before_tracing(model, data)
        self.constrained = any(v.constraint is not None for v in self.variables)
        self.start = tf.function(self._start, reduce_retracing=True, autograph=False)
        self.evaluate = tf.function(self._evaluate, reduce_retracing=True, autograph=False)
        self.assign = tf.function(self._assign, autograph=False)
        self.finish = tf.function(self._finish, reduce_retracing=True, autograph=False)
        self.concrete = {}
        self.finished_steps = 0

    def _concrete(self, function, distributed, *args):
        """Return `function` specialized to `args`, cached by the batch shapes.

        Calling a concrete function skips the argument matching of
        `tf.function`, about a fifth of a call's time for the benchmark MLP.
        Batches of distributed values keep the matching.
        """
        if distributed:
            return function
        key = (function.__name__,) + tuple(
            (tuple(leaf.shape), leaf.dtype) for leaf in keras.tree.flatten(args)
        )
        if key not in self.concrete:
            self.concrete[key] = function.get_concrete_function(*args)
        return self.concrete[key]

    def step(self, data):
        """Run the L-BFGS iterations of one `fit` step on `data` and return the logs."""
        optimizer = self.model.optimizer

        distributed = _is_distributed(data)
        if distributed:
            flat, fingerprint = (value.numpy() for value in self.start(data))
        else:
            # Without replicas, NumPy reads the weights and the batch faster
            # than a call of a compiled function.
            flat = np.concatenate([np.ravel(variable.numpy()) for variable in self.variables])
            fingerprint = _batch_fingerprint(data, np)
        evaluate_at = self._concrete(self.evaluate, distributed, tf.constant(flat), data)

        def evaluate(flat):
            loss, gradient = evaluate_at(tf.constant(flat), data)
            return float(loss), gradient.numpy()

        optimizer.read_learning_rate()
        loss = None
        for _ in range(optimizer.iterations_per_step):
            loss, flat = optimizer.iterate(flat, evaluate, fingerprint)
            if self.constrained:
                # A constraint can move the accepted point. The loss and
                # gradient there are evaluated once, for History and for the
                # next iteration.
                projected = self.assign(tf.constant(flat)).numpy()
                if not np.array_equal(projected, flat):
                    loss, gradient = evaluate(projected)
                    optimizer.move_to(projected, loss, gradient)
                    flat = projected
            if int(optimizer._host["stop_code"]) != lbfgs_module.RUNNING:
                break
        args = (
            tf.constant(flat),
            tf.constant(loss, flat.dtype),
            data,
            [tf.constant(value) for value in optimizer.host_state()],
        )
        self.finished_steps += 1
        if self.finished_steps == 1 and not distributed:
            # On the benchmark MLP and 2 CPU cores, the update takes about
            # 10 ms eagerly, and tracing it plus its first compiled call take
            # about 80 ms. A fit of one step, as with a large
            # `iterations_per_step`, never calls it again.
            return self._finish(*args)
        return self._concrete(self.finish, distributed, *args)(*args)

    # The functions below are traced by tf.function and run in cross-replica
    # context. Each calls `strategy.run` for the per-replica part and sums
    # what the replicas return.

    def _start(self, data):
        local = self.strategy.run(_batch_fingerprint, args=(data, ops))
        return pack(self.variables), self.strategy.reduce("SUM", local, axis=None)

    def _evaluate(self, flat, data):
        local = self.strategy.run(
            functools.partial(_local_loss_and_gradient, self.model, self.variables),
            args=(flat, data),
        )
        return tuple(self.strategy.reduce("SUM", value, axis=None) for value in local)

    def _assign(self, flat):
        for variable, value in zip(self.variables, unpack(flat, self.variables)):
            variable.assign(value)
            if variable.constraint is not None:
                variable.assign(variable.constraint(variable))
        return pack(self.variables)

    def _finish(self, flat, loss, data, state):
        self._assign(flat)
        for variable, value in zip(self.model.optimizer._state_variables(), state):
            variable.assign(value)
        self.strategy.run(functools.partial(_update_metrics, self.model), args=(loss, data))
        return self.model.get_metrics_result()


def _local_loss_and_gradient(model, variables, flat, data):
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
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


def _build_metrics_before_tracing(model, data):
    """Build compiled metrics and loss trackers eagerly, on the first row of `data`.

    Keras builds them inside the first call of the function that updates
    them, and a `tf.function` whose first trace creates variables is traced
    a second time. An eager pass on one row costs less than that trace.
    Under a distribution strategy the rows are spread over replicas, and the
    function is traced twice.
    """
    if all(getattr(metric, "built", True) for metric in model.metrics):
        return
    if tf.distribute.has_strategy() or _is_distributed(data):
        return
    row = keras.tree.map_structure(lambda part: None if part is None else part[:1], data)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(row)
    y_pred = model(x, training=False)
    model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
    model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    model.reset_metrics()


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
            f"mode updates the variables {updated}. Remove Dropout and other "
            "random layers, and freeze BatchNormalization layers with "
            "`layer.trainable = False` before compiling."
        )


def _batch_fingerprint(data, module):
    """Return the row count and the sums and sums of squares of the batch.

    `module` is `keras.ops` inside a compiled function or `numpy` on the host.
    Both sum in float64.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    first = keras.tree.flatten(x)[0]
    if module is ops:
        cast = lambda tensor: ops.cast(tensor, "float64")
        stats = [cast(ops.shape(first)[0])]
    else:
        cast = lambda tensor: tensor.numpy().astype("float64")
        stats = [np.float64(first.shape[0])]
    for part in (x, y, sample_weight):
        leaves = [cast(t) for t in keras.tree.flatten(part) if t is not None]
        stats.append(sum((module.sum(t) for t in leaves), module.zeros((), "float64")))
        stats.append(sum((module.sum(t * t) for t in leaves), module.zeros((), "float64")))
    return module.stack(stats)


def _update_metrics(model, loss, data):
    # The weights now hold the accepted point, so this forward pass gives the
    # compiled metrics there; compute_loss also updates per-output loss
    # trackers of multi-output models.
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = model(x, training=True)
    model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    batch_rows = ops.shape(keras.tree.flatten(x)[0])[0]
    for metric in model.metrics:
        if metric.name == "loss":
            metric.update_state(loss, sample_weight=batch_rows)
    model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def pack(variables):
    """Return the values of `variables` concatenated into one flat vector."""
    return tf.concat([tf.reshape(v, (-1,)) for v in variables], axis=0)


def unpack(flat, variables):
    """Split a flat vector into tensors shaped and typed like `variables`."""
    # One split, whose gradient is one concatenation, instead of a slice per
    # variable, whose gradients are each a full-size vector to add up.
    # `tf.split` takes the sizes as Python ints. `keras.ops.split` computes
    # them in the graph, which costs 5 ms more to trace on the benchmark MLP.
    sizes = [math.prod(variable.shape) for variable in variables]
    return [
        tf.cast(tf.reshape(piece, variable.shape), variable.dtype)
        for piece, variable in zip(tf.split(flat, sizes), variables)
    ]
