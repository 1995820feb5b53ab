"""Train each keras-cost part for 50 steps (L-BFGS: 20 iterations) under a strategy.

The subprocess scripts `_mirrored_parts.py` and `_parts_worker.py` call
`run_case(name, strategy)` once under a distribution strategy and, for the
reference, once under TensorFlow's default strategy. Each case returns a
dict of NumPy arrays: the final weights as `weight_<i>`, the values of every
replicated state variable on each local replica as `replicas/<name>` with
the replica on the first axis, and case-specific scalars.

Models, data and initial weights come from seeded NumPy only, so every
process starts from the same values.
"""

import functools

import numpy as np

GLOBAL_BATCH_SIZE = 16
# 80 examples are 5 global batches of 16, so 10 epochs are 50 steps.
NUM_EXAMPLES = 80
NUM_STEPS = 50
EPOCHS = NUM_STEPS * GLOBAL_BATCH_SIZE // NUM_EXAMPLES
NUM_FEATURES = 8
NUM_CLASSES = 3
PRICE_PER_HOUR = 1.0
LBFGS_ITERATIONS = 20
# The weights of Dense(8 -> 6) and Dense(6 -> 3) as `model.get_weights()`
# returns them.
WEIGHT_SHAPES = [(8, 6), (6,), (6, 3), (3,)]
COST_LOG_KEYS = (
    "step_seconds",
    "wall_seconds",
    "examples_per_second",
    "train_flops",
    "cost",
)


def make_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_EXAMPLES, NUM_FEATURES)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, size=(NUM_EXAMPLES,)).astype("int64")
    return x, y


def initial_weights(seed=1, shapes=WEIGHT_SHAPES, scale=0.5):
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=scale, size=shape).astype("float32") for shape in shapes]


def build_mlp(hidden=6, seed=1, name=None, regularizer=None):
    """Build Dense(8 -> hidden, relu) -> Dense(hidden -> 3) with NumPy weights."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,)),
            keras.layers.Dense(
                hidden, activation="relu", kernel_regularizer=regularizer, name="hidden"
            ),
            keras.layers.Dense(NUM_CLASSES, name="logits"),
        ],
        name=name,
    )
    shapes = [(NUM_FEATURES, hidden), (hidden,), (hidden, NUM_CLASSES), (NUM_CLASSES,)]
    model.set_weights(initial_weights(seed, shapes))
    return model


def compile_classifier(model, optimizer=None):
    import keras

    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def fit(model, callbacks=(), y=True):
    """Fit 50 steps with the global batch size and a fixed data order."""
    x, labels = make_data()
    history = model.fit(
        x,
        labels if y else None,
        batch_size=GLOBAL_BATCH_SIZE,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )
    return history.history


def replica_values(strategy, variable):
    """Stack the value of `variable` on each local replica, replica first."""
    value = getattr(variable, "value", variable)
    return np.stack([np.asarray(v) for v in strategy.experimental_local_results(value)])


def common_results(strategy, model, history, optimizer=None):
    """Collect the weights of `model`, the optimizer step and the logged metrics."""
    optimizer = optimizer or model.optimizer
    results = {f"weight_{i}": w for i, w in enumerate(model.get_weights())}
    results["num_weights"] = len(model.get_weights())
    results["iterations"] = int(optimizer.iterations.numpy())
    results["replicas/iterations"] = replica_values(strategy, optimizer.iterations)
    for key in ("loss", "accuracy"):
        if key in history:
            results[f"history/{key}"] = np.asarray(history[key])
    return results


def case_prune(strategy):
    """Prune gradually to 50% with `PruneCallback`, logging with `CostCallback`."""
    from keras_cost.callbacks.cost import CostCallback
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import PolynomialDecay

    with strategy.scope():
        model = build_mlp()
        compile_classifier(model)
    # Masks change at steps 0, 5, ..., 30, so several updates happen while
    # the weights keep training between them.
    schedule = PolynomialDecay(0.0, 0.5, begin_step=0, end_step=30, frequency=5)
    prune = PruneCallback(schedule)
    cost = CostCallback(price_per_hour=PRICE_PER_HOUR, batch_size=GLOBAL_BATCH_SIZE)
    history = fit(model, [prune, cost])

    results = common_results(strategy, model, history)
    kernels = [model.layers[0].kernel, model.layers[1].kernel]
    for i, kernel in enumerate(kernels):
        results[f"replicas/mask_{i}"] = replica_values(strategy, kernel.constraint.mask)
        results[f"replicas/kernel_{i}"] = replica_values(strategy, kernel)
    results["history/sparsity"] = np.asarray(history["sparsity"])
    for key in COST_LOG_KEYS:
        results[f"history/{key}"] = np.asarray(history.get(key, []), dtype="float64")
    summary = cost.summary()
    results["cost/steps"] = summary["steps"]
    results["cost/examples"] = summary["examples"]
    results["cost/train_flops"] = summary["train_flops"]
    return results


def case_prune_units(strategy, criterion="apoz"):
    """Prune half of the hidden units, ranked by their activations."""
    from keras_cost.callbacks.prune import PruneCallback
    from keras_cost.pruning import ConstantSparsity

    with strategy.scope():
        model = build_mlp()
        compile_classifier(model)
    # The statistics of 10 steps, summed over the replicas, rank the units.
    schedule = ConstantSparsity(0.5, begin_step=10, frequency=10)
    prune = PruneCallback(schedule, criterion=criterion, granularity="neuron", layers=["hidden"])
    history = fit(model, [prune])

    results = common_results(strategy, model, history)
    kernel = model.get_layer("hidden").kernel
    results["replicas/mask_0"] = replica_values(strategy, kernel.constraint.mask)
    results["replicas/kernel_0"] = replica_values(strategy, kernel)
    return results


def case_l0(strategy):
    """Train hard-concrete L0 gates on the hidden layer of the MLP."""
    import keras

    from keras_cost.pruning import l0_regularize

    base = build_mlp()
    # The gate's noise seed comes from Python's random state, so both runs
    # draw the same noise.
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = l0_regularize(base, l0_lambda=0.01)
        compile_classifier(model)
    history = fit(model)

    results = common_results(strategy, model, history)
    gate = model.layers[0]
    results["replicas/log_alpha"] = replica_values(strategy, gate.log_alpha)
    results["replicas/seed_state"] = replica_values(strategy, gate.seed_generator.state)
    results["gates"] = keras.ops.convert_to_numpy(gate.gates(training=False))
    return results


def case_qat(strategy, export=False):
    """Quantization-aware training of the MLP made by `quantize_model`.

    With `export`, the trained model, still in the strategy's variables, is
    also converted to a full-int8 TFLite file and run on the training data.
    """
    import keras

    from keras_cost.quantization import quantize_model

    base = build_mlp()
    with strategy.scope():
        model = quantize_model(base)
        # Plain SGD, unlike Adam, moves the weights in proportion to the
        # gradient, so a loss that is not scaled for the replicas shows.
        compile_classifier(model, keras.optimizers.SGD(learning_rate=0.1))
    history = fit(model)

    results = common_results(strategy, model, history)
    for i, layer in enumerate(model.layers):
        for name in ("output_min", "output_max", "output_range_set"):
            results[f"replicas/{name}_{i}"] = replica_values(strategy, getattr(layer, name))
    if export:
        results.update(export_int8(model))
    return results


def export_int8(model):
    """Export `model` to full int8 and return its outputs next to the Keras ones.

    A failed export is returned as `export_error`, so that the training
    checks of the same run still report on their own.
    """
    import traceback

    from keras_cost.quantization import TFLiteModel
    from keras_cost.quantization import export_tflite

    x, _ = make_data()
    try:
        runner = TFLiteModel(export_tflite(model, representative_data=x, quantize="int8"))
        tflite_outputs = runner.predict(x)
    except Exception:
        return {"export_error": traceback.format_exc()}
    return {
        "tflite_outputs": np.asarray(tflite_outputs),
        "keras_outputs": model.predict(x, verbose=0),
        "output_scale": float(runner.output_details[0]["scale"]),
    }


def build_distiller(strategy, regularized=True, features=None, cache=False):
    """Build a compiled `DistillerModel` of Dense students and teachers."""
    import keras

    from keras_cost.distillation import DistillerModel

    with strategy.scope():
        teacher = build_mlp(hidden=12, seed=2, name="teacher")
        # A regularization loss checks that the distiller also scales the
        # student's own losses for the replicas.
        regularizer = keras.regularizers.L2(0.05) if regularized else None
        student = build_mlp(hidden=4, seed=3, name="student", regularizer=regularizer)
        distiller = DistillerModel(
            student,
            teacher,
            alpha=0.5,
            temperature=2.0,
            features=features,
            cache_teacher_outputs=cache,
        )
        for i, adapter in enumerate(distiller.adapters):
            shapes = [w.shape for w in adapter.get_weights()]
            adapter.set_weights(initial_weights(10 + i, shapes))
        distiller.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    return distiller


def distiller_results(strategy, distiller, history):
    results = common_results(strategy, distiller.student, history, distiller.optimizer)
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        if key in history:
            results[f"history/{key}"] = np.asarray(history[key])
    teacher_weights = distiller.teacher.get_weights()
    for i, weight in enumerate(teacher_weights):
        results[f"teacher_{i}"] = weight
    return results


def case_distill(strategy):
    """Distill a Dense(12) teacher into a Dense(4) student on labels and logits."""
    distiller = build_distiller(strategy)
    history = fit(distiller)
    return distiller_results(strategy, distiller, history)


def case_distill_unlabeled(strategy):
    """Distill on the teacher's logits alone, with no labels."""
    distiller = build_distiller(strategy)
    history = fit(distiller, y=False)
    return distiller_results(strategy, distiller, history)


def case_distill_features(strategy):
    """Distill logits and the hidden layer through an adapter, teacher outputs cached."""
    distiller = build_distiller(strategy, features=[("hidden", "hidden")], cache=True)
    history = fit(distiller)

    results = distiller_results(strategy, distiller, history)
    for i, weight in enumerate(distiller.adapters[0].get_weights()):
        results[f"adapter_{i}"] = weight
    return results


def case_lbfgs(strategy):
    """Fit a tanh MLP by least squares with full-batch L-BFGS."""
    import keras

    from keras_cost.optimizers import LBFGS
    from keras_cost.optimizers import install_lbfgs_step

    x, _ = make_data()
    rng = np.random.default_rng(4)
    y = np.tanh(x @ rng.normal(size=(NUM_FEATURES, 1))).astype("float32")
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((NUM_FEATURES,)),
                keras.layers.Dense(4, activation="tanh"),
                keras.layers.Dense(1),
            ]
        )
        model.set_weights(initial_weights(5, [(NUM_FEATURES, 4), (4,), (4, 1), (1,)]))
        model.compile(optimizer=LBFGS(history_size=5), loss="mse")
    install_lbfgs_step(model)
    # One L-BFGS iteration per epoch on the whole data, the use L-BFGS is
    # made for.
    history = model.fit(
        x, y, batch_size=NUM_EXAMPLES, epochs=LBFGS_ITERATIONS, shuffle=False, verbose=0
    )

    results = common_results(strategy, model, history.history)
    results["function_evaluations"] = int(model.optimizer.function_evaluations)
    return results


CASES = {
    "prune": case_prune,
    "prune_apoz": case_prune_units,
    "prune_activation": functools.partial(case_prune_units, criterion="activation"),
    "l0": case_l0,
    "qat": case_qat,
    "qat_export": functools.partial(case_qat, export=True),
    "distill": case_distill,
    "distill_unlabeled": case_distill_unlabeled,
    "distill_features": case_distill_features,
    "lbfgs": case_lbfgs,
}


def run_case(name, strategy):
    return CASES[name](strategy)
