"""DistillerModel: train a small student on a frozen teacher's soft targets."""

import keras
from keras import ops

from keras_cost.distillation import features as features_lib
from keras_cost.distillation.losses import SoftTargetKLDivergence
from keras_cost.distillation.losses import validate_temperature

# Keys of the target dict that `fit(..., cache_teacher_outputs=True)` builds.
# The teacher's outputs travel with the labels, so shuffling and
# `validation_split` keep each sample with its own teacher outputs.
TEACHER_OUTPUTS_KEY = "keras_cost_teacher_outputs"
LABELS_KEY = "labels"
_UNLABELED_LOGS = ("loss", "distillation_loss")


def _validate_model(model, role):
    if isinstance(model, keras.Model):
        return
    module = type(model).__module__
    hint = ""
    if module.startswith("tf_keras") or module.startswith("keras.engine"):
        hint = (
            " This is a Keras 2 (tf_keras) object, and keras-cost needs "
            "Keras 3: rebuild the model with `import keras`."
        )
    raise TypeError(
        f"`{role}` must be a Keras 3 `keras.Model`.{hint} Received: "
        f"{role} of type {module}.{type(model).__name__}"
    )


def _validate_fraction(value, name):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1], the weight of the "
            f"supervised loss. Received: {name}={value!r}"
        )


def _validate_nonnegative(value, name):
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not value >= 0.0:
        raise ValueError(
            f"`{name}` must be a number greater than or equal to 0. "
            f"Received: {name}={value!r}"
        )


def _validate_flag(value, name):
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")


def _check_output_shapes(teacher_shapes, student_shapes):
    """Raise `ValueError` unless two lists of output shapes can be compared."""
    mismatch = len(teacher_shapes) != len(student_shapes)
    for teacher_shape, student_shape in zip(teacher_shapes, student_shapes):
        if len(teacher_shape) != len(student_shape):
            mismatch = True
            continue
        for teacher_dim, student_dim in zip(teacher_shape, student_shape):
            if None not in (teacher_dim, student_dim) and teacher_dim != student_dim:
                mismatch = True
    if mismatch:
        raise ValueError(
            "The teacher and student outputs must have the same structure "
            "and shapes, because the student learns the teacher's class "
            f"distribution. Received: teacher output shapes {teacher_shapes}, "
            f"student output shapes {student_shapes}. Give the student the "
            "teacher's output layer size."
        )


def _replica_count():
    """Return the number of replicas of the current `tf.distribute` strategy."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _batch_size(x):
    first = next(value for value in keras.tree.flatten(x) if value is not None)
    return ops.shape(first)[0]


def split_targets(y):
    """Split a target structure into the labels and cached teacher outputs.

    Returns:
        `(labels, teacher_outputs)`. `labels` is `None` for unlabeled
        batches, and `teacher_outputs` is `None` when nothing is cached.
    """
    if isinstance(y, dict) and TEACHER_OUTPUTS_KEY in y:
        return y.get(LABELS_KEY), list(y[TEACHER_OUTPUTS_KEY])
    return y, None


@keras.saving.register_keras_serializable(package="keras_cost")
class DistillerModel(keras.Model):
    """Trains a student model on labels and on a frozen teacher's outputs.

    The training loss is

        L = alpha · L_s + (1 − alpha) · L_t,
        L_t = T² · KL(softmax(t / T) || softmax(s / T))
              + feature_weight · Σ_pairs MSE(teacher feature, adapter(student feature)),

    where `L_s` is the loss given to `compile` on the labels, `t` and `s` are
    the teacher's and the student's logits, and `T` is the temperature
    (Hinton et al. 2015). The factor `T²` keeps the soft loss's gradients on
    the scale of the hard loss's. The optional feature terms are FitNets
    hints (Romero et al. 2015): when a student feature's last axis differs
    from the teacher's, a learned `Dense` adapter (a 1×1 convolution on
    images) maps it to the teacher's size. Regularization losses of the
    student and adapters are added with weight 1. Batches without labels
    (`fit(x)` with no `y`) train on `L_t + regularization` alone.

    The teacher is frozen: `teacher.trainable` is set to `False`, it always
    runs with `training=False`, and the optimizer only updates the
    student's and the adapters' variables. `predict` and `call` return the
    student's outputs, and compiled metrics are computed on them. `fit` and
    `evaluate` log `student_loss` (`L_s` plus regularization) and
    `distillation_loss` (`L_t`) next to `loss`. After training,
    `distiller.student` is an ordinary Keras model that can be saved or
    exported without the teacher or the adapters.

    With `cache_teacher_outputs=True`, `fit` runs the teacher once over the
    training arrays and reuses its outputs in every epoch, so each epoch
    costs only the student's passes. This is valid only when `fit` receives
    the same inputs in every epoch (no random augmentation). `evaluate`
    always runs the teacher.

    Under a `tf.distribute` strategy, create the student, the teacher and
    the `DistillerModel` inside `strategy.scope()`. Every loss term is
    divided by the number of replicas, so a step matches a single-device
    step with the same global batch.

    Args:
        student: The `keras.Model` to train. Its outputs must have the
            structure and shapes of the teacher's.
        teacher: A trained `keras.Model`. It is frozen by this constructor.
        alpha: Weight of the supervised loss `L_s`, in [0, 1]. Defaults to
            `0.1`.
        temperature: Softmax temperature `T`, greater than 0. Defaults to
            `4.0`.
        from_logits: Whether the teacher's and the student's outputs are
            logits. Set it to `False` for models that end in a softmax: their
            outputs are then read as probabilities. Defaults to `True`.
        features: Optional list of `(teacher_layer, student_layer)` layer
            name pairs for feature (hint) distillation. Both models must then
            be functional or `Sequential` models with an `Input`. Defaults to
            `None`.
        feature_weight: Weight of the feature terms inside `L_t`, at least 0.
            Defaults to `1.0`.
        cache_teacher_outputs: Whether `fit` computes the teacher's outputs
            once per call instead of once per batch. Needs array inputs.
            Defaults to `False`.
        **kwargs: Passed to `keras.Model`, for example `name`.

    Raises:
        TypeError: If `student` or `teacher` is not a Keras 3 `keras.Model`.
        ValueError: If the output shapes differ, a feature layer name is
            unknown, feature shapes cannot be adapted, or `alpha`,
            `temperature`, `feature_weight` or a flag is out of range.

    Example:

    >>> import keras
    >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> distiller = DistillerModel(student, teacher, alpha=0.1, temperature=4.0)
    >>> distiller.compile(
    ...     optimizer="sgd",
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ... )
    >>> x, y = keras.random.normal((8, 4)), keras.ops.arange(8) % 3
    >>> logs = distiller.fit(x, y, epochs=1, verbose=0).history
    >>> sorted(logs)
    ['distillation_loss', 'loss', 'student_loss']

    References:
        Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
        Network", arXiv:1503.02531 (2015).
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
        arXiv:1412.6550.
    """

    def __init__(
        self,
        student,
        teacher,
        alpha=0.1,
        temperature=4.0,
        from_logits=True,
        features=None,
        feature_weight=1.0,
        cache_teacher_outputs=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "distiller")
        _validate_model(student, "student")
        _validate_model(teacher, "teacher")
        _validate_fraction(alpha, "alpha")
        validate_temperature(temperature)
        _validate_flag(from_logits, "from_logits")
        feature_pairs = features_lib.validate_feature_pairs(features)
        _validate_nonnegative(feature_weight, "feature_weight")
        _validate_flag(cache_teacher_outputs, "cache_teacher_outputs")
        super().__init__(**kwargs)

        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.from_logits = from_logits
        self.features = feature_pairs
        self.feature_weight = float(feature_weight)
        self.cache_teacher_outputs = cache_teacher_outputs

        self._check_models_before_training()
        # `compile` names per-output losses and metrics after `output_names`,
        # so multi-output students keep their own names ("digits_accuracy").
        student_output_names = getattr(student, "output_names", None)
        if student_output_names:
            self.output_names = list(student_output_names)
        # Built student and teacher models hold every variable, so marking
        # the distiller built lets a loaded file restore the optimizer state.
        self.built = student.built and teacher.built
        self._build_feature_extractors()

        self.soft_loss = SoftTargetKLDivergence(
            temperature=self.temperature, from_logits=self.from_logits
        )
        self.feature_loss = keras.losses.MeanSquaredError(name="feature_mse")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self._has_student_loss = False

    def _check_models_before_training(self):
        teacher_outputs = features_lib.symbolic_outputs(self.teacher)
        student_outputs = features_lib.symbolic_outputs(self.student)
        # NOTE: subclassed models have no symbolic outputs, so their shapes
        # are checked when the first batch is traced instead.
        if teacher_outputs is None or student_outputs is None:
            return
        _check_output_shapes(
            [tuple(output.shape) for output in teacher_outputs],
            [tuple(output.shape) for output in student_outputs],
        )

    def _build_feature_extractors(self):
        self._teacher_extractor = None
        self._student_extractor = None
        self.adapters = []
        if not self.features:
            return

        teacher_names = [pair[0] for pair in self.features]
        student_names = [pair[1] for pair in self.features]
        self._teacher_extractor = features_lib.build_extractor(
            self.teacher, teacher_names, "teacher"
        )
        self._student_extractor = features_lib.build_extractor(
            self.student, student_names, "student"
        )
        output_count = len(features_lib.symbolic_outputs(self.teacher))
        teacher_features = self._teacher_extractor.outputs[output_count:]
        student_features = self._student_extractor.outputs[output_count:]
        for index, (teacher_feature, student_feature) in enumerate(
            zip(teacher_features, student_features)
        ):
            adapter_name = f"adapter_{index}_{student_names[index]}"
            self.adapters.append(
                features_lib.make_adapter(
                    student_feature.shape, teacher_feature.shape, adapter_name
                )
            )

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def compile(self, optimizer="rmsprop", loss=None, **kwargs):
        """Configure training, with `loss` as the student's supervised loss `L_s`.

        Takes the arguments of `keras.Model.compile`. Metrics are computed on
        the student's outputs and the labels.

        Raises:
            ValueError: If `loss` is `None` while `alpha` is above 0.
        """
        if loss is None and self.alpha > 0.0:
            raise ValueError(
                f"`alpha={self.alpha}` weights the supervised loss, but "
                "`compile` received loss=None. Pass the student's loss, for "
                "example keras.losses.SparseCategoricalCrossentropy("
                "from_logits=True), or build the DistillerModel with alpha=0."
            )
        self._has_student_loss = loss is not None
        super().compile(optimizer=optimizer, loss=loss, **kwargs)

    def compile_from_config(self, config):
        # Keras skips `compile` on load when a subclass overrides it, so the
        # saved compile settings are restored here.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and self.optimizer is not None:
            # Creating the slots now lets the saved optimizer state load.
            self.optimizer.build(self.trainable_variables)

    def _run_teacher(self, x):
        if self._teacher_extractor is not None:
            return list(self._teacher_extractor(x, training=False))
        return keras.tree.flatten(self.teacher(x, training=False))

    def _run_student(self, x, y_pred, training):
        # The extractor re-runs the student to expose its features. Its
        # outputs then replace `y_pred`, so that every loss term comes from
        # the same forward pass.
        if self._student_extractor is None:
            return keras.tree.flatten(y_pred), []
        flat = list(self._student_extractor(x, training=training))
        output_count = len(flat) - len(self.features)
        return flat[:output_count], flat[output_count:]

    def _distillation_loss(self, teacher_flat, student_outputs, student_features, sample_weight):
        """Return `L_t`, already divided by the number of replicas."""
        output_count = len(student_outputs)
        teacher_outputs = teacher_flat[:output_count]
        teacher_features = teacher_flat[output_count:]
        _check_output_shapes(
            [tuple(output.shape) for output in teacher_outputs],
            [tuple(output.shape) for output in student_outputs],
        )
        weights = _per_output_weights(sample_weight, output_count)

        total = 0.0
        for teacher_output, student_output, weight in zip(
            teacher_outputs, student_outputs, weights
        ):
            total = total + self.soft_loss(teacher_output, student_output, weight)

        feature_weight = sample_weight if not keras.tree.is_nested(sample_weight) else None
        for adapter, teacher_feature, student_feature in zip(
            self.adapters, teacher_features, student_features
        ):
            adapted = adapter(student_feature)
            hint = self.feature_loss(
                ops.reshape(ops.stop_gradient(teacher_feature), (_batch_size(adapted), -1)),
                ops.reshape(adapted, (_batch_size(adapted), -1)),
                feature_weight,
            )
            total = total + self.feature_weight * hint
        return total

    def _extra_losses(self):
        """Return the sum of regularization and `add_loss` losses, or 0."""
        extra = [ops.sum(ops.cast(loss, "float32")) for loss in self.losses]
        if not extra:
            return 0.0
        # Keras divides these losses by the replica count in its own
        # `compute_loss`, because gradients are summed over replicas.
        return ops.sum(ops.stack(extra)) / _replica_count()

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Return `alpha · L_s + (1 − alpha) · L_t` plus regularization.

        The teacher runs here with `training=False`, unless `fit` cached its
        outputs. The returned value is divided by the number of replicas,
        as Keras expects from `compute_loss`.
        """
        labels, cached_teacher = split_targets(y)
        student_outputs, student_features = self._run_student(x, y_pred, training)
        teacher_flat = cached_teacher if cached_teacher is not None else self._run_teacher(x)

        distillation_loss = self._distillation_loss(
            teacher_flat, student_outputs, student_features, sample_weight
        )
        replicas = _replica_count()
        batch_size = _batch_size(x)
        self.distillation_loss_tracker.update_state(
            distillation_loss * replicas, sample_weight=batch_size
        )
        if labels is None or not self._has_student_loss:
            return distillation_loss + self._extra_losses()

        # Keras's own `compute_loss` applies the compiled loss (already
        # divided by the replica count) and adds the regularization losses.
        structured_outputs = keras.tree.pack_sequence_as(y_pred, student_outputs)
        student_loss = super().compute_loss(
            x=x,
            y=labels,
            y_pred=structured_outputs,
            sample_weight=sample_weight,
            training=training,
        )
        self.student_loss_tracker.update_state(student_loss * replicas, sample_weight=batch_size)
        # Regularization enters `student_loss` with weight alpha, so the
        # remaining (1 − alpha) share is added here to give it weight 1.
        return self.alpha * student_loss + (1.0 - self.alpha) * (
            distillation_loss + self._extra_losses()
        )

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _ = split_targets(y)
        if labels is None:
            # Compiled metrics and the supervised loss need labels, so an
            # unlabeled batch reports only the losses it computed.
            return {
                metric.name: metric.result()
                for metric in self.metrics
                if metric.name in _UNLABELED_LOGS
            }
        results = super().compute_metrics(x, labels, y_pred, sample_weight=sample_weight)
        if not self._has_student_loss:
            results.pop("student_loss", None)
        return results

    def get_metrics_result(self):
        # Compiled metrics stay unbuilt until a labeled batch arrives, and an
        # unbuilt metric raises on `result()`, so they are left out until then.
        results = {}
        for metric in self.metrics:
            if not getattr(metric, "built", True):
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        """Train the student; see `keras.Model.fit` for the arguments.

        With `cache_teacher_outputs=True`, the teacher's outputs for `x` are
        computed once here and passed along with `y`. `y=None` trains on the
        distillation loss alone.

        Raises:
            ValueError: If the cache is enabled and `x` is not in-memory
                arrays, or `class_weight` is passed with the cache.
        """
        if self.cache_teacher_outputs:
            if kwargs.get("class_weight") is not None:
                raise ValueError(
                    "`class_weight` cannot be combined with "
                    "cache_teacher_outputs=True, because the cached teacher "
                    "outputs travel with the labels. Pass per-sample weights "
                    "as `sample_weight` instead."
                )
            y = self._attach_teacher_outputs(x, y, batch_size)
        if self._has_unbuilt_metrics():
            self.make_train_function(force=True)
        return super().fit(x, y, batch_size, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """Evaluate the student; see `keras.Model.evaluate` for the arguments."""
        if self._has_unbuilt_metrics():
            self.make_test_function(force=True)
        return super().evaluate(x, y, *args, **kwargs)

    def _has_unbuilt_metrics(self):
        # After unlabeled batches the compiled metrics are still unbuilt. The
        # first labeled batch creates their variables, which TensorFlow only
        # allows in the first trace of a tf.function, so a fresh step
        # function is made.
        return any(not getattr(metric, "built", True) for metric in self.metrics)

    def _attach_teacher_outputs(self, x, y, batch_size):
        arrays = keras.tree.flatten(x)
        if not arrays or not all(hasattr(array, "shape") for array in arrays):
            raise ValueError(
                "cache_teacher_outputs=True needs `x` as arrays (NumPy arrays "
                "or tensors, possibly in a list or dict), because the teacher's "
                "outputs are computed once and kept aligned with each sample. "
                f"Received: x of type {type(x).__name__}. Pass arrays, or build "
                "the DistillerModel with cache_teacher_outputs=False for "
                "datasets, generators and augmented inputs."
            )
        extractor = self._teacher_extractor or self.teacher
        predictions = extractor.predict(x, batch_size=batch_size or 32, verbose=0)
        targets = {TEACHER_OUTPUTS_KEY: keras.tree.flatten(predictions)}
        if y is not None:
            targets[LABELS_KEY] = y
        return targets

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "alpha": self.alpha,
                "temperature": self.temperature,
                "from_logits": self.from_logits,
                "features": [list(pair) for pair in self.features],
                "feature_weight": self.feature_weight,
                "cache_teacher_outputs": self.cache_teacher_outputs,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)


def _per_output_weights(sample_weight, output_count):
    """Return one sample-weight entry per output (each may be `None`)."""
    if sample_weight is None:
        return [None] * output_count
    if keras.tree.is_nested(sample_weight):
        weights = keras.tree.flatten(sample_weight)
        if len(weights) != output_count:
            raise ValueError(
                f"`sample_weight` has {len(weights)} entries but the student "
                f"has {output_count} outputs. Pass one array for all outputs "
                "or one per output."
            )
        return weights
    return [sample_weight] * output_count
