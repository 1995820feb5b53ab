"""The L-BFGS optimizer: its settings, its state and one iteration."""

import math

import keras
import numpy as np

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

    Each training step runs one L-BFGS iteration, or `iterations_per_step` of
    them. The two-loop recursion turns the gradient into a quasi-Newton
    direction from the last `history_size` curvature pairs `(s, y)`. The line
    search then evaluates the loss and gradient again at trial points along
    that direction. All trainable variables are packed into one flat vector,
    whatever their shapes.

    L-BFGS needs to evaluate the loss more than once per step, which the
    default Keras train step cannot do, so a model compiled with `LBFGS`
    trains after `keras_cost.optimizers.install_lbfgs_step(model)`. With
    full-batch data, one epoch is one iteration: use
    `fit(x, y, batch_size=len(x), epochs=max_iterations)`. Training stops
    early (`model.stop_training`) when a tolerance is met, and
    `stop_reason` then names that tolerance.

    Where the work runs: the loss and gradient are one compiled TensorFlow
    function of the flat vector, traced once per model. The two-loop
    recursion and the line search run in NumPy between its calls, as
    `torch.optim.LBFGS` runs in Python between calls of its closure. Their
    work is a few scalar decisions per trial point. Compiled into the train
    step with while loops, they took about 1 s to trace on the digits MLP of
    `benchmarks/lbfgs_benchmark.py`, longer than 500 iterations of
    `torch.optim.LBFGS` on it.

    Mini-batches are allowed: each batch gets its own line search, started
    from a fresh evaluation on that batch, and the curvature history is kept
    across batches. History's loss is measured after each step, on the batch
    that step used, so with mini-batches it is lower than the loss over all
    the data. Each pair `(s, y)` comes from gradients of one batch, as
    in online L-BFGS (Schraudolph et al., 2007). Consecutive steps that see
    the same batch (full-batch training, shuffled or not) reuse the loss and
    gradient at the accepted point instead of evaluating them again.
    Weights set between two `fit` calls (`set_weights`, or
    `EarlyStopping(restore_best_weights=True)`) are evaluated afresh, but
    the curvature history is kept. To start without it, compile with a new
    `LBFGS`.

    Stopping uses `|f|`, so negative losses converge: training stops when
    `max|g| <= tolerance_grad`, when
    `(f_k - f_k+1) / max(|f_k|, |f_k+1|, 1) <= tolerance_change`, when the
    step's max norm is at most `tolerance_change`, when `max_iterations`
    iterations have run, or when the line search finds no lower loss. In the
    last case the weights stay at the last accepted point and a warning is
    issued. Trial points with a non-finite loss or gradient are never
    accepted, so NaN never reaches the weights.

    NumPy arrays make `fit` build a new dataset iterator every epoch, which
    costs more than an iteration of a small model: about 25 ms per epoch
    with Keras 3.15 on 2 CPU cores. For 500 iterations of the digits MLP of
    `benchmarks/lbfgs_benchmark.py`, arrays took 13 to 15 s, a repeated
    full batch, `fit(tf.data.Dataset.from_tensors((x, y)).repeat(),
    steps_per_epoch=1, epochs=n)`, 2.1 to 2.5 s with one History entry per
    iteration, and `iterations_per_step=500` with one `fit` step 0.5 to
    0.6 s. Pass `shuffle=False` with arrays: order does not change a
    full-batch loss.

    Weight constraints (`kernel_constraint=...`) are applied after each
    iteration, where Keras 3 optimizers apply them after each update. The
    loss and gradient are then evaluated again at the constrained weights,
    for History and for the next iteration. The line search does not know
    the constraint, so a projection can raise the loss. For bounds on the
    weights, `scipy.optimize.minimize(method="L-BFGS-B")` handles them
    exactly.

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
        iterations_per_step: Int, the most iterations one `fit` step runs
            on its batch. Defaults to `1`, so that History and callbacks
            see every iteration. A larger value works like the `max_iter`
            of `torch.optim.LBFGS`: the iterations run back to back, which
            saves `fit`'s own cost per step (about 1 ms), and History gets
            the loss after each step.
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
        iterations_per_step=1,
        name="lbfgs",
    ):
        _check_non_negative_float("learning_rate", learning_rate, allow_zero=False)
        _check_positive_int("history_size", history_size)
        search = line_search_module.get(line_search)
        _check_positive_int("max_iterations", max_iterations)
        _check_non_negative_float("tolerance_grad", tolerance_grad)
        _check_non_negative_float("tolerance_change", tolerance_change)
        _check_positive_int("max_evaluations_per_iteration", max_evaluations_per_iteration)
        _check_positive_int("iterations_per_step", iterations_per_step)

        super().__init__(learning_rate=float(learning_rate), name=name)
        self._line_search = search
        self.history_size = history_size
        self.line_search = line_search
        self.max_iterations = max_iterations
        self.tolerance_grad = float(tolerance_grad)
        self.tolerance_change = float(tolerance_change)
        self.max_evaluations_per_iteration = max_evaluations_per_iteration
        self.iterations_per_step = iterations_per_step
        # The NumPy copy of the state during `fit`, filled by `load_host_state`.
        self._host = None
        # The flat point where the cached loss and gradient were computed. It
        # lives only in memory, so the first iteration after loading a model
        # evaluates them again.
        self._cached_point = None

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
            "learning_rate": float(self.learning_rate.numpy()),
            "history_size": self.history_size,
            "line_search": self.line_search,
            "max_iterations": self.max_iterations,
            "tolerance_grad": self.tolerance_grad,
            "tolerance_change": self.tolerance_change,
            "max_evaluations_per_iteration": self.max_evaluations_per_iteration,
            "iterations_per_step": self.iterations_per_step,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

    # The methods below run on the host, between calls of the compiled loss
    # and gradient function (see `train_step.py`). During `fit` the state
    # lives in NumPy arrays, `_host`, and is written back to the optimizer
    # variables after every step, so that checkpoints and `.keras` files
    # hold it.

    def _state_variables(self):
        return [
            self._s_history,
            self._y_history,
            self._history_length,
            self._cached_loss,
            self._cached_gradient,
            self._cache_valid,
            self._fingerprint,
            self._evaluations,
            self._stop_code,
            self.iterations,
        ]

    def load_host_state(self):
        """Copy the state variables into NumPy arrays, where `iterate` works on them."""
        host = {
            name: np.array(variable.numpy())
            for name, variable in zip(_STATE_NAMES, self._state_variables())
        }
        # Keras wraps a dict attribute of an optimizer in a TrackedDict, which
        # type-checks every write, and `iterate` writes this dict several
        # times per iteration. It contains only NumPy arrays, so it skips
        # tracking.
        object.__setattr__(self, "_host", host)
        self.read_learning_rate()

    def read_learning_rate(self):
        """Copy `learning_rate` to the NumPy state, so that a change by a callback takes effect."""
        self._host["learning_rate"] = float(self.learning_rate.numpy())

    def host_state(self):
        """Return the NumPy state in the order of the state variables."""
        return [self._host[name] for name in _STATE_NAMES]

    def reset_stop(self):
        """Clear the stop code, so that a new `fit` call checks the tolerances again."""
        if self.built:
            self._stop_code.assign(RUNNING)
        self._host = None

    def move_to(self, point, loss, gradient):
        """Set `point` as the current point, with its loss and gradient from one more evaluation.

        The train function calls this after a weight constraint moved the
        accepted point, so that History and the next iteration use the
        weights actually stored. A non-finite loss or gradient is not cached,
        so the next iteration evaluates it again and raises its usual error.
        """
        self._finish(int(self._host["stop_code"]), point, loss, gradient, 1)
        finite = math.isfinite(loss) and np.all(np.isfinite(gradient))
        self._host["cache_valid"] = np.asarray(1 if finite else 0, "int32")

    def iterate(self, start, evaluate, fingerprint):
        """Run one L-BFGS iteration from the flat point `start`.

        Call `load_host_state()` first. The state arrays are updated in place
        and the caller writes them back to the variables.

        Args:
            start: flat NumPy vector of the trainable variables.
            evaluate: function of a flat vector returning `(loss, gradient)`
                as a float and a NumPy vector.
            fingerprint: float64 NumPy vector that identifies the batch.

        Returns:
            `(loss, flat)`: the loss at the new point and the new flat vector.
        """
        state = self._host
        if int(state["stop_code"]) != RUNNING:
            return float(state["cached_loss"]), start

        # The cache contains the loss and gradient of the last accepted point.
        # They are reused only at that same point (the weights may have been
        # set between two `fit` calls) and on the same batch.
        cached = self._cached_point
        same_point = cached is not None and (cached is start or np.array_equal(cached, start))
        same_batch = (
            same_point
            and int(state["cache_valid"]) == 1
            and _fingerprints_match(state["fingerprint"], fingerprint)
        )
        if same_batch:
            loss, gradient = float(state["cached_loss"]), state["cached_gradient"]
            evaluations = 0
        else:
            loss, gradient = evaluate(start)
            evaluations = 1
            _check_finite_start(loss, gradient)
        state["fingerprint"] = np.asarray(fingerprint, "float64")
        state["cache_valid"] = np.ones((), "int32")

        if float(np.max(np.abs(gradient))) <= self.tolerance_grad:
            self._finish(STOP_GRADIENT, start, loss, gradient, evaluations)
            return loss, start

        direction, history_length = self._direction(gradient, int(state["history_length"]))
        initial_step = state["learning_rate"]
        if int(state["iterations"]) == 0 and history_length == 0:
            norm = float(np.sqrt(np.dot(gradient, gradient)))
            initial_step *= min(1.0, 1.0 / max(norm, 1e-30))

        phi = lambda step: evaluate(start + np.asarray(step, start.dtype) * direction)
        result = self._line_search.search(
            phi,
            loss,
            gradient,
            direction,
            initial_step,
            self.max_evaluations_per_iteration,
            self.tolerance_change,
        )
        evaluations += result.evaluations
        state["iterations"] = state["iterations"] + 1

        if not result.success:
            # A step whose predicted decrease is within rounding of the loss
            # cannot be distinguished from noise, so this is convergence.
            predicted_decrease = -float(np.dot(gradient, direction)) * initial_step
            resolution = _ROUNDING_UNITS * _machine_epsilon(start.dtype) * max(abs(loss), 1.0)
            code = STOP_ROUNDING if predicted_decrease <= resolution else STOP_LINE_SEARCH_FAILED
            state["history_length"] = np.asarray(history_length, "int32")
            self._finish(code, start, loss, gradient, evaluations)
            return loss, start

        step = np.asarray(result.step, start.dtype) * direction
        new_loss, new_gradient = result.loss, result.gradient
        self._update_history(step, new_gradient - gradient, history_length)

        scale = max(abs(loss), abs(new_loss), 1.0)
        code = RUNNING
        if float(np.max(np.abs(new_gradient))) <= self.tolerance_grad:
            code = STOP_GRADIENT
        elif (loss - new_loss) / scale <= self.tolerance_change:
            code = STOP_LOSS_CHANGE
        elif float(np.max(np.abs(step))) <= self.tolerance_change:
            code = STOP_STEP
        elif int(state["iterations"]) >= self.max_iterations:
            code = STOP_MAX_ITERATIONS
        new_point = start + step
        self._finish(code, new_point, new_loss, new_gradient, evaluations)
        return new_loss, new_point

    def _finish(self, code, point, loss, gradient, evaluations):
        self._cached_point = point
        state = self._host
        state["stop_code"] = np.asarray(code, "int32")
        state["cached_loss"] = np.asarray(loss, state["cached_loss"].dtype)
        state["cached_gradient"] = np.asarray(gradient, state["cached_gradient"].dtype)
        state["evaluations"] = state["evaluations"] + evaluations

    def _direction(self, gradient, history_length):
        """Return `-H g` from the two-loop recursion (Nocedal and Wright, algorithm 7.4)."""
        m = self.history_size
        s_history = self._host["s_history"]
        y_history = self._host["y_history"]

        # Pairs are stored oldest first in rows m - length to m - 1.
        rows = range(m - history_length, m)
        rho = {i: 1.0 / float(np.dot(s_history[i], y_history[i])) for i in rows}
        q = np.array(gradient)
        alphas = {}
        for i in reversed(rows):
            alphas[i] = rho[i] * float(np.dot(s_history[i], q))
            q -= np.asarray(alphas[i], q.dtype) * y_history[i]

        gamma = 1.0
        if history_length > 0:
            newest_yy = float(np.dot(y_history[m - 1], y_history[m - 1]))
            gamma = 1.0 / (rho[m - 1] * max(newest_yy, 1e-30))
        r = np.asarray(gamma, q.dtype) * q
        for i in rows:
            beta = rho[i] * float(np.dot(y_history[i], r))
            r += np.asarray(alphas[i] - beta, r.dtype) * s_history[i]
        direction = -r

        # Rounding can leave a direction that does not descend. Restart from
        # steepest descent with an empty history then.
        if not float(np.dot(gradient, direction)) < 0.0:
            return -np.asarray(gradient), 0
        return direction, history_length

    def _update_history(self, step, gradient_change, history_length):
        state = self._host
        if float(np.dot(step, gradient_change)) > _MIN_CURVATURE:
            for name, row in (("s_history", step), ("y_history", gradient_change)):
                history = state[name]
                history[:-1] = history[1:]
                history[-1] = row
            history_length = min(history_length + 1, self.history_size)
        state["history_length"] = np.asarray(history_length, "int32")


_STATE_NAMES = (
    "s_history",
    "y_history",
    "history_length",
    "cached_loss",
    "cached_gradient",
    "cache_valid",
    "fingerprint",
    "evaluations",
    "stop_code",
    "iterations",
)


def _check_finite_start(loss, gradient):
    if math.isfinite(loss) and np.all(np.isfinite(gradient)):
        return
    if math.isfinite(loss):
        problem = "the gradient has NaN or inf values"
    else:
        problem = f"the loss is {loss}"
    raise ValueError(
        f"LBFGS cannot start an iteration because {problem} at the current weights "
        "on this batch. The weights are unchanged. Check the inputs and targets "
        "for NaN or inf values, and the loss for log(0) or a division by zero."
    )


def _machine_epsilon(dtype):
    return {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}.get(
        keras.backend.standardize_dtype(dtype), 2.0**-52
    )


def _fingerprints_match(stored, current):
    if stored is current:
        return True
    scale = np.maximum(np.abs(stored), 1.0)
    return bool(np.all(np.abs(stored - current) <= _FINGERPRINT_TOLERANCE * scale))

