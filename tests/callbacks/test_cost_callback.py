import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_cost.callbacks.cost import CostCallback
from keras_cost.datasets import load_digits

# Dense(64 -> 16) with ReLU, then Dense(16 -> 10):
# (2*64*16 + 16 + 16) + (2*16*10 + 10).
FORWARD_FLOPS = 2080 + 330


def _model(steps_per_execution=1):
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return model


def _digits(count=128):
    (x_train, y_train), _ = load_digits()
    return x_train[:count], y_train[:count]


def _fit(callbacks, epochs=2, steps_per_execution=1, **kwargs):
    x, y = _digits()
    model = _model(steps_per_execution)
    history = model.fit(
        x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks, **kwargs
    )
    return model, history


def test_history_records_values():
    _, history = _fit([CostCallback(price_per_hour=3.6, batch_size=32)])
    for key in ("step_seconds", "examples_per_second", "wall_seconds", "train_flops", "cost"):
        assert len(history.history[key]) == 2


def test_train_flops_count_examples():
    _, history = _fit([CostCallback(batch_size=32)])
    assert history.history["train_flops"] == [3.0 * FORWARD_FLOPS * 128, 3.0 * FORWARD_FLOPS * 256]


def test_cost_follows_wall_time():
    _, history = _fit([CostCallback(price_per_hour=3.6, batch_size=32)])
    for wall_seconds, cost in zip(history.history["wall_seconds"], history.history["cost"]):
        assert cost == pytest.approx(wall_seconds / 1000.0)


def test_wall_seconds_cumulative():
    _, history = _fit([CostCallback(batch_size=32)])
    first, second = history.history["wall_seconds"]
    assert 0.0 < first < second


def test_throughput_positive():
    _, history = _fit([CostCallback(batch_size=32)])
    assert min(history.history["step_seconds"]) > 0.0
    assert min(history.history["examples_per_second"]) > 0.0


def test_steps_per_execution_counts_steps():
    callback = CostCallback(batch_size=32)
    _fit([callback], steps_per_execution=2)
    assert callback.summary()["steps"] == 8
    assert callback.summary()["examples"] == 256


def test_summary_totals():
    callback = CostCallback(price_per_hour=1.0, batch_size=32)
    _fit([callback])
    summary = callback.summary()
    assert summary["epochs"] == 2
    assert summary["flops_per_example"] == FORWARD_FLOPS
    assert summary["train_flops"] == 3.0 * FORWARD_FLOPS * 256
    assert summary["cost"] == pytest.approx(summary["wall_seconds"] / 3600.0)
    assert len(summary["per_epoch"]) == 2


def test_summary_before_fit():
    with pytest.raises(RuntimeError, match="after model.fit"):
        CostCallback().summary()


def test_verbose_prints_summary(capsys):
    _fit([CostCallback(batch_size=32, verbose=1)], epochs=1)
    assert "CostCallback: 1 epochs, 4 steps" in capsys.readouterr().out


def test_log_dir_summary_file(tmp_path):
    callback = CostCallback(batch_size=32, log_dir=tmp_path / "run")
    _fit([callback], epochs=1)
    written = json.loads((tmp_path / "run" / "cost_summary.json").read_text())
    assert written["examples"] == 128
    assert written["train_flops"] == callback.summary()["train_flops"]


def test_without_batch_size_warns():
    with pytest.warns(UserWarning, match="batch_size"):
        _, history = _fit([CostCallback()], epochs=1)
    assert "train_flops" not in history.history
    assert "step_seconds" in history.history


def test_given_flops_per_example():
    _, history = _fit([CostCallback(batch_size=32, flops_per_example=10)], epochs=1)
    assert history.history["train_flops"] == [3.0 * 10 * 128]


def test_subclassed_model_warns_without_flops():
    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.flatten = keras.layers.Flatten()
            self.head = keras.layers.Dense(10)

        def call(self, x):
            return self.head(self.flatten(x))

    x, y = _digits(64)
    model = Classifier()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    with pytest.warns(UserWarning, match="flops_per_example"):
        history = model.fit(
            x, y, batch_size=32, epochs=1, verbose=0, callbacks=[CostCallback(batch_size=32)]
        )
    assert "train_flops" not in history.history
    assert "examples_per_second" in history.history


def _event_scalars(log_dir):
    """Read the epoch scalars of every TensorBoard event file under log_dir."""
    scalars = {}
    for path in sorted(pathlib.Path(log_dir).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag.startswith("epoch_"):
                    scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return scalars


def test_tensorboard_event_file(tmp_path):
    log_dir = tmp_path / "logs"
    callbacks = [
        CostCallback(price_per_hour=3.6, batch_size=32),
        keras.callbacks.TensorBoard(log_dir=str(log_dir)),
    ]
    _, history = _fit(callbacks)
    scalars = _event_scalars(log_dir)
    assert scalars["epoch_train_flops"] == pytest.approx(history.history["train_flops"])
    assert scalars["epoch_cost"] == pytest.approx(history.history["cost"])
    assert len(scalars["epoch_examples_per_second"]) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"price_per_hour": -1.0}, "price_per_hour=-1.0"),
        ({"price_per_hour": "2"}, "price_per_hour='2'"),
        ({"price_per_hour": float("inf")}, "price_per_hour=inf"),
        ({"verbose": 2}, "verbose=2"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 8.0}, "batch_size=8.0"),
        ({"flops_per_example": -5}, "flops_per_example=-5"),
        ({"log_dir": 3}, "log_dir of type int"),
    ],
)
def test_rejects_invalid(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CostCallback(**kwargs)


def test_config_round_trip(tmp_path):
    callback = CostCallback(
        price_per_hour=2.5, log_dir=str(tmp_path), verbose=1, batch_size=16, flops_per_example=7
    )
    restored = CostCallback.from_config(callback.get_config())
    assert restored.get_config() == callback.get_config()


def test_serialize_in_fresh_process():
    config = keras.saving.serialize_keras_object(CostCallback(price_per_hour=2.0, batch_size=4))
    script = (
        "import json, sys, keras, keras_cost.callbacks.cost\n"
        "callback = keras.saving.deserialize_keras_object(json.loads(sys.argv[1]))\n"
        "print(callback.price_per_hour, callback.batch_size)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split()[-2:] == ["2.0", "4"]
