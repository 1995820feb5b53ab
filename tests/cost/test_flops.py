import warnings

import keras
import pytest
import tensorflow as tf

from keras_cost.cost import flops
from keras_cost.cost.flops import count_flops


def _profiler_flops(model, input_shape):
    """Count FLOPs with TensorFlow's own profiler on the model's graph."""
    function = tf.function(lambda x: model(x, training=False), autograph=False)
    concrete = function.get_concrete_function(tf.TensorSpec((1, *input_shape), tf.float32))
    options = (
        tf.compat.v1.profiler.ProfileOptionBuilder(
            tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        )
        .with_empty_output()
        .build()
    )
    return tf.compat.v1.profiler.profile(graph=concrete.graph, options=options).total_float_ops


def test_dense_hand_count():
    model = keras.Sequential(
        [keras.Input((20,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)]
    )
    total, by_type, uncounted = count_flops(model)
    # 2*20*16 + 16 bias + 16 relu, then 2*16*10 + 10 bias.
    assert total == 672 + 330
    assert by_type == {"Dense": 1002}
    assert uncounted == []


def test_conv2d_hand_count():
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, use_bias=False),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(5),
        ]
    )
    total, by_type, _ = count_flops(model)
    # Conv: 6*6*4 outputs, each 3*3*3 multiply-adds. Pool: 3*3*4 outputs,
    # 4 window elements each. Dense: 2*36*5 + 5.
    assert by_type["Conv2D"] == 2 * 27 * 144
    assert by_type["MaxPooling2D"] == 4 * 36
    assert by_type["Dense"] == 365
    assert total == 7776 + 144 + 365


def test_conv1d_and_strides():
    model = keras.Sequential(
        [keras.Input((10, 2)), keras.layers.Conv1D(3, 4, strides=2)]
    )
    total, _, _ = count_flops(model)
    # 4 output positions of 3 filters, each 4*2 multiply-adds, plus bias.
    assert total == 2 * 8 * 12 + 12


def test_depthwise_and_separable():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False),
            keras.layers.SeparableConv2D(5, 2, use_bias=False),
        ]
    )
    _, by_type, _ = count_flops(model)
    # Depthwise: 4*4*4 outputs, 9 multiply-adds each.
    assert by_type["DepthwiseConv2D"] == 2 * 9 * 64
    # Separable on 4x4x4: depthwise 3*3*4 outputs of 4 multiply-adds,
    # then pointwise 3*3*5 outputs of 4 multiply-adds.
    assert by_type["SeparableConv2D"] == 2 * 4 * 36 + 2 * 4 * 45


def test_batch_norm_and_activations():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Activation("softmax"),
        ]
    )
    _, by_type, _ = count_flops(model)
    assert by_type["BatchNormalization"] == 8
    assert by_type["ReLU"] == 4
    assert by_type["Activation"] == 20


def test_merges():
    inputs = keras.Input((6,))
    left = keras.layers.Dense(3, use_bias=False)(inputs)
    right = keras.layers.Dense(3, use_bias=False)(inputs)
    added = keras.layers.Add()([left, right, left])
    joined = keras.layers.Concatenate()([added, right])
    model = keras.Model(inputs, joined)
    _, by_type, _ = count_flops(model)
    assert by_type["Add"] == 2 * 3
    assert "Concatenate" not in by_type


def test_global_and_average_pooling():
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.AveragePooling2D(2),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    _, by_type, _ = count_flops(model)
    assert by_type["AveragePooling2D"] == 4 * 12
    assert by_type["GlobalAveragePooling2D"] == 12


def test_nested_model_recursed():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    inputs = keras.Input((4,))
    outputs = keras.layers.Add()([inner(inputs), inner(inputs)])
    model = keras.Model(inputs, outputs)
    total, by_type, _ = count_flops(model)
    # The shared inner model runs twice.
    assert by_type["Dense"] == 2 * 27
    assert total == 54 + 3


def test_subclassed_model_needs_shape():
    class TwoLayers(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4)
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.hidden(x))

    with pytest.raises(ValueError, match="input_shape"):
        count_flops(TwoLayers())
    total, _, _ = count_flops(TwoLayers(), input_shape=(3,))
    assert total == (24 + 4) + (16 + 2)


@pytest.mark.parametrize("input_shape", [(None, 3), (0,), "8", [(3,), (None,)]])
def test_rejects_invalid_input_shape(input_shape):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="input_shape="):
        count_flops(model, input_shape=input_shape)


def test_two_inputs_given_shapes():
    first = keras.Input((3,))
    second = keras.Input((3,))
    model = keras.Model([first, second], keras.layers.Add()([first, second]))
    total, _, _ = count_flops(model, input_shape=[(3,), (3,)])
    assert total == 3


def test_time_distributed_uses_inner():
    model = keras.Sequential(
        [keras.Input((5, 4)), keras.layers.TimeDistributed(keras.layers.Dense(3))]
    )
    _, by_type, _ = count_flops(model)
    assert by_type["Dense"] == 5 * 27


def test_unknown_layer_warns():
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.LSTM(3)])
    with pytest.warns(UserWarning, match="lstm"):
        total, _, uncounted = count_flops(model)
    assert uncounted == [f"{model.layers[0].name} (LSTM)"]
    assert total == 0


def test_unknown_activation_warns():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, activation=lambda x: x * 2)]
    )
    with pytest.warns(UserWarning, match="activation"):
        _, _, uncounted = count_flops(model)
    assert len(uncounted) == 1


def test_counting_leaves_model_unchanged():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    count_flops(model)
    assert "call" not in vars(model.layers[0])


def test_get_follows_subclasses():
    class MyDense(keras.layers.Dense):
        pass

    assert flops.get(MyDense(2)) is flops.get(keras.layers.Dense(2))


# TensorFlow's profiler counts 0 FLOPs for `Relu`, and this module counts 1
# per element, so the ReLU elements are taken off before comparing.
_PROFILER_CASES = {
    "mlp": (
        (64,),
        lambda: keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        ),
        32,
    ),
    "cnn": (
        (8, 8, 1),
        lambda: keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(8, 3, activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(4, 3, padding="same"),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
            ]
        ),
        6 * 6 * 8,
    ),
    "depthwise_bn": (
        (8, 8, 4),
        lambda: keras.Sequential(
            [
                keras.Input((8, 8, 4)),
                keras.layers.DepthwiseConv2D(3),
                keras.layers.BatchNormalization(),
                keras.layers.Conv2D(8, 1),
                keras.layers.AveragePooling2D(2),
                keras.layers.Flatten(),
                keras.layers.Dense(3),
            ]
        ),
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(_PROFILER_CASES))
def test_matches_tf_profiler(case):
    input_shape, build, relu_elements = _PROFILER_CASES[case]
    model = build()
    with warnings.catch_warnings():
        # The profiler itself warns about TF1 APIs it uses internally.
        warnings.simplefilter("ignore")
        reference = _profiler_flops(model, input_shape)
    total, _, _ = count_flops(model)
    assert abs((total - relu_elements) - reference) <= 0.05 * reference
