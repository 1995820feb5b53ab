"""Tests of the pruning schedules."""

import keras
import pytest

from keras_cost.pruning import ConstantSparsity
from keras_cost.pruning import PolynomialDecay
from keras_cost.pruning import schedules


def test_constant_fires_every_frequency():
    schedule = ConstantSparsity(0.5, begin_step=3, end_step=9, frequency=3)
    fired = [step for step in range(12) if schedule(step)[0]]
    assert fired == [3, 6, 9]


def test_constant_sparsity_value():
    assert ConstantSparsity(0.3)(1000) == (True, 0.3)


def test_constant_open_end():
    assert ConstantSparsity(0.3, frequency=10)(10**6)[0]


def test_polynomial_values_by_hand():
    # s(t) = 0.8 + (0.2 - 0.8) * (1 - t / 10) ** 3
    schedule = PolynomialDecay(0.2, 0.8, begin_step=0, end_step=10)
    assert schedule(0)[1] == pytest.approx(0.2)
    assert schedule(5)[1] == pytest.approx(0.8 - 0.6 * 0.125)
    assert schedule(10)[1] == pytest.approx(0.8)
    assert schedule(20)[1] == pytest.approx(0.8)


def test_polynomial_before_begin():
    schedule = PolynomialDecay(0.2, 0.8, begin_step=5, end_step=10)
    assert schedule(2) == (False, pytest.approx(0.2))


def test_polynomial_fires_at_end_step():
    # end_step - begin_step = 10 is not a multiple of 4, yet step 10 fires.
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10, frequency=4)
    fired = [step for step in range(15) if schedule(step)[0]]
    assert fired == [0, 4, 8, 10]


def test_polynomial_power_one_linear():
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=4, power=1)
    assert schedule(1)[1] == pytest.approx(0.125)


def test_last_pruning_step_constant():
    schedule = ConstantSparsity(0.5, begin_step=3, frequency=5)
    assert schedule.last_pruning_step(0, 20) == 18
    assert schedule.last_pruning_step(0, 2) is None
    assert schedule.last_pruning_step(19, 22) is None


def test_last_pruning_step_polynomial():
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=4)
    assert schedule.last_pruning_step(0, 100) == 10
    assert schedule.last_pruning_step(0, 9) == 8
    assert schedule.last_pruning_step(11, 100) is None


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_constant_rejects_sparsity(value):
    with pytest.raises(ValueError, match=f"target_sparsity={value}"):
        ConstantSparsity(value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_sparsity": 1.0}, "initial_sparsity=1.0"),
        ({"final_sparsity": -0.5}, "final_sparsity=-0.5"),
        ({"initial_sparsity": 0.6, "final_sparsity": 0.5}, "initial_sparsity=0.6"),
        ({"end_step": 0}, "end_step=0"),
        ({"begin_step": -1}, "begin_step=-1"),
        ({"power": 0}, "power=0"),
        ({"frequency": 0}, "frequency=0"),
    ],
)
def test_polynomial_rejects(kwargs, match):
    arguments = {"initial_sparsity": 0.0, "final_sparsity": 0.5, "begin_step": 0, "end_step": 10}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PolynomialDecay(**arguments)


def test_constant_rejects_end_before_begin():
    with pytest.raises(ValueError, match="end_step=2"):
        ConstantSparsity(0.5, begin_step=5, end_step=2)


def test_constant_rejects_float_step():
    with pytest.raises(TypeError, match="begin_step=1.5"):
        ConstantSparsity(0.5, begin_step=1.5)


def test_constant_rejects_string_sparsity():
    with pytest.raises(TypeError, match="target_sparsity='0.5'"):
        ConstantSparsity("0.5")


def test_constant_config_round_trip():
    schedule = ConstantSparsity(0.4, begin_step=2, end_step=30, frequency=5)
    restored = ConstantSparsity.from_config(schedule.get_config())
    assert restored.get_config() == schedule.get_config()


def test_polynomial_config_round_trip():
    schedule = PolynomialDecay(0.1, 0.9, begin_step=3, end_step=70, power=2, frequency=4)
    restored = PolynomialDecay.from_config(schedule.get_config())
    assert restored.get_config() == schedule.get_config()


def test_schedule_registered_serialization():
    schedule = PolynomialDecay(0.1, 0.9, begin_step=3, end_step=70)
    config = keras.saving.serialize_keras_object(schedule)
    restored = keras.saving.deserialize_keras_object(config)
    assert config["registered_name"] == "keras_cost>PolynomialDecay"
    assert isinstance(restored, PolynomialDecay)
    assert restored.get_config() == schedule.get_config()


def test_get_accepts_callable():
    def schedule(step):
        return True, 0.5

    assert schedules.get(schedule) is schedule


def test_get_accepts_config():
    config = keras.saving.serialize_keras_object(ConstantSparsity(0.25))
    assert schedules.get(config).target_sparsity == 0.25


def test_get_rejects_number():
    with pytest.raises(TypeError, match="schedule=0.5"):
        schedules.get(0.5)


def test_minimal_subclass_prunes_in_fit():
    import keras
    import numpy as np

    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import PruningSchedule
    from keras_cost.pruning import sparsity

    class HalfAtEveryStep(PruningSchedule):
        def _fires(self, step):
            return True

        def sparsity_at(self, step):
            return 0.5

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 4), "float32")
    y = np.ones((8, 8), "float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[PruneCallback(HalfAtEveryStep())])

    assert sparsity(model).overall == 0.5
