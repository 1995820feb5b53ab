import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_cost.quantization import (
    KMeansQuantizer,
    LinearQuantizer,
    PowerOfTwoQuantizer,
    quantize_weights,
)
from keras_cost.quantization import quantizers

finite_arrays = hnp.arrays(
    "float32",
    st.integers(1, 40),
    elements=st.floats(-100, 100, width=32, allow_nan=False),
)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


@settings(max_examples=60, deadline=None)
@given(
    x=finite_arrays,
    num_bits=st.integers(2, 8),
    symmetric=st.booleans(),
    narrow_range=st.booleans(),
)
def test_linear_error_within_half_step(x, num_bits, symmetric, narrow_range):
    quantizer = LinearQuantizer(num_bits=num_bits, symmetric=symmetric, narrow_range=narrow_range)
    codes, params = quantizer.quantize(x)
    error = np.abs(to_numpy(quantizer.dequantize(codes, params)) - x)
    assert np.all(error <= to_numpy(params["scale"]) / 2 * (1 + 1e-4) + 1e-6)


@settings(max_examples=60, deadline=None)
@given(x=finite_arrays, num_bits=st.integers(2, 8), symmetric=st.booleans())
def test_linear_zero_exact(x, num_bits, symmetric):
    x = np.append(x, np.float32(0.0))
    quantizer = LinearQuantizer(num_bits=num_bits, symmetric=symmetric)
    codes, params = quantizer.quantize(x)
    assert float(to_numpy(codes)[-1]) == float(to_numpy(params["zero_point"]))
    assert to_numpy(quantizer.dequantize(codes, params))[-1] == 0.0


def test_linear_formula_by_hand():
    # Range [-1, 3], 2 bits: scale 4/3, zero point round(0.75) = 1.
    quantizer = LinearQuantizer(num_bits=2)
    codes, params = quantizer.quantize(np.array([-1.0, 0.0, 1.5, 3.0], "float32"))
    np.testing.assert_array_equal(to_numpy(codes), [0.0, 1.0, 2.0, 3.0])
    assert float(params["scale"]) == pytest.approx(4 / 3)


def test_linear_per_channel():
    quantizer = LinearQuantizer(num_bits=8, symmetric=True, per_channel=True)
    x = np.array([[1.0, 0.01], [-0.5, -0.005]], "float32")
    codes, params = quantizer.quantize(x)
    assert to_numpy(params["scale"]).shape == (2,)
    np.testing.assert_allclose(to_numpy(quantizer.dequantize(codes, params)), x, rtol=0.01)


def test_linear_constant_no_nan():
    for value in (0.0, 5.0, -3.0):
        x = np.full((4,), value, "float32")
        out = to_numpy(LinearQuantizer()(x))
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, value, atol=abs(value) / 255 + 1e-6)


@pytest.mark.parametrize(
    "quantizer",
    [LinearQuantizer(num_bits=3), PowerOfTwoQuantizer(num_bits=3), KMeansQuantizer(num_clusters=4)],
)
def test_straight_through_gradient(quantizer):
    x = tf.constant([0.1, -0.7, 0.4, 1.3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(quantizer(x) * tf.constant([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [1.0, 2.0, 3.0, 4.0])


def test_power_of_two_levels():
    x = np.array([0.0, 0.3, -0.6, 1.0, 0.01, -0.2], "float32")
    out = to_numpy(PowerOfTwoQuantizer(num_bits=4)(x))
    # Levels 2^-6 ... 2^0 with 7 magnitudes; 0.01 is nearer 2^-7 than 2^-6
    # in the log domain, so it is below the smallest level and becomes 0.
    np.testing.assert_array_equal(out, [0.0, 0.25, -0.5, 1.0, 0.0, -0.25])


def test_power_of_two_zero_tensor():
    out = to_numpy(PowerOfTwoQuantizer()(np.zeros(3, "float32")))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])


def test_kmeans_cluster_count(rng):
    x = rng.normal(size=(200,)).astype("float32")
    quantizer = KMeansQuantizer(num_clusters=8)
    out = to_numpy(quantizer(x))
    _, params = quantizer.quantize(x)
    # The straight-through call gives exactly the centroids, not values off
    # by float32 rounding.
    assert set(np.unique(out)) <= set(to_numpy(params["codebook"]))
    assert len(np.unique(out)) <= 8
    assert np.abs(out - x).mean() < 0.2


def test_kmeans_keeps_zeros(rng):
    x = rng.normal(size=(100,)).astype("float32")
    x[::3] = 0.0
    out = to_numpy(KMeansQuantizer(num_clusters=4)(x))
    assert np.all(out[::3] == 0.0)


def test_kmeans_without_zeros_matches_sklearn_lloyd(rng):
    # No exact zeros, so no centroid is held at 0: the result is plain
    # Lloyd iteration from the linear initialization, as in scikit-learn.
    from sklearn.cluster import KMeans

    x = rng.normal(size=(500,)).astype("float32")
    x = x[x != 0.0]
    initial = np.linspace(x.min(), x.max(), 4)[:, None]
    _, params = KMeansQuantizer(num_clusters=4, num_iterations=100).quantize(x)
    reference = KMeans(4, init=initial, n_init=1, max_iter=100, tol=0.0, algorithm="lloyd")
    centers = reference.fit(x[:, None].astype("float64")).cluster_centers_.ravel()
    np.testing.assert_allclose(np.sort(to_numpy(params["codebook"])), np.sort(centers), atol=1e-4)


def test_kmeans_matches_sklearn(rng):
    from sklearn.cluster import KMeans

    # Two well separated groups: both methods find their means.
    x = np.concatenate([rng.normal(-3, 0.1, 50), rng.normal(2, 0.1, 50), [0.0]]).astype("float32")
    codes, params = KMeansQuantizer(num_clusters=3, num_iterations=20).quantize(x)
    reference = KMeans(3, n_init=10, random_state=0).fit(x[:, None]).cluster_centers_.ravel()
    np.testing.assert_allclose(np.sort(to_numpy(params["codebook"])), np.sort(reference), atol=0.02)


@pytest.mark.parametrize(
    "quantizer",
    [
        LinearQuantizer(num_bits=4, symmetric=True, per_channel=True, narrow_range=True),
        PowerOfTwoQuantizer(num_bits=5),
        KMeansQuantizer(num_clusters=8, num_iterations=3),
    ],
)
def test_config_round_trip(quantizer):
    config = quantizer.get_config()
    clone = type(quantizer).from_config(config)
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(quantizer)
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


def test_get_by_name():
    assert isinstance(quantizers.get("linear"), LinearQuantizer)
    assert isinstance(quantizers.get("power_of_two"), PowerOfTwoQuantizer)
    assert quantizers.get({"class_name": "kmeans", "config": {"num_clusters": 4}}).num_clusters == 4


def test_get_unknown():
    with pytest.raises(ValueError, match="'log'"):
        quantizers.get("log")


@pytest.mark.parametrize(
    "factory, message",
    [
        (lambda: LinearQuantizer(num_bits=1), "num_bits=1"),
        (lambda: LinearQuantizer(symmetric=1), "symmetric=1"),
        (lambda: PowerOfTwoQuantizer(num_bits=9), "num_bits=9"),
        (lambda: KMeansQuantizer(num_clusters=1), "num_clusters=1"),
    ],
)
def test_invalid_arguments(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_quantize_weights_copy(rng):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    original = [w.copy() for w in model.get_weights()]
    clustered = quantize_weights(model, KMeansQuantizer(num_clusters=4))
    for layer in clustered.layers:
        assert len(np.unique(layer.kernel.numpy())) <= 4
    np.testing.assert_array_equal(clustered.layers[0].bias.numpy(), original[1])
    for expected, actual in zip(original, model.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_quantize_weights_int8_accuracy(rng):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4), keras.layers.Dense(2)])
    x = rng.normal(size=(8, 6)).astype("float32")
    quantized = quantize_weights(model, "linear")
    np.testing.assert_allclose(quantized.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.05)


def test_quantize_weights_no_kernel():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Activation("relu")])
    with pytest.raises(ValueError, match="no layer with a `kernel`"):
        quantize_weights(model, "linear")
