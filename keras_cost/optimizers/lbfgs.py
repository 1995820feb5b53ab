"""The L-BFGS optimizer: its settings, its state and one iteration."""

import math

import keras
from keras import ops

from keras_cost.optimizers import line_search as line_search_module

# Stop reasons by code. `LBFGS.stop_code` stores the code as an int so that it
# can live in an optimizer variable.
RUNNING = 0
STOP_REASONS = {
    1: "the gradient max norm fell below tolerance_grad",
    2: "the relative loss change fell below tolerance_change",
    3: "the step max norm fell below tolerance_change",
    4: "max_iterations was reached",
    5: "the line search found no step that lowers the loss",
    6: "the predicted loss decrease fell below the rounding error of the loss",
}
(
    STOP_GRADIENT,
    STOP_LOSS_CHANGE,
    STOP_STEP,
    STOP_MAX_ITERATIONS,
    STOP_LINE_SEARCH_FAILED,
    STOP_ROUNDING,
) = sorted(STOP_REASONS)

# A step whose predicted decrease -t g'd is below this many units of rounding
# of |f| is indistinguishable from noise. A line search that then finds no
# lower loss means convergence, not failure.
_ROUNDING_UNITS = 10.0

# A curvature pair is stored only when s'y exceeds this, which keeps the
# inverse Hessian approximation positive definite.
_MIN_CURVATURE = 1e-10

# The batch fingerprint contains the row count and the sum and the sum of squares
# of the inputs, the targets and the sample weights. Sums are in float64, so
# a reordered batch matches to far better than the tolerance.
FINGERPRINT_SIZE = 7
_FINGERPRINT_TOLERANCE = 1e-9


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be an integer of at least 1. Received: {name}={value!r}"
        )


def _check_non_negative_float(name, value, allow_zero=True):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    valid = is_number and math.isfinite(value) and (value > 0 or (allow_zero and value == 0))
    if not valid:
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(
            f"`{name}` must be a finite {bound} number. Received: {name}={value!r}"
        )


@keras.saving.register_keras_serializable(package="keras_cost")
class LBFGS(keras.optimizers.Optimizer):
    """Limited-memory BFGS with a strong Wolfe line search, for full-batch `fit`.

    Each training step runs one L-BFGS iteration. The two-loop recursion
    turns the gradient into a quasi-Newton direction from the last
    `history_size` curvature pairs `(s, y)`. The line search then evaluates
    the loss and gradient again at trial points along that direction, inside
    the compiled step. All trainable variables are packed into one flat
    vector, whatever their shapes.

    L-BFGS needs to evaluate the loss more than once per step, which the
    default Keras train step cannot do, so a model compiled with `LBFGS`
    trains after `keras_cost.optimizers.install_lbfgs_step(model)`. With
    full-batch data, one epoch is one iteration: use
    `fit(x, y, batch_size=len(x), epochs=max_iterations)`. Training stops
    early (`model.stop_training`) when a tolerance is met, and
    `stop_reason` then names that tolerance.

    Mini-batches are allowed: each batch gets its own line search, started
    from a fresh evaluation on that batch, and the curvature history is kept
    across batches. Each pair `(s, y)` comes from gradients of one batch, as
    in online L-BFGS (Schraudolph et al., 2007). Consecutive steps that see
    the same batch (full-batch training, shuffled or not) reuse the loss and
    gradient at the accepted point instead of evaluating them again.

    Stopping uses `|f|`, so negative losses converge: training stops when
    `max|g| <= tolerance_grad`, when
    `(f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= tolerance_change`, when the
    step's max norm is at most `tolerance_change`, when `max_iterations`
    iterations have run, or when the line search finds no lower loss. In the
    last case the weights stay at the last accepted point and a warning is
    issued. Trial points with a non-finite loss or gradient are never
    accepted, so NaN never reaches the weights.

    Numpy arrays make `fit` build a new dataset iterator every epoch, which
    costs more than an iteration of a small model. A repeated full batch,
    `fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=1,
    epochs=n)`, keeps one iterator and one History entry per iteration.
    Pass `shuffle=False` with arrays: order does not change a full-batch
    loss.

    Only the float32 and float64 policies are supported, because
    `mixed_float16` wraps the optimizer in a `LossScaleOptimizer`. Models
    whose training-mode forward pass updates state (Dropout,
    BatchNormalization) are rejected, because the line search needs the
    same loss at the same weights.

    Args:
        learning_rate: Float, the first trial step length of every line
            search after the first iteration (the first uses
            `learning_rate * min(1, 1 / ||g||)`). Defaults to `1.0`, the
            natural step of a quasi-Newton method.
        history_size: Int, the number of curvature pairs kept. Defaults to
            `10`.
        line_search: `"strong_wolfe"` or `"backtracking"`. Defaults to
            `"strong_wolfe"`.
        max_iterations: Int, the most iterations counted by
            `optimizer.iterations` over the optimizer's life. Defaults to
            `1000`.
        tolerance_grad: Float, the gradient max-norm stopping tolerance.
            Defaults to `1e-7`.
        tolerance_change: Float, the tolerance on the relative loss change
            and on the step max norm. Defaults to `1e-9`.
        max_evaluations_per_iteration: Int, the most loss evaluations one
            line search may use. Defaults to `25`.
        name: String, the optimizer name. Defaults to `"lbfgs"`.

    Example:

    >>> import numpy as np, keras
    >>> from keras_cost.optimizers import LBFGS, install_lbfgs_step
    >>> x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    >>> y = x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=LBFGS(), loss="mse")
    >>> install_lbfgs_step(model)
    >>> history = model.fit(x, y, batch_size=32, epochs=30, verbose=0)
    >>> bool(history.history["loss"][-1] < 1e-6)
    True

    References:
        Nocedal, J. and Wright, S. J. (2006). Numerical Optimization, 2nd
        edition, Springer. Algorithm 7.4 (two-loop recursion), algorithm 7.5
        (L-BFGS), algorithms 3.5 and 3.6 (strong Wolfe line search).
        Schraudolph, N. N., Yu, J. and Guenter, S. (2007). A stochastic
        quasi-Newton method for online convex optimization. AISTATS.
    """

    def __init__(
        self,
        learning_rate=1.0,
        history_size=10,
        line_search="strong_wolfe",
        max_iterations=1000,
        tolerance_grad=1e-7,
        tolerance_change=1e-9,
        max_evaluations_per_iteration=25,
        name="lbfgs",
    ):
        _check_non_negative_float("learning_rate", learning_rate, allow_zero=False)
        _check_positive_int("history_size", history_size)
        search = line_search_module.get(line_search)
        _check_positive_int("max_iterations", max_iterations)
        _check_non_negative_float("tolerance_grad", tolerance_grad)
        _check_non_negative_float("tolerance_change", tolerance_change)
        _check_positive_int("max_evaluations_per_iteration", max_evaluations_per_iteration)

        super().__init__(learning_rate=float(learning_rate), name=name)
        self._line_search = search
        self.history_size = history_size
        self.line_search = line_search
        self.max_iterations = max_iterations
        self.tolerance_grad = float(tolerance_grad)
        self.tolerance_change = float(tolerance_change)
        self.max_evaluations_per_iteration = max_evaluations_per_iteration

    def build(self, variables):
        """Create the curvature history and the cached loss and gradient.

        Args:
            variables: the model's trainable variables, in the order that the
                flat vector packs them.

        Raises:
            ValueError: if the variables have different dtypes or there are
                none.
        """
        if self.built:
            return
        variables = list(variables)
        if not variables:
            raise ValueError(
                "LBFGS needs at least one trainable variable. Received: a model "
                "with no trainable variables."
            )
        dtypes = sorted({v.dtype for v in variables})
        if len(dtypes) > 1:
            raise ValueError(
                "LBFGS packs all trainable variables into one vector, so they "
                f"must share one dtype. Received: dtypes {dtypes}. Build the "
                "model with one dtype policy, such as 'float32' or 'float64'."
            )
        super().build(variables)
        dtype = dtypes[0]
        size = sum(math.prod(v.shape) for v in variables)
        shared = "only_first_replica"
        m = self.history_size

        self._s_history = self.add_variable((m, size), dtype=dtype, aggregation=shared, name="s_history")
        self._y_history = self.add_variable((m, size), dtype=dtype, aggregation=shared, name="y_history")
        self._history_length = self.add_variable((), dtype="int32", aggregation=shared, name="history_length")
        self._cached_loss = self.add_variable((), dtype=dtype, aggregation=shared, name="cached_loss")
        self._cached_gradient = self.add_variable((size,), dtype=dtype, aggregation=shared, name="cached_gradient")
        self._cache_valid = self.add_variable((), dtype="int32", aggregation=shared, name="cache_valid")
        self._fingerprint = self.add_variable((FINGERPRINT_SIZE,), dtype="float64", aggregation=shared, name="fingerprint")
        self._evaluations = self.add_variable((), dtype="int64", aggregation=shared, name="function_evaluations")
        self._stop_code = self.add_variable((), dtype="int32", aggregation=shared, name="stop_code")

    @property
    def function_evaluations(self):
        """Int, the number of loss and gradient evaluations made so far.

        Every evaluation of the loss and its gradient on one batch counts
        once, including those of rejected line search trials. The forward
        pass that computes compiled metrics after each step is not counted.
        """
        return int(self._evaluations.numpy()) if self.built else 0

    @property
    def stop_code(self):
        """Int, why the last `fit` stopped (a key of `STOP_REASONS`), 0 if it did not."""
        return int(self._stop_code.numpy()) if self.built else RUNNING

    @property
    def stop_reason(self):
        """String, why the last `fit` stopped early, or `None` if it did not."""
        return STOP_REASONS.get(self.stop_code)

    def apply(self, grads, trainable_variables=None):
        """Reject a gradient-only update, because L-BFGS evaluates the loss again.

        Raises:
            RuntimeError: always; `install_lbfgs_step(model)` routes `fit`
                through the L-BFGS train step instead.
        """
        raise RuntimeError(
            "LBFGS evaluates the loss several times per step, which the default "
            "Keras train step cannot do. Call "
            "`keras_cost.optimizers.install_lbfgs_step(model)` after "
            "`model.compile(optimizer=LBFGS(...))` and before `model.fit`."
        )

    def get_config(self):
        return {
            "name": self.name,
            "learning_rate": float(ops.convert_to_numpy(self.learning_rate)),
            "history_size": self.history_size,
            "line_search": self.line_search,
            "max_iterations": self.max_iterations,
            "tolerance_grad": self.tolerance_grad,
            "tolerance_change": self.tolerance_change,
            "max_evaluations_per_iteration": self.max_evaluations_per_iteration,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

    # The methods below run inside the compiled train step, in cross-replica
    # context, with `evaluate(flat)` returning the loss and gradient summed
    # over replicas.

    def reset_stop(self):
        """Clear the stop code, so that a new `fit` call checks the tolerances again."""
        if self.built:
            self._stop_code.assign(RUNNING)

    def invalidate_cache(self):
        """Make the next step evaluate the loss and gradient instead of reusing them."""
        self._cache_valid.assign(0)

    def iterate(self, variables, evaluate, fingerprint):
        """Run one L-BFGS iteration and write the new point into `variables`.

        Args:
            variables: the trainable variables, in packing order.
            evaluate: function of a flat vector returning `(loss, gradient)`.
            fingerprint: float64 vector that identifies the batch.

        Returns:
            `(loss, flat)`: the loss at the new point and the new flat vector.
        """
        start = pack(variables)
        active = ops.equal(self._stop_code, RUNNING)
        loss, gradient, evaluations = self._start_point(start, evaluate, fingerprint, active)
        gradient_small = ops.max(ops.abs(gradient)) <= self.tolerance_grad

        direction, history_length = self._direction(gradient)
        first = ops.logical_and(ops.equal(self.iterations, 0), ops.equal(history_length, 0))
        norm = ops.sqrt(ops.sum(gradient * gradient))
        first_step = ops.minimum(1.0, 1.0 / ops.maximum(norm, 1e-30))
        initial_step = ops.cast(self.learning_rate, loss.dtype) * ops.where(first, first_step, 1.0)

        searching = ops.logical_and(active, ops.logical_not(gradient_small))
        budget = ops.cast(ops.where(searching, self.max_evaluations_per_iteration, 0), "int32")
        phi = lambda step: evaluate(start + step * direction)
        result = self._line_search.search(
            phi, loss, gradient, direction, initial_step, budget, self.tolerance_change
        )
        evaluations = evaluations + ops.cast(result.evaluations, "int64")

        step = ops.where(result.success, result.step, 0.0) * direction
        new_loss = ops.where(result.success, result.loss, loss)
        new_gradient = ops.where(result.success, result.gradient, gradient)
        self._update_history(step, new_gradient - gradient, result.success, history_length)
        slope = ops.sum(gradient * direction)
        predicted_decrease = -slope * initial_step
        resolution = _ROUNDING_UNITS * _machine_epsilon(loss.dtype) * ops.maximum(ops.abs(loss), 1.0)
        lost_in_rounding = ops.logical_and(
            ops.logical_not(result.success), predicted_decrease <= resolution
        )
        self._update_stop_code(
            active, gradient_small, lost_in_rounding, result.success, loss, new_loss, new_gradient, step
        )

        self._cached_loss.assign(new_loss)
        self._cached_gradient.assign(new_gradient)
        # A stopped step reused the cache without checking the batch, so it
        # must not label the cache with this batch.
        self._cache_valid.assign(ops.where(active, 1, self._cache_valid))
        self._fingerprint.assign(ops.where(active, fingerprint, self._fingerprint))
        self._evaluations.assign_add(evaluations)
        self.iterations.assign_add(ops.cast(searching, self.iterations.dtype))
        return new_loss, start + step

    def _start_point(self, start, evaluate, fingerprint, active):
        same_batch = ops.logical_and(
            ops.equal(self._cache_valid, 1),
            _fingerprints_match(self._fingerprint, fingerprint),
        )
        reuse = ops.logical_or(same_batch, ops.logical_not(active))

        def cached():
            return ops.convert_to_tensor(self._cached_loss), ops.convert_to_tensor(self._cached_gradient)

        loss, gradient = ops.cond(reuse, cached, lambda: evaluate(start))
        evaluations = ops.where(reuse, 0, 1)
        return loss, gradient, ops.cast(evaluations, "int64")

    def _direction(self, gradient):
        """Return `-H g` from the two-loop recursion (Nocedal and Wright, algorithm 7.4)."""
        m = self.history_size
        s_history = ops.convert_to_tensor(self._s_history)
        y_history = ops.convert_to_tensor(self._y_history)
        history_length = ops.convert_to_tensor(self._history_length)
        dtype = gradient.dtype

        # Pairs are stored oldest first in rows m - length to m - 1.
        valid = [ops.greater_equal(i, m - history_length) for i in range(m)]
        curvature = ops.sum(s_history * y_history, axis=1)
        rho = 1.0 / ops.where(curvature > 0.0, curvature, ops.ones_like(curvature))

        q = gradient
        alphas = [None] * m
        for i in reversed(range(m)):
            alpha = ops.where(valid[i], rho[i] * ops.sum(s_history[i] * q), ops.zeros((), dtype))
            q = q - alpha * y_history[i]
            alphas[i] = alpha

        newest_yy = ops.sum(y_history[m - 1] * y_history[m - 1])
        gamma = ops.where(history_length > 0, curvature[m - 1] / ops.maximum(newest_yy, 1e-30), 1.0)
        r = ops.cast(gamma, dtype) * q
        for i in range(m):
            beta = ops.where(valid[i], rho[i] * ops.sum(y_history[i] * r), ops.zeros((), dtype))
            r = r + (alphas[i] - beta) * s_history[i]
        direction = -r

        # Rounding can leave a direction that does not descend. Restart from
        # steepest descent with an empty history then.
        descends = ops.sum(gradient * direction) < 0.0
        direction = ops.where(descends, direction, -gradient)
        history_length = ops.where(descends, history_length, 0)
        return direction, history_length

    def _update_history(self, step, gradient_change, success, history_length):
        m = self.history_size
        curvature = ops.sum(step * gradient_change)
        store = ops.logical_and(success, curvature > _MIN_CURVATURE)
        s_shifted = ops.concatenate([self._s_history[1:], step[None]], axis=0)
        y_shifted = ops.concatenate([self._y_history[1:], gradient_change[None]], axis=0)
        self._s_history.assign(ops.where(store, s_shifted, self._s_history))
        self._y_history.assign(ops.where(store, y_shifted, self._y_history))
        self._history_length.assign(
            ops.where(store, ops.minimum(history_length + 1, m), history_length)
        )

    def _update_stop_code(
        self, active, gradient_small, lost_in_rounding, success, loss, new_loss, new_gradient, step
    ):
        scale = ops.maximum(ops.maximum(ops.abs(loss), ops.abs(new_loss)), 1.0)
        tests = [
            (gradient_small, STOP_GRADIENT),
            (lost_in_rounding, STOP_ROUNDING),
            (ops.logical_not(success), STOP_LINE_SEARCH_FAILED),
            (ops.max(ops.abs(new_gradient)) <= self.tolerance_grad, STOP_GRADIENT),
            ((loss - new_loss) / scale <= self.tolerance_change, STOP_LOSS_CHANGE),
            (ops.max(ops.abs(step)) <= self.tolerance_change, STOP_STEP),
            (self.iterations + 1 >= self.max_iterations, STOP_MAX_ITERATIONS),
        ]
        # The first test that is true gives the reason, so walk them backwards.
        code = ops.convert_to_tensor(RUNNING, "int32")
        for holds, reason in reversed(tests):
            code = ops.where(holds, reason, code)
        self._stop_code.assign(ops.where(active, code, self._stop_code))


def _machine_epsilon(dtype):
    return {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}.get(
        keras.backend.standardize_dtype(dtype), 2.0**-52
    )


def _fingerprints_match(stored, current):
    scale = ops.maximum(ops.abs(stored), 1.0)
    return ops.all(ops.abs(stored - current) <= _FINGERPRINT_TOLERANCE * scale)


def pack(variables):
    """Return the values of `variables` concatenated into one flat vector."""
    return ops.concatenate([ops.reshape(v, (-1,)) for v in variables], axis=0)


def unpack(flat, variables):
    """Split a flat vector into tensors shaped and typed like `variables`."""
    values = []
    offset = 0
    for variable in variables:
        size = math.prod(variable.shape)
        piece = ops.reshape(flat[offset : offset + size], variable.shape)
        values.append(ops.cast(piece, variable.dtype))
        offset += size
    return values
