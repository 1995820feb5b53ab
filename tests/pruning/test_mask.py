"""Tests of the PruningMask constraint and the granularities."""

import keras
import numpy as np
import pytest

from keras_cost.pruning import PruningMask
from keras_cost.pruning import granularity
from keras_cost.pruning.layers import find_kernels


def _six_inputs():
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])


def test_mask_multiplies_kernel():
    mask = PruningMask(np.array([[1.0, 0.0], [0.0, 1.0]]))
    out = keras.ops.convert_to_numpy(mask(keras.ops.full((2, 2), 3.0)))
    np.testing.assert_array_equal(out, [[3.0, 0.0], [0.0, 3.0]])


def test_mask_applies_inner_first():
    mask = PruningMask(np.array([1.0, 1.0, 0.0]), constraint=keras.constraints.NonNeg())
    out = keras.ops.convert_to_numpy(mask(keras.ops.convert_to_tensor([-2.0, 3.0, 4.0])))
    np.testing.assert_array_equal(out, [0.0, 3.0, 0.0])


def test_mask_keeps_dtype_float16():
    mask = PruningMask(np.array([1.0, 0.0]))
    out = mask(keras.ops.convert_to_tensor([1.5, 2.5], dtype="float16"))
    assert keras.backend.standardize_dtype(out.dtype) == "float16"


def test_mask_variable_float32():
    mask = PruningMask(np.array([1, 0]))
    assert mask.mask.dtype == "float32"
    assert not mask.mask.trainable


def test_mask_rejects_non_binary():
    with pytest.raises(ValueError, match="only 0.0 and 1.0"):
        PruningMask(np.array([0.5, 1.0]))


def test_mask_config_round_trip():
    rng = np.random.default_rng(0)
    values = (rng.random((3, 5, 7)) > 0.5).astype("float32")
    mask = PruningMask(values, constraint=keras.constraints.MaxNorm(2.0))

    restored = PruningMask.from_config(mask.get_config())

    np.testing.assert_array_equal(restored.mask.numpy(), values)
    assert restored.constraint.max_value == 2.0


def test_mask_registered_serialization():
    mask = PruningMask(np.eye(3))
    config = keras.constraints.serialize(mask)
    restored = keras.constraints.deserialize(config)
    assert config["registered_name"] == "keras_cost>PruningMask"
    np.testing.assert_array_equal(restored.mask.numpy(), np.eye(3))


def test_mask_empty_round_trip():
    restored = PruningMask.from_config(PruningMask().get_config())
    assert restored.mask is None


def test_mask_set_mask_reuses_variable():
    mask = PruningMask(np.ones(4))
    variable = mask.mask
    mask.set_mask(np.array([0, 1, 0, 1]))
    assert mask.mask is variable
    np.testing.assert_array_equal(variable.numpy(), [0, 1, 0, 1])


def test_weight_exact_count():
    scores = np.arange(10, dtype="float32")[::-1]
    mask = granularity.get("weight").mask(scores, 0.3)
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0, 0, 0])


def test_weight_ties_by_index():
    # All equal: the lowest flat indices are pruned first.
    mask = granularity.get("weight").mask(np.ones((2, 3)), 0.5)
    np.testing.assert_array_equal(mask, [[0, 0, 0], [1, 1, 1]])


def test_weight_rounding():
    # round(0.25 * 6) = round(1.5) = 2 with Python's round half to even.
    mask = granularity.get("weight").mask(np.arange(6.0), 0.25)
    assert int((mask == 0).sum()) == round(0.25 * 6)


def test_weight_global_ranks_jointly():
    small = np.array([0.1, 0.2, 0.3, 0.4])
    large = np.array([1.0, 2.0, 3.0, 4.0])
    masks = granularity.get("weight").global_masks([small, large], 0.5)
    np.testing.assert_array_equal(masks[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(masks[1], [1, 1, 1, 1])


def test_neuron_prunes_whole_units():
    # Units (columns) with L1 norms 6, 1, 15: the weakest one goes.
    scores = np.abs(np.array([[1.0, 0.5, 7.0], [5.0, 0.5, 8.0]]))
    mask = granularity.get("neuron").mask(scores, 0.34)
    np.testing.assert_array_equal(mask, [[1, 0, 1], [1, 0, 1]])


def test_m_by_n_keeps_two_of_four():
    # Dense kernel (8 inputs, 1 unit): groups of 4 along the input axis.
    scores = np.array([[4.0], [1.0], [3.0], [2.0], [0.1], [0.4], [0.3], [0.2]])
    mask = granularity.get((2, 4)).mask(scores, 0.5)
    np.testing.assert_array_equal(mask[:, 0], [1, 0, 1, 0, 0, 1, 1, 0])


def test_m_by_n_conv_groups_input_channels():
    rng = np.random.default_rng(0)
    scores = rng.random((3, 3, 8, 5))
    mask = granularity.get((2, 4)).mask(scores, 0.5)
    groups = mask.reshape(3, 3, 2, 4, 5).sum(axis=3)
    assert np.all(groups == 2)


def test_m_by_n_rejects_shape():
    with pytest.raises(ValueError, match="multiple of 4"):
        granularity.get((2, 4)).check_kernel(find_kernels(_six_inputs())[0])


def test_neuron_rejects_depthwise():
    model = keras.Sequential([keras.Input((5, 5, 2)), keras.layers.DepthwiseConv2D(3)])
    with pytest.raises(ValueError, match="DepthwiseConv2D"):
        granularity.get("neuron").check_kernel(find_kernels(model)[0])


def test_neuron_bias_mask():
    mask = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(granularity.get("neuron").bias_mask(mask), [1, 0, 1])


@pytest.mark.parametrize("value", ["block", (4, 2), (0, 4), (2.0, 4), (1, 2, 3)])
def test_granularity_rejects(value):
    with pytest.raises(ValueError, match="granularity="):
        granularity.get(value)
