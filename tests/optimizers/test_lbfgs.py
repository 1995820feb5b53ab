import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import scipy.optimize
import tensorflow as tf
from keras import ops

import keras_cost
from keras_cost.optimizers import LBFGS, STOP_REASONS, install_lbfgs_step


def least_squares_data(rows=256, noise=0.1):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 5))
    y = x @ np.array([[1.5], [-2.0], [0.5], [3.0], [-1.0]]) + 0.7
    y = y + noise * rng.normal(size=(rows, 1))
    return x.astype("float32"), y.astype("float32")


def lstsq_solution(x, y):
    design = np.hstack([x, np.ones((len(x), 1))]).astype("float64")
    return np.linalg.lstsq(design, y.astype("float64"), rcond=None)[0].ravel()


def dense_weights(model):
    kernel, bias = model.get_weights()
    return np.concatenate([kernel.ravel(), bias.ravel()])


def linear_model(optimizer=None, dtype=None, **compile_args):
    model = keras.Sequential([keras.Input((5,), dtype=dtype), keras.layers.Dense(1, dtype=dtype)])
    model.compile(optimizer=optimizer or LBFGS(), loss="mse", **compile_args)
    install_lbfgs_step(model)
    return model


class LossAbove:
    """Loss of a constant model output: the model's output is the loss itself."""

    def __call__(self, y_true, y_pred):
        return ops.mean(y_pred)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("learning_rate", 0.0),
        ("learning_rate", float("nan")),
        ("history_size", 0),
        ("history_size", 2.5),
        ("line_search", "newton"),
        ("max_iterations", 0),
        ("tolerance_grad", -1.0),
        ("tolerance_change", float("inf")),
        ("max_evaluations_per_iteration", True),
        ("iterations_per_step", 0),
    ],
)
def test_constructor_rejects(argument, value):
    with pytest.raises(ValueError, match=f"{argument}="):
        LBFGS(**{argument: value})


def test_get_config_round_trip():
    optimizer = LBFGS(
        learning_rate=0.5,
        history_size=4,
        line_search="backtracking",
        max_iterations=33,
        tolerance_grad=1e-4,
        tolerance_change=1e-6,
        max_evaluations_per_iteration=7,
        iterations_per_step=3,
        name="custom",
    )

    restored = LBFGS.from_config(optimizer.get_config())

    assert restored.get_config() == optimizer.get_config()
    assert restored.history_size == 4


def test_serialize_by_registered_name():
    config = keras.optimizers.serialize(LBFGS(history_size=3))
    restored = keras.optimizers.deserialize(config)
    assert isinstance(restored, LBFGS)
    assert restored.history_size == 3


def test_fit_without_install_raises():
    x, y = least_squares_data(16)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(optimizer=LBFGS(), loss="mse")
    with pytest.raises(RuntimeError, match="install_lbfgs_step"):
        model.fit(x, y, batch_size=16, verbose=0)


def test_install_rejects_other_optimizer():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="optimizer="):
        install_lbfgs_step(model)


def test_install_rejects_non_model():
    with pytest.raises(TypeError, match="Received: model of type Dense"):
        install_lbfgs_step(keras.layers.Dense(1))


def test_least_squares_float32_within_20():
    x, y = least_squares_data()
    model = linear_model()

    history = model.fit(x, y, batch_size=len(x), epochs=20, shuffle=False, verbose=0)

    np.testing.assert_allclose(dense_weights(model), lstsq_solution(x, y), atol=1e-5)
    assert len(history.history["loss"]) <= 20
    assert model.optimizer.stop_reason is not None


def test_least_squares_float64_within_20():
    keras.config.set_floatx("float64")
    try:
        x, y = least_squares_data()
        model = linear_model(dtype="float64")
        model.fit(x.astype("float64"), y.astype("float64"), batch_size=len(x), epochs=20, verbose=0)
    finally:
        keras.config.set_floatx("float32")

    np.testing.assert_allclose(dense_weights(model), lstsq_solution(x, y), atol=1e-6)
    assert model.get_weights()[0].dtype == np.float64


def test_least_squares_matches_scipy():
    x, y = least_squares_data()
    model = linear_model()
    model.fit(x, y, batch_size=len(x), epochs=20, verbose=0)

    design = np.hstack([x, np.ones((len(x), 1))]).astype("float64")
    target = y.ravel().astype("float64")

    def objective(theta):
        residual = design @ theta - target
        return np.mean(residual**2), 2.0 * design.T @ residual / len(target)

    result = scipy.optimize.minimize(objective, np.zeros(6), jac=True, method="L-BFGS-B")
    np.testing.assert_allclose(dense_weights(model), result.x, atol=1e-4)


def test_history_and_callbacks_per_iteration():
    x, y = least_squares_data()
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs["loss"]))
    model = linear_model()

    history = model.fit(x, y, batch_size=len(x), epochs=200, callbacks=[callback], verbose=0)

    assert history.history["loss"] == seen
    # Convergence stopped fit long before 200 epochs.
    assert len(seen) < 30
    assert int(model.optimizer.iterations.numpy()) <= len(seen)


def test_loss_decreases_every_iteration():
    x, y = least_squares_data()
    model = linear_model()

    losses = model.fit(x, y, batch_size=len(x), epochs=20, verbose=0).history["loss"]

    assert all(later <= earlier for earlier, later in zip(losses, losses[1:]))


# The first step updates the metrics eagerly, and later steps in a compiled function.
@pytest.mark.parametrize("epochs", [1, 3])
def test_metrics_at_accepted_point(epochs):
    x, y = least_squares_data()
    model = linear_model(metrics=["mae"])

    history = model.fit(x, y, batch_size=len(x), epochs=epochs, verbose=0)
    evaluated = model.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)

    assert history.history["mae"][-1] == pytest.approx(evaluated["mae"], rel=1e-5)
    assert history.history["loss"][-1] == pytest.approx(evaluated["loss"], rel=1e-5)


def test_constrained_history_matches_evaluate():
    # Two true weights are negative, so NonNeg moves the accepted point.
    x, y = least_squares_data()
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(1, kernel_constraint=keras.constraints.NonNeg())]
    )
    model.compile(optimizer=LBFGS(), loss="mse")
    install_lbfgs_step(model)

    history = model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
    after_fit = model.evaluate(x, y, batch_size=len(x), verbose=0)
    logs = model.train_on_batch(x, y, return_dict=True)
    after_batch = model.evaluate(x, y, batch_size=len(x), verbose=0)

    assert np.all(model.layers[0].kernel.numpy() >= 0.0)
    assert history.history["loss"][-1] == pytest.approx(after_fit, rel=1e-5)
    assert logs["loss"] == pytest.approx(after_batch, rel=1e-5)


class CountingDense(keras.layers.Dense):
    """A Dense layer that records its Python calls: "graph" for a trace, "eager" otherwise."""

    calls = []

    def call(self, inputs):
        CountingDense.calls.append("eager" if tf.executing_eagerly() else "graph")
        return super().call(inputs)


def calls_of_first_fit(metrics, epochs=2):
    x, y = least_squares_data()
    model = keras.Sequential([keras.Input((5,)), CountingDense(1)])
    optimizer = LBFGS(tolerance_grad=0.0, tolerance_change=0.0)
    model.compile(optimizer=optimizer, loss="mse", metrics=metrics)
    install_lbfgs_step(model)
    CountingDense.calls = []
    model.fit(x, y, batch_size=len(x), epochs=epochs, verbose=0)
    assert int(optimizer.iterations.numpy()) == epochs
    return CountingDense.calls


def test_compiled_metrics_do_not_retrace():
    # tf.function traces a function twice when its first trace creates
    # metric variables. One eager forward pass on one row builds the metrics
    # first, so the loss and gradient are traced once. The first update of
    # the weights and metrics runs eagerly, and the second step traces it.
    without_metrics = calls_of_first_fit(metrics=None)
    with_metrics = calls_of_first_fit(metrics=["mae"])

    assert without_metrics == ["graph", "eager", "graph"]
    assert with_metrics == ["eager"] + without_metrics


def test_one_step_fit_updates_eagerly():
    # Tracing the update of the weights and metrics costs more than running
    # it eagerly once, and a fit of one step never runs it again.
    assert calls_of_first_fit(metrics=None, epochs=1) == ["graph", "eager"]


def test_iterations_do_not_call_the_model_eagerly():
    # The loss and gradient are traced once: more iterations add no Python
    # calls of the model, whose eager calls would cost milliseconds each.
    assert calls_of_first_fit(metrics=None, epochs=8) == calls_of_first_fit(
        metrics=None, epochs=2
    )


def test_iterations_per_step_matches_one_per_step():
    x, y = least_squares_data()
    tolerances = {"tolerance_grad": 0.0, "tolerance_change": 0.0}
    one_per_step = linear_model(LBFGS(**tolerances))
    six_per_step = linear_model(LBFGS(iterations_per_step=6, **tolerances))
    six_per_step.set_weights(one_per_step.get_weights())
    one_per_step.fit(x, y, batch_size=len(x), epochs=6, shuffle=False, verbose=0)

    history = six_per_step.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)

    # The same six iterations, run back to back inside one step.
    assert int(six_per_step.optimizer.iterations.numpy()) == 6
    assert len(history.history["loss"]) == 1
    assert six_per_step.optimizer.function_evaluations == one_per_step.optimizer.function_evaluations
    for ours, reference in zip(six_per_step.get_weights(), one_per_step.get_weights()):
        np.testing.assert_array_equal(ours, reference)


def test_train_on_batch_runs_one_iteration():
    x, y = least_squares_data()
    model = linear_model()

    first = model.train_on_batch(x, y, return_dict=True)["loss"]
    second = model.train_on_batch(x, y, return_dict=True)["loss"]

    assert int(model.optimizer.iterations.numpy()) == 2
    assert second < first


def test_iterations_per_step_stops_at_convergence():
    x, y = least_squares_data()
    model = linear_model(LBFGS(iterations_per_step=500))

    history = model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)

    # Convergence ends the step early and then fit.
    assert len(history.history["loss"]) == 1
    assert int(model.optimizer.iterations.numpy()) < 30
    np.testing.assert_allclose(dense_weights(model), lstsq_solution(x, y), atol=1e-5)


def test_full_batch_reuses_evaluations():
    x, y = least_squares_data()
    model = linear_model()

    model.fit(x, y, batch_size=len(x), epochs=5, shuffle=True, verbose=0)

    # One evaluation at the start, then about one per line search: reuse
    # of the accepted point's gradient keeps it well below two per iteration.
    iterations = int(model.optimizer.iterations.numpy())
    assert model.optimizer.function_evaluations < 2 * iterations


def test_minibatch_keeps_history_across_batches():
    x, y = least_squares_data(noise=0.0)
    model = linear_model()

    model.fit(x, y, batch_size=64, epochs=5, shuffle=True, verbose=0)

    # Every batch starts with its own evaluation before its line search.
    iterations = int(model.optimizer.iterations.numpy())
    assert iterations > 4
    assert model.optimizer.function_evaluations >= 2 * iterations
    # Noise-free data share one minimizer, which the batches reach together.
    np.testing.assert_allclose(dense_weights(model), lstsq_solution(x, y), atol=1e-4)


def test_minibatch_history_survives_batch_change():
    x, y = least_squares_data(noise=0.0)
    model = linear_model()

    model.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0)

    # The pair from the first batch is still there after the second batch.
    length = int(model.optimizer._history_length.numpy())
    assert length == 2


def test_max_iterations_stops_fit():
    x, y = least_squares_data()
    model = linear_model(LBFGS(max_iterations=3, tolerance_grad=0.0, tolerance_change=0.0))

    history = model.fit(x, y, batch_size=len(x), epochs=50, verbose=0)

    assert len(history.history["loss"]) == 3
    assert model.optimizer.stop_reason == STOP_REASONS[4]


def test_backtracking_converges():
    x, y = least_squares_data()
    model = linear_model(LBFGS(line_search="backtracking"))

    model.fit(x, y, batch_size=len(x), epochs=30, verbose=0)

    np.testing.assert_allclose(dense_weights(model), lstsq_solution(x, y), atol=1e-4)


def test_recompile_restores_default_step():
    x, y = least_squares_data(32)
    model = linear_model()
    model.compile(optimizer="sgd", loss="mse")

    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)

    assert np.isfinite(history.history["loss"][0])


@keras.saving.register_keras_serializable(package="keras_cost_tests")
class Bowl(keras.Model):
    """Output f(w) = (w - c)' A (w - c) / 2 - 5 for every row; minimum -5 at c."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = self.add_weight(shape=(3,), initializer="zeros", name="w")

    def call(self, inputs):
        curvature = ops.convert_to_tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
        offset = self.w - ops.convert_to_tensor([10.0, -20.0, 30.0])
        value = 0.5 * ops.sum(offset * ops.matmul(curvature, offset)) - 5.0
        return ops.zeros_like(inputs[:, :1]) + value


def test_negative_bowl_converges():
    model = Bowl()
    model.compile(optimizer=LBFGS(), loss=LossAbove())
    install_lbfgs_step(model)
    x = np.zeros((4, 1), "float32")

    history = model.fit(x, x, batch_size=4, epochs=50, verbose=0)

    assert history.history["loss"][-1] == pytest.approx(-5.0, abs=1e-4)
    np.testing.assert_allclose(model.w.numpy(), [10.0, -20.0, 30.0], atol=1e-2)
    assert len(history.history["loss"]) < 50


def test_poisson_far_start_converges():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype("float32")
    rates = np.exp(x @ np.array([0.5, -0.3, 0.2]) + 0.4)
    y = rng.poisson(rates).astype("float32")[:, None]
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(1, activation="exponential", bias_initializer=keras.initializers.Constant(6.0))]
    )
    model.compile(optimizer=LBFGS(), loss="poisson")
    install_lbfgs_step(model)

    model.fit(x, y, batch_size=len(x), epochs=100, verbose=0)

    design = np.hstack([x, np.ones((len(x), 1))]).astype("float64")

    def negative_log_likelihood(theta):
        eta = design @ theta
        return np.mean(np.exp(eta) - y.ravel() * eta), design.T @ (np.exp(eta) - y.ravel()) / len(y)

    result = scipy.optimize.minimize(negative_log_likelihood, np.zeros(4), jac=True, method="L-BFGS-B")
    np.testing.assert_allclose(dense_weights(model), result.x, atol=1e-3)


def test_conv_dense_ranks_converge():
    (images, labels), _ = keras_cost.datasets.load_digits()
    images, labels = images[:96], labels[:96]
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 3, activation="tanh"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(1e-2)),
        ]
    )
    model.compile(optimizer=LBFGS(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    install_lbfgs_step(model)
    before = [w.copy() for w in model.get_weights()]

    history = model.fit(images, labels, batch_size=len(images), epochs=60, verbose=0)

    ranks = sorted(w.ndim for w in model.get_weights())
    assert ranks == [1, 1, 2, 4]
    for old, new in zip(before, model.get_weights()):
        assert not np.allclose(old, new)
    losses = history.history["loss"]
    assert losses[-1] < 0.2 * losses[0]


class VectorLossModel(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)

    def call(self, inputs):
        return self.dense(inputs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.square(y_pred - y)[:, 0]


def test_non_scalar_loss_rejected():
    x, y = least_squares_data(16)
    model = VectorLossModel()
    model.compile(optimizer=LBFGS())
    install_lbfgs_step(model)
    with pytest.raises(ValueError, match="scalar loss"):
        model.fit(x, y, batch_size=16, verbose=0)


def test_dropout_rejected():
    x, y = least_squares_data(16)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer=LBFGS(), loss="mse")
    install_lbfgs_step(model)
    with pytest.raises(ValueError, match="deterministic loss") as error:
        model.fit(x, y, batch_size=16, verbose=0)
    assert "Remove Dropout" in str(error.value)


def test_nan_data_raises_before_update():
    x, y = least_squares_data(16)
    x[3, 2] = np.nan
    model = linear_model()
    before = [w.copy() for w in model.get_weights()]

    with pytest.raises(ValueError, match="the loss is nan"):
        model.fit(x, y, batch_size=16, verbose=0)

    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(new, old)


def test_set_weights_between_fits_evaluates_again():
    x, y = least_squares_data()
    model = linear_model()
    start = model.get_weights()
    model.fit(x, y, batch_size=len(x), epochs=5, verbose=0)
    model.set_weights(start)
    loss_at_start = model.evaluate(x, y, batch_size=len(x), verbose=0)

    history = model.fit(x, y, batch_size=len(x), epochs=5, verbose=0)

    # The loss and gradient cached at the end of the first fit belong to
    # other weights, so the second fit must start from a new evaluation.
    assert model.optimizer.stop_reason != STOP_REASONS[5]
    assert history.history["loss"][-1] < 0.1 * loss_at_start
    evaluated = model.evaluate(x, y, batch_size=len(x), verbose=0)
    assert history.history["loss"][-1] == pytest.approx(evaluated, rel=1e-5)


def test_learning_rate_callback_takes_effect():
    x, y = least_squares_data()
    model = linear_model()
    # A step of 1e-12 changes this loss by less than float32 rounding.
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 1.0 if epoch == 0 else 1e-12)

    history = model.fit(x, y, batch_size=len(x), epochs=10, callbacks=[schedule], verbose=0)

    assert len(history.history["loss"]) == 2
    assert model.optimizer.stop_reason == STOP_REASONS[6]


def test_tiny_learning_rate_warns():
    x, y = least_squares_data()
    model = linear_model(LBFGS(learning_rate=1e-12))
    before = [w.copy() for w in model.get_weights()]

    with pytest.warns(UserWarning, match="learning_rate=1e-12"):
        history = model.fit(x, y, batch_size=len(x), epochs=10, verbose=0)

    assert len(history.history["loss"]) == 1
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_allclose(new, old, rtol=1e-6, atol=1e-9)


def square_root_loss(y_true, y_pred):
    # NaN once the output passes 1, and the gradient pushes the output up.
    return ops.mean(ops.sqrt(1.0 - y_pred))


def test_failed_line_search_keeps_weights():
    x = np.ones((8, 1), "float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=LBFGS(learning_rate=1e6, max_evaluations_per_iteration=1), loss=square_root_loss)
    install_lbfgs_step(model)
    before = [w.copy() for w in model.get_weights()]

    with pytest.warns(UserWarning, match="no step that lowers the loss"):
        history = model.fit(x, x, batch_size=8, epochs=5, verbose=0)

    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(new, old)
    assert len(history.history["loss"]) == 1
    assert np.isfinite(history.history["loss"][0])
    assert model.optimizer.stop_reason == STOP_REASONS[5]


def test_save_load_round_trip(tmp_path):
    x, y = least_squares_data()
    model = linear_model(LBFGS(history_size=4, tolerance_grad=0.0, tolerance_change=0.0))
    model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)

    loaded = keras.models.load_model(path)
    install_lbfgs_step(loaded)
    loaded.fit(x, y, batch_size=len(x), epochs=2, verbose=0)
    model.fit(x, y, batch_size=len(x), epochs=2, verbose=0)

    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    np.testing.assert_allclose(dense_weights(loaded), dense_weights(model), rtol=1e-6)


def run_python(code, env_extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_load_in_fresh_process(tmp_path):
    x, y = least_squares_data()
    model = linear_model(LBFGS(history_size=4))
    model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)

    output = run_python(
        f"""
        import keras
        import keras_cost
        model = keras.models.load_model({path!r})
        print(type(model.optimizer).__name__, model.optimizer.history_size, int(model.optimizer.iterations.numpy()))
        """
    )

    assert output.split() == ["LBFGS", "4", "3"]


MIRRORED_SCRIPT = """
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
from keras_cost.optimizers import LBFGS, install_lbfgs_step

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 4)).astype("float32")
y = (x @ rng.normal(size=(4, 1)) + 0.5).astype("float32")
start = [
    rng.normal(size=(4, 3)).astype("float32"), np.zeros(3, "float32"),
    rng.normal(size=(3, 1)).astype("float32"), np.zeros(1, "float32"),
]

def train(strategy):
    with strategy.scope():
        model = keras.Sequential([
            keras.Input((4,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)
        ])
        model.set_weights(start)
        model.compile(optimizer=LBFGS(), loss="mse")
    install_lbfgs_step(model)
    history = model.fit(x, y, batch_size=64, epochs=6, verbose=0)
    return model.get_weights(), history.history["loss"], model.optimizer.function_evaluations

single = train(tf.distribute.get_strategy())
mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print(max(float(np.abs(a - b).max()) for a, b in zip(single[0], mirrored[0])))
print(max(abs(a - b) / abs(a) for a, b in zip(single[1], mirrored[1])))
print(single[2], mirrored[2])
"""


@pytest.mark.slow
def test_mirrored_matches_single_device():
    weight_gap, loss_gap, evaluations = run_python(MIRRORED_SCRIPT).strip().split("\n")

    assert float(weight_gap) < 1e-5
    assert float(loss_gap) < 1e-5
    single, mirrored = evaluations.split()
    assert single == mirrored


def test_steps_per_execution_runs_each_step():
    x, y = least_squares_data(64, noise=0.0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    model.compile(optimizer=LBFGS(), loss="mse", steps_per_execution=4)
    install_lbfgs_step(model)

    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)

    # Four batches per epoch, one iteration each, until convergence.
    assert int(model.optimizer.iterations.numpy()) > 8
    assert history.history["loss"][-1] < 1e-6
