"""Real data bundled with scikit-learn, so that nothing is downloaded at run time."""

import numpy as np

# The split is fixed so that accuracies quoted in docs, tests and benchmarks
# refer to the same 360 test images on every machine.
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def load_digits():
    """Load the scikit-learn digits as 8x8 grey-scale images.

    The data set contains 1,797 real handwritten digits (UCI optical recognition
    of handwritten digits), shipped inside scikit-learn, so no download is
    needed. Pixel values 0 to 16 are scaled to [0, 1]. The split is stratified
    by class with `sklearn.model_selection.train_test_split(test_size=0.2,
    random_state=0, stratify=labels)`: 1,437 training and 360 test images,
    the same on every call and every machine.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, where the images are float32
        arrays of shape `(n, 8, 8, 1)` in [0, 1] and the labels are int64
        arrays of shape `(n,)` with values 0 to 9.

    Example:

    >>> from keras_cost.datasets import load_digits
    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape, x_test.shape
    ((1437, 8, 8, 1), (360, 8, 8, 1))
    >>> float(x_train.max()) <= 1.0
    True
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_load_digits()
    images = (bunch.images / 16.0).astype("float32")[..., np.newaxis]
    labels = bunch.target.astype("int64")

    x_train, x_test, y_train, y_test = train_test_split(
        images,
        labels,
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=labels,
    )
    return (x_train, y_train), (x_test, y_test)
