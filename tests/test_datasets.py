import numpy as np

from keras_cost.datasets import load_digits


def test_load_digits_shapes_and_range():
    (x_train, y_train), (x_test, y_test) = load_digits()
    assert x_train.shape == (1437, 8, 8, 1)
    assert x_test.shape == (360, 8, 8, 1)
    assert x_train.dtype == np.float32
    assert x_train.min() == 0.0
    assert x_train.max() == 1.0
    assert y_train.shape == (1437,)
    assert set(np.unique(y_test)) == set(range(10))


def test_load_digits_split_is_stratified():
    (_, y_train), (_, y_test) = load_digits()
    train_share = np.bincount(y_train) / len(y_train)
    test_share = np.bincount(y_test) / len(y_test)
    assert np.abs(train_share - test_share).max() < 0.01


def test_load_digits_split_is_fixed():
    (x_first, _), _ = load_digits()
    (x_second, _), _ = load_digits()
    np.testing.assert_array_equal(x_first, x_second)
