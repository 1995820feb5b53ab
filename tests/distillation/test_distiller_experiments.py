"""Accuracy experiments on the digits data, reduced to one seed each."""

import keras
import numpy as np
import pytest

from keras_cost.datasets import load_digits
from keras_cost.distillation import DistillerModel

CROSSENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def trained_teacher(x_train, y_train):
    teacher = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10),
        ]
    )
    teacher.compile(optimizer=keras.optimizers.Adam(learning_rate=0.003), loss=CROSSENTROPY)
    teacher.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    return teacher


def mlp_student(hidden):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


def share_predicted_as(model, images, label):
    return float(np.mean(model.predict(images, verbose=0).argmax(axis=-1) == label))


@pytest.mark.slow
def test_omitted_class_transfer():
    # Hinton et al. (2015): a student that never sees a 3 learns to recognise
    # 3s from the teacher's soft targets on the other digits alone.
    (x_train, y_train), (x_test, y_test) = load_digits()
    teacher = trained_teacher(x_train, y_train)
    seen = y_train != 3
    test_threes = x_test[y_test == 3]

    keras.utils.set_random_seed(0)
    soft_student = mlp_student(64)
    distiller = DistillerModel(
        soft_student, teacher, alpha=0.0, temperature=20.0, cache_teacher_outputs=True
    )
    distiller.compile(optimizer=keras.optimizers.Adam(learning_rate=0.003))
    distiller.fit(x_train[seen], epochs=40, batch_size=32, verbose=0)

    keras.utils.set_random_seed(0)
    hard_student = mlp_student(64)
    hard_student.compile(optimizer=keras.optimizers.Adam(learning_rate=0.003), loss=CROSSENTROPY)
    hard_student.fit(x_train[seen], y_train[seen], epochs=40, batch_size=32, verbose=0)

    assert share_predicted_as(soft_student, test_threes, 3) >= 0.8
    assert share_predicted_as(hard_student, test_threes, 3) == 0.0
