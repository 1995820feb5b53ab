"""Tests of PruneCallback: masks inside fit, step handling, save and load."""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from keras_cost.callbacks.prune import PruneCallback
from keras_cost.pruning import ConstantSparsity
from keras_cost.pruning import PolynomialDecay
from keras_cost.pruning import PruningMask
from keras_cost.pruning import sparsity
from keras_cost.pruning import strip_pruning


def _mlp(hidden=64, inputs=16, outputs=10):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(outputs),
        ]
    )


def _data(samples, inputs=16, outputs=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, inputs)).astype("float32")
    y = rng.integers(0, outputs, size=(samples,))
    return x, y


def _compile(model, **kwargs):
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **kwargs,
    )


def _kernels(model):
    return [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]


def _zeros(variable):
    return int(np.count_nonzero(variable.numpy() == 0))


def test_prune_no_regrowth():
    # Constant 50% every 7 steps for 50 steps: weights updated between mask
    # updates must stay at exactly zero.
    model = _mlp()
    _compile(model)
    x, y = _data(500)
    callback = PruneCallback(ConstantSparsity(0.5, frequency=7))

    model.fit(x, y, batch_size=10, epochs=1, callbacks=[callback], verbose=0)

    assert int(model.optimizer.iterations.numpy()) == 50
    for kernel in _kernels(model):
        value = kernel.numpy()
        mask = kernel.constraint.mask.numpy()
        assert _zeros(kernel) == round(0.5 * value.size)
        np.testing.assert_array_equal(value == 0, mask == 0)


def test_prune_forward_ignores_masked():
    model = _mlp()
    _compile(model)
    x, y = _data(100)
    model.fit(
        x, y, batch_size=10, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.5, frequency=7))],
    )
    hidden, output = model.layers
    w1 = hidden.kernel.numpy() * hidden.kernel.constraint.mask.numpy()
    w2 = output.kernel.numpy() * output.kernel.constraint.mask.numpy()
    expected = np.maximum(x @ w1 + hidden.bias.numpy(), 0) @ w2 + output.bias.numpy()

    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_prune_never_fires_raises():
    # 1,000 samples, batch 32, 2 epochs is 64 steps: a schedule starting at
    # step 100 can never prune.
    model = _mlp()
    _compile(model)
    x, y = _data(1000)
    callback = PruneCallback(ConstantSparsity(0.5, begin_step=100, frequency=100))

    with pytest.raises(ValueError, match="never fires within the planned steps 0 to 63"):
        model.fit(x, y, batch_size=32, epochs=2, callbacks=[callback], verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 0


def test_prune_frequency_100_reaches_target():
    model = _mlp()
    _compile(model)
    x, y = _data(1000)
    callback = PruneCallback(ConstantSparsity(0.5, frequency=100))

    model.fit(x, y, batch_size=32, epochs=2, callbacks=[callback], verbose=0)

    for kernel in _kernels(model):
        assert _zeros(kernel) == round(0.5 * np.size(kernel.numpy()))


@pytest.mark.parametrize("batch_size", [16, 50])
def test_prune_independent_of_batch_size(batch_size):
    model = _mlp()
    _compile(model)
    x, y = _data(400)
    steps = 2 * int(np.ceil(400 / batch_size))
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=steps - 1, frequency=3)

    model.fit(
        x, y, batch_size=batch_size, epochs=2, verbose=0,
        callbacks=[PruneCallback(schedule)],
    )

    for kernel in _kernels(model):
        assert _zeros(kernel) == round(0.8 * np.size(kernel.numpy()))


def test_prune_polynomial_end_out_of_reach_warns():
    # A later fit may continue the schedule, so a target beyond the planned
    # steps is a warning, not an error.
    model = _mlp()
    _compile(model)
    x, y = _data(64)
    callback = PruneCallback(PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10))

    with pytest.warns(UserWarning, match="cannot reach its target sparsity 0.5 within the planned steps 0 to 7"):
        model.fit(x, y, batch_size=16, epochs=2, callbacks=[callback], verbose=0)


def test_prune_steps_per_execution():
    # With 4 steps per execution a batch hook covers steps 0-3, 4-7, ...: a
    # schedule firing only at step 5 must still prune.
    model = _mlp()
    _compile(model, steps_per_execution=4)
    x, y = _data(160)
    schedule = ConstantSparsity(0.5, begin_step=5, end_step=5)

    model.fit(x, y, batch_size=16, epochs=1, callbacks=[PruneCallback(schedule)], verbose=0)

    assert int(model.optimizer.iterations.numpy()) == 10
    for kernel in _kernels(model):
        assert _zeros(kernel) == round(0.5 * np.size(kernel.numpy()))


def test_prune_repeated_fit_continues_schedule():
    model = _mlp()
    _compile(model)
    x, y = _data(80)
    schedule = PolynomialDecay(0.0, 0.6, begin_step=0, end_step=9)
    callback = PruneCallback(schedule)

    with pytest.warns(UserWarning, match="call `fit` again"):
        model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)
    first = sparsity(model).overall
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)

    assert first == pytest.approx(schedule.sparsity_at(4), abs=0.01)
    assert sparsity(model).overall == pytest.approx(0.6, abs=1e-3)


def test_prune_initial_epoch_uses_iterations():
    # The second fit starts at step 5: a callback counting its own batches
    # would see steps 0-9 and prune at its 8th batch instead of its 3rd.
    model = _mlp()
    _compile(model)
    x, y = _data(80)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    schedule = ConstantSparsity(0.5, begin_step=7, end_step=7)

    class Recorder(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.history = getattr(self, "history", [])
            self.history.append(sparsity(self.model).overall)

    recorder = Recorder()
    model.fit(
        x, y, batch_size=16, epochs=2, initial_epoch=1, verbose=0,
        callbacks=[PruneCallback(schedule), recorder],
    )

    assert recorder.history[1] == 0.0
    assert recorder.history[2] == pytest.approx(0.5, abs=1e-3)


def test_prune_logs_sparsity_history():
    model = _mlp()
    _compile(model)
    x, y = _data(64)
    callback = PruneCallback(ConstantSparsity(0.25), verbose=1)

    history = model.fit(x, y, batch_size=16, epochs=2, callbacks=[callback], verbose=0)

    assert history.history["sparsity"] == [pytest.approx(0.25, abs=1e-3)] * 2
    assert history.history["sparsity/dense/kernel"][-1] == 0.25


def test_prune_csv_logger(tmp_path):
    model = _mlp()
    _compile(model)
    x, y = _data(32)
    path = tmp_path / "log.csv"
    callbacks = [PruneCallback(ConstantSparsity(0.5)), keras.callbacks.CSVLogger(str(path))]

    model.fit(x, y, batch_size=16, epochs=1, callbacks=callbacks, verbose=0)

    header = path.read_text().splitlines()[0].split(",")
    assert "sparsity" in header


def test_prune_composes_user_constraint():
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, kernel_constraint=keras.constraints.NonNeg())]
    )
    _compile(model)
    x, y = _data(64, outputs=8)

    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.5))],
    )

    kernel = model.layers[0].kernel
    assert isinstance(kernel.constraint.constraint, keras.constraints.NonNeg)
    assert float(kernel.numpy().min()) >= 0.0
    assert _zeros(kernel) >= 64


def test_prune_strip_restores_user_constraint():
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(8, kernel_constraint=keras.constraints.NonNeg())]
    )
    _compile(model)
    x, y = _data(64, outputs=8)
    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.5))],
    )

    stripped = strip_pruning(model)

    assert isinstance(stripped.layers[0].kernel.constraint, keras.constraints.NonNeg)


def test_prune_mixed_float16():
    keras.config.set_dtype_policy("mixed_float16")
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(12, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(10, dtype="float32"),
        ]
    )
    _compile(model)
    x = np.random.default_rng(0).random((48, 8, 8, 1)).astype("float32")
    y = np.arange(48) % 10

    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.6))],
    )

    for layer in (model.layers[0], model.layers[2]):
        mask = layer.kernel.constraint.mask
        assert mask.dtype == "float32"
        assert set(np.unique(mask.numpy()).tolist()) == {0.0, 1.0}
        assert _zeros(layer.kernel) == round(0.6 * np.size(layer.kernel.numpy()))
    assert np.all(np.isfinite(model.predict(x, verbose=0)))


def _nested_model():
    inner = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(32)], name="inner"
    )
    inputs = keras.Input((16,))
    outputs = keras.layers.Dense(10)(inner(inputs))
    return keras.Model(inputs, outputs)


def test_prune_nested_model():
    model = _nested_model()
    _compile(model)
    x, y = _data(64)

    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.75))],
    )

    report = sparsity(model)
    assert report.kernels["inner/dense/kernel"] == 0.75
    assert report.kernels["inner/dense_1/kernel"] == 0.75
    assert report.kernels["dense_2/kernel"] == 0.75


class Holder(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(12, activation="relu")
        self.head = keras.layers.Dense(10)

    def call(self, inputs):
        return self.head(self.hidden(inputs))


def test_prune_subclassed_model():
    model = Holder()
    _compile(model)
    x, y = _data(64)

    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.5))],
    )

    assert _zeros(model.hidden.kernel) == round(0.5 * 16 * 12)
    assert _zeros(model.head.kernel) == round(0.5 * 12 * 10)


def test_prune_nothing_prunable_raises():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
    model.compile("sgd", "mse")
    x = np.ones((8, 4), "float32")

    with pytest.raises(ValueError, match="no prunable layer"):
        model.fit(x, x, epochs=1, verbose=0, callbacks=[PruneCallback(ConstantSparsity(0.5))])


def test_prune_named_layer_not_prunable():
    model = _mlp()
    model.add(keras.layers.BatchNormalization(name="norm"))
    _compile(model)
    x, y = _data(16)
    callback = PruneCallback(ConstantSparsity(0.5), layers=["norm"])

    with pytest.raises(ValueError, match="BatchNormalization cannot be pruned"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])


def test_prune_tf_keras_model():
    import tf_keras

    legacy = tf_keras.Sequential([tf_keras.layers.Dense(2, input_shape=(3,))])
    callback = PruneCallback(ConstantSparsity(0.5))
    callback.set_model(legacy)

    with pytest.raises(TypeError, match="Keras 2 \\(`tf_keras`\\) object"):
        callback.on_train_begin()


def test_prune_tfmot_style_callable():
    # Any callable returning (should_prune, sparsity) is a schedule.
    model = _mlp()
    _compile(model)
    x, y = _data(64)

    def schedule(step):
        return step == 2, 0.3

    model.fit(x, y, batch_size=16, epochs=1, callbacks=[PruneCallback(schedule)], verbose=0)

    assert sparsity(model).overall == pytest.approx(0.3, abs=1e-3)


def test_prune_callable_never_fires_raises():
    model = _mlp()
    _compile(model)
    x, y = _data(64)

    def schedule(step):
        return step == 100, 0.3

    with pytest.raises(ValueError, match="never fires"):
        model.fit(x, y, batch_size=16, epochs=1, callbacks=[PruneCallback(schedule)], verbose=0)


def test_prune_demo_cnn_then_plain_fit():
    # The mask constraint stays on the kernels, so a later fit without the
    # callback (such as quantization-aware training) keeps the zeros.
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    _compile(model)
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    y = np.arange(64) % 10
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=7)
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[PruneCallback(schedule)], verbose=0)
    masks = [k.constraint.mask.numpy() for k in _kernels(model)]

    _compile(model)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)

    for kernel, mask in zip(_kernels(model), masks):
        assert _zeros(kernel) == round(0.75 * mask.size)
        np.testing.assert_array_equal(kernel.numpy() == 0, mask == 0)


def test_prune_strip_outputs_identical():
    model = _mlp()
    _compile(model)
    x, y = _data(64)
    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.75))],
    )

    stripped = strip_pruning(model)

    assert stripped.layers[0].kernel.constraint is None
    assert sparsity(stripped).overall == pytest.approx(0.75, abs=0.01)
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), model.predict(x, verbose=0))


def test_prune_strip_nested_model():
    model = _nested_model()
    _compile(model)
    x, y = _data(32)
    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.5))],
    )

    stripped = strip_pruning(model)

    inner = stripped.get_layer("inner")
    assert not isinstance(inner.layers[0].kernel.constraint, PruningMask)
    assert sparsity(stripped).kernels["inner/dense/kernel"] == 0.5


def test_prune_strip_before_fire_warns():
    # Training stops after the first epoch, before the schedule fires.
    model = _mlp()
    _compile(model)
    x, y = _data(80)

    class StopAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    callbacks = [PruneCallback(ConstantSparsity(0.5, begin_step=8)), StopAfterEpoch()]
    model.fit(x, y, batch_size=16, epochs=2, callbacks=callbacks, verbose=0)

    with pytest.warns(UserWarning, match="remove no weight"):
        strip_pruning(model)


def test_prune_backup_and_restore(tmp_path):
    # The schedule ends at step 3; training is interrupted at the start of
    # epoch 2 (step 5) and resumed by a fresh model, as after a crash. The
    # masks must come back from the restored zeros, or weights would regrow.
    x, y = _data(80)
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=3)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    model = _mlp()
    _compile(model)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x, y, batch_size=16, epochs=3, verbose=0,
            callbacks=[PruneCallback(schedule), backup, Interrupt()],
        )

    class CountBatches(keras.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1

    resumed = _mlp()
    _compile(resumed)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    counter = CountBatches()
    resumed.fit(
        x, y, batch_size=16, epochs=3, verbose=0,
        callbacks=[PruneCallback(schedule), backup, counter],
    )

    assert counter.batches == 10
    assert int(resumed.optimizer.iterations.numpy()) == 15
    for kernel in _kernels(resumed):
        assert _zeros(kernel) == round(0.5 * np.size(kernel.numpy()))


def test_prune_m_by_n_schedule_mismatch():
    # (2, 4) always gives sparsity 0.5.
    with pytest.raises(ValueError, match="always gives sparsity 0.5"):
        PruneCallback(ConstantSparsity(0.7), granularity=(2, 4))


def test_prune_round_trip_config():
    callback = PruneCallback(
        ConstantSparsity(0.5, begin_step=2, end_step=40, frequency=3),
        granularity=(2, 4),
        scope="layer",
        layers=["dense"],
        verbose=1,
    )

    restored = PruneCallback.from_config(callback.get_config())

    assert restored.get_config() == callback.get_config()
    assert restored.granularity == (2, 4)
    assert restored.schedule.frequency == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"criterion": "gradient"}, "criterion"),
        ({"granularity": "block"}, "granularity"),
        ({"granularity": (4, 2)}, "granularity"),
        ({"scope": "model"}, "scope"),
        ({"scope": "global", "granularity": "neuron"}, "global"),
        ({"layers": "dense"}, "layers"),
        ({"verbose": 2}, "verbose"),
    ],
)
def test_prune_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneCallback(ConstantSparsity(0.5), **kwargs)


def test_prune_invalid_schedule():
    with pytest.raises(TypeError, match="schedule=0.5"):
        PruneCallback(0.5)


_FRESH_LOAD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    import keras_cost
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import PolynomialDecay, sparsity

    model = keras.models.load_model(sys.argv[1])
    kernel = model.layers[0].kernel
    print("step", int(model.optimizer.iterations.numpy()))
    print("mask_zeros", int((kernel.constraint.mask.numpy() == 0).sum()))
    print("kernel_zeros", int((kernel.numpy() == 0).sum()))
    x = np.load(sys.argv[2])
    y = np.arange(len(x)) % 2
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=3)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[PruneCallback(schedule)])
    print("step_after", int(model.optimizer.iterations.numpy()))
    print("sparsity_after", sparsity(model).overall)
    """
)


@pytest.mark.slow
def test_prune_fresh_process_load(tmp_path):
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8), keras.layers.Dense(2)]
    )
    _compile(model)
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    y = np.arange(32) % 2
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=3)
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, verbose=0, callbacks=[PruneCallback(schedule)])
    mask_zeros = int((model.layers[0].kernel.constraint.mask.numpy() == 0).sum())
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_LOAD, str(path), str(tmp_path / "x.npy")],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    values = dict(line.split() for line in result.stdout.splitlines() if " " in line)

    assert int(values["step"]) == 1
    assert int(values["mask_zeros"]) == mask_zeros
    assert int(values["kernel_zeros"]) == mask_zeros
    assert int(values["step_after"]) == 5
    assert float(values["sparsity_after"]) == pytest.approx(0.5, abs=0.01)


def test_prune_global_scope():
    # Global ranking: overall sparsity is exact, per-layer values differ.
    model = _mlp()
    _compile(model)
    x, y = _data(64)
    model.layers[1].kernel.assign(model.layers[1].kernel.numpy() * 10.0)

    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.6), scope="global")],
    )

    report = sparsity(model)
    assert report.zeros == round(0.6 * report.size)
    assert report.kernels["dense/kernel"] > report.kernels["dense_1/kernel"]


def test_prune_two_of_four():
    model = _mlp()
    _compile(model)
    x, y = _data(64)

    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.5), granularity=(2, 4))],
    )

    for kernel in _kernels(model):
        groups = (kernel.numpy() != 0).reshape(-1, 4, kernel.shape[-1]).sum(axis=1)
        assert np.all(groups <= 2)


def test_prune_two_of_four_bad_shape():
    model = _mlp(inputs=6)
    _compile(model)
    x, y = _data(32, inputs=6)

    with pytest.raises(ValueError, match="multiple of 4"):
        model.fit(
            x, y, batch_size=16, epochs=1, verbose=0,
            callbacks=[PruneCallback(ConstantSparsity(0.5), granularity=(2, 4))],
        )


def test_prune_neuron_granularity():
    model = _mlp(hidden=20)
    _compile(model)
    x, y = _data(64)
    callback = PruneCallback(ConstantSparsity(0.5), granularity="neuron", layers=["dense"])

    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)

    hidden = model.layers[0]
    dead_units = np.all(hidden.kernel.numpy() == 0, axis=0)
    assert int(dead_units.sum()) == 10
    np.testing.assert_array_equal(hidden.bias.numpy()[dead_units], 0.0)
    assert np.all(np.any(hidden.kernel.numpy()[:, ~dead_units] != 0, axis=0))


def test_prune_selected_layers_only():
    model = _mlp()
    _compile(model)
    x, y = _data(64)

    model.fit(
        x, y, batch_size=16, epochs=1, verbose=0,
        callbacks=[PruneCallback(ConstantSparsity(0.5), layers=["dense_1"])],
    )

    assert _zeros(model.layers[0].kernel) == 0
    assert model.layers[0].kernel.constraint is None
    assert _zeros(model.layers[1].kernel) == 320


def test_prune_layers_predicate():
    model = _mlp()
    _compile(model)
    x, y = _data(64)
    callback = PruneCallback(ConstantSparsity(0.5), layers=lambda layer: layer.units == 64)

    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)

    assert _zeros(model.layers[0].kernel) == 512
    assert _zeros(model.layers[1].kernel) == 0


def _dead_unit_model():
    # Units 0-4 of the hidden layer have a large negative bias, so they are
    # always 0 after ReLU although their weights are the largest.
    model = _mlp(hidden=10)
    hidden = model.layers[0]
    kernel = np.random.default_rng(1).normal(size=(16, 10)).astype("float32")
    kernel[:, :5] *= 5.0
    bias = np.zeros(10, "float32")
    bias[:5] = -100.0
    hidden.kernel.assign(kernel)
    hidden.bias.assign(bias)
    return model


@pytest.mark.parametrize("criterion", ["activation", "apoz"])
def test_prune_activation_criteria(criterion):
    model = _dead_unit_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x, _ = _data(64)
    y = np.zeros((64, 10), "float32")
    callback = PruneCallback(
        ConstantSparsity(0.5, begin_step=3, end_step=3),
        criterion=criterion, granularity="neuron", layers=["dense"],
    )

    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)

    dead = np.all(model.layers[0].kernel.numpy() == 0, axis=0)
    np.testing.assert_array_equal(np.flatnonzero(dead), [0, 1, 2, 3, 4])


def test_prune_magnitude_keeps_dead_units():
    # The control: magnitude ranking keeps the large but dead units.
    model = _dead_unit_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    x, _ = _data(64)
    y = np.zeros((64, 10), "float32")
    callback = PruneCallback(
        ConstantSparsity(0.5, begin_step=3, end_step=3), granularity="neuron", layers=["dense"],
    )

    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)

    dead = np.all(model.layers[0].kernel.numpy() == 0, axis=0)
    np.testing.assert_array_equal(np.flatnonzero(dead), [5, 6, 7, 8, 9])


def test_prune_activation_restores_activation():
    model = _dead_unit_model()
    _compile(model)
    x, y = _data(32)
    callback = PruneCallback(ConstantSparsity(0.5), criterion="apoz", granularity="neuron")

    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)

    assert model.layers[0].activation is keras.activations.relu


def test_prune_activation_needs_neuron():
    with pytest.raises(ValueError, match="needs granularity='neuron'"):
        PruneCallback(ConstantSparsity(0.5), criterion="apoz")


def test_prune_activation_checkpoint_loads(tmp_path):
    # A checkpoint written while the activation recorders are attached
    # loads with the plain activation.
    model = _dead_unit_model()
    _compile(model)
    x, y = _data(32)
    path = str(tmp_path / "checkpoint.keras")
    callbacks = [
        PruneCallback(ConstantSparsity(0.5), criterion="activation", granularity="neuron"),
        keras.callbacks.ModelCheckpoint(path),
    ]

    model.fit(x, y, batch_size=16, epochs=1, callbacks=callbacks, verbose=0)
    loaded = keras.models.load_model(path)

    assert loaded.layers[0].activation is keras.activations.relu
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
