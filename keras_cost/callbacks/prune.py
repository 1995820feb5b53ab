"""`PruneCallback`: prune kernels during `model.fit`."""

import warnings

import keras
import numpy as np

from keras_cost.pruning import criteria as criteria_module
from keras_cost.pruning import granularity as granularity_module
from keras_cost.pruning import schedules as schedules_module
from keras_cost.pruning.layers import check_keras_3_model, find_kernels
from keras_cost.pruning.mask import PruningMask

_SCOPES = ("layer", "global")
# Sparsity targets are compared with this slack, because schedules compute
# them in floating point.
_TOLERANCE = 1e-6


def _read_step(model):
    return int(model.optimizer.iterations.numpy())


def _call_schedule(schedule, step):
    should_prune, sparsity = schedule(step)
    return bool(np.asarray(should_prune)), float(np.asarray(sparsity))


def _attach_mask(layer, attribute, constraint_attribute):
    """Put a `PruningMask` on one layer variable; return True if it is new."""
    variable = getattr(layer, attribute)
    constraint = variable.constraint
    attached = False
    if not isinstance(constraint, PruningMask):
        constraint = PruningMask(constraint=constraint)
        attached = True
    if constraint.mask is None:
        # Masked weights are held at exactly 0.0, so a kernel's zero
        # pattern is its mask.
        constraint.set_mask((variable.numpy() != 0).astype("float32"))
    variable.constraint = constraint
    setattr(layer, constraint_attribute, constraint)
    return attached


def _apply_mask(variable, value, mask):
    variable.constraint.set_mask(mask)
    # Zero the newly masked weights now rather than after the next update,
    # so a fit that ends here already has the sparsity.
    variable.assign(value * mask)


@keras.saving.register_keras_serializable(package="keras_cost")
class PruneCallback(keras.callbacks.Callback):
    """Prune the kernels of a model while it trains.

    At the steps where the schedule fires, the callback ranks each kernel's
    weights by the criterion and sets a 0/1 mask that removes the requested
    fraction. The mask is a `keras_cost.pruning.PruningMask` kernel
    constraint, which the Keras optimizer applies after every update inside
    the compiled train step. So masked weights stay exactly 0.0 between mask
    updates and the forward pass never uses them. The model keeps its masks
    when it is saved, loaded or trained further without this callback.
    The kernels of Dense, Conv1D/2D/3D, their Transpose variants,
    DepthwiseConv1D/2D and SeparableConv1D/2D layers are pruned at any depth,
    inside nested and subclassed models too. Biases are pruned only with
    `granularity="neuron"`, together with their unit.

    The step is read from `model.optimizer.iterations` (the number of
    updates before the batch), so `steps_per_execution > 1`, repeated `fit`
    calls, `initial_epoch` and `BackupAndRestore` follow the schedule. When
    one batch hook covers several steps, the masks are updated if the
    schedule fires at any of them, to the sparsity of the last such step.

    At the end of each epoch the sparsity of the pruned kernels (zeros over
    weights, all pruned kernels together) is written to `logs["sparsity"]`,
    and with `verbose=1` also `logs["sparsity/<kernel name>"]` per kernel
    and a printed line. Place the callback before a `CSVLogger` in the
    callback list so that the logger receives these values. `History` always receives them.

    Args:
        schedule: A `keras_cost.pruning` schedule such as
            `PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)`, or any
            callable `schedule(step) -> (should_prune, sparsity)`, such as a
            TFMOT schedule.
        criterion: How weights are ranked. `"magnitude"`: smallest absolute
            value first. `"activation"`: units with the smallest mean
            |activation| on the training batches first. `"apoz"`: units
            with the highest average percentage of zeros (APoZ) in their
            activation first. The last two need `granularity="neuron"`.
            Defaults to `"magnitude"`.
        granularity: `"weight"` (unstructured), `"neuron"` (whole output
            units or filters, ranked by the summed scores of their weights)
            or a pair `(m, n)` (keep at most `m` non-zeros in every `n`
            consecutive weights of the input axis, e.g. `(2, 4)`).
            Defaults to `"weight"`.
        scope: `"layer"` prunes each kernel to the sparsity on its own;
            `"global"` ranks all pruned kernels together, so the overall
            sparsity is met and layers with many small weights lose more.
            `"global"` needs `granularity="weight"`. Defaults to `"layer"`.
        layers: `None` for every prunable layer, a list of layer names or
            paths (`"outer/inner"`), or a predicate `layer -> bool` called
            on each prunable layer. Defaults to `None`.
        verbose: `0` silent, `1` prints the sparsity after each epoch and
            logs it per kernel. Defaults to `0`.

    Raises:
        ValueError: In the constructor for an invalid argument. In
            `on_train_begin` (before the first step) if the model has no
            prunable layer, a named layer is missing or not prunable, or the
            schedule never fires within the planned steps
            (`epochs * steps` from the current `optimizer.iterations`) and
            the model is not pruned yet.
        TypeError: In `on_train_begin` if the model is not a Keras 3 model,
            such as a Keras 2 (`tf_keras`) model.

    Warns:
        UserWarning: In `on_train_begin` if the schedule fires but cannot
            reach its target within the planned steps, because a later `fit`
            may continue it. In `on_train_end` if training stopped before
            the schedule's target was applied.

    Example:

    >>> import numpy as np
    >>> from keras_cost.pruning import PolynomialDecay, sparsity
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile("sgd", "mse")
    >>> prune = PruneCallback(PolynomialDecay(0.0, 0.5, begin_step=0, end_step=3))
    >>> history = model.fit(np.ones((16, 8)), np.ones((16, 4)), batch_size=4,
    ...                     epochs=1, callbacks=[prune], verbose=0)
    >>> sparsity(model).overall
    0.5
    >>> history.history["sparsity"]
    [0.5]
    """

    def __init__(
        self,
        schedule,
        criterion="magnitude",
        granularity="weight",
        scope="layer",
        layers=None,
        verbose=0,
    ):
        super().__init__()
        self.schedule = schedules_module.get(schedule)
        self._criterion = criteria_module.get(criterion)
        self._granularity = granularity_module.get(granularity)
        if scope not in _SCOPES:
            raise ValueError(
                f"`scope` must be one of {_SCOPES}. Received: scope={scope!r}"
            )
        if scope == "global" and not self._granularity.supports_global:
            raise ValueError(
                "`scope='global'` ranks single weights across layers and "
                "needs `granularity='weight'`. Received: "
                f"granularity={granularity!r}"
            )
        if self._criterion.needs_units and granularity != "neuron":
            raise ValueError(
                f"criterion={criterion!r} scores whole output units and needs "
                f"granularity='neuron'. Received: granularity={granularity!r}"
            )
        self._check_layers(layers)
        if verbose not in (0, 1):
            raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={verbose!r}")
        self._check_m_by_n_schedule()

        self.criterion = criterion
        self.granularity = self._granularity.config_value()
        self.scope = scope
        self.layers = layers if layers is None or callable(layers) else list(layers)
        self.verbose = verbose
        self._kernels = []
        self._masks_ready = False
        self._started = False
        self._mask_cache = {}
        self._next_step = 0
        self._applied_sparsity = None

    @staticmethod
    def _check_layers(layers):
        if layers is None or callable(layers):
            return
        valid = isinstance(layers, (list, tuple, set)) and all(
            isinstance(name, str) for name in layers
        )
        if not valid or not layers:
            raise ValueError(
                "`layers` must be None, a non-empty list of layer names, or "
                f"a predicate `layer -> bool`. Received: layers={layers!r}"
            )

    def _check_m_by_n_schedule(self):
        if not isinstance(self._granularity, granularity_module.MByNGranularity):
            return
        target = getattr(self.schedule, "target_sparsity_value", None)
        expected = self._granularity.sparsity
        if target is not None and abs(target - expected) > _TOLERANCE:
            raise ValueError(
                f"granularity={self._granularity.config_value()} always gives sparsity "
                f"{expected}, but the schedule targets {target}. Use "
                f"ConstantSparsity({expected}, ...) to set when the pattern "
                f"is applied. Received: schedule={self.schedule!r}"
            )

    # Set-up before the first step.

    def on_train_begin(self, logs=None):
        check_keras_3_model(self.model)
        self._kernels = find_kernels(self.model, self.layers)
        self._masks_ready = False
        self._started = False
        self._check_kernel_shapes()
        self._next_step = _read_step(self.model)
        self._check_schedule_reachable()

    def on_train_batch_begin(self, batch, logs=None):
        if self._started:
            return
        # Set up at the first batch rather than in `on_train_begin`, so that
        # weights and step restored by callbacks listed later, such as
        # BackupAndRestore, are in place first.
        self._started = True
        self._next_step = _read_step(self.model)
        # Subclassed models build their layers in the first train step; their
        # masks are attached after it, in `on_train_batch_end`.
        if self._layers_built():
            self._prepare_masks()

    def _layers_built(self):
        return all(kernel.layer.built for kernel in self._kernels)

    def _prepare_masks(self):
        self._check_kernel_shapes()
        self._mask_cache = {
            kernel.name: kernel.variable.constraint.mask.numpy()
            for kernel in self._kernels
            if isinstance(kernel.variable.constraint, PruningMask)
            and kernel.variable.constraint.mask is not None
        }
        changed = self._attach_masks()
        changed |= self._criterion.attach(self._kernels, self.model.distribute_strategy)
        if changed:
            # The train function may have been traced without the new
            # constraints, as in a second `fit` call, so trace it again.
            self.model.make_train_function(force=True)
        self._masks_ready = True

    def _check_kernel_shapes(self):
        check = getattr(self._granularity, "check_kernel", None)
        if check is None or not self._layers_built():
            return
        for kernel in self._kernels:
            check(kernel)

    def _attach_masks(self):
        """Give every pruned variable a `PruningMask`; return True if any is new."""
        attached = False
        with self.model.distribute_strategy.scope():
            for layer, attribute, constraint_attribute in self._masked_variables():
                attached |= _attach_mask(layer, attribute, constraint_attribute)
        return attached

    def _masked_variables(self):
        for kernel in self._kernels:
            yield kernel.layer, kernel.attribute, kernel.constraint_attribute
            if self._granularity.masks_bias and getattr(kernel.layer, "use_bias", False):
                yield kernel.layer, "bias", "bias_constraint"

    def _check_schedule_reachable(self):
        epochs = self.params.get("epochs") if self.params else None
        steps = self.params.get("steps") if self.params else None
        if not epochs or not steps:
            # NOTE: with an unknown number of steps per epoch nothing can be
            # checked here; `on_train_end` warns if the target was missed.
            return
        first = self._next_step
        last = first + epochs * steps - 1
        planned = (
            f"the planned steps {first} to {last} (epochs={epochs} x "
            f"steps={steps}, starting at optimizer.iterations={first})"
        )
        target = getattr(self.schedule, "target_sparsity_value", None)
        if target is not None and self._pruned_sparsity() >= target - _TOLERANCE:
            return

        final = self._final_firing(first, last)
        if final is None and self._pruned_sparsity() == 0:
            raise ValueError(
                f"The pruning schedule {self.schedule!r} never fires within "
                f"{planned}, so the model would not be pruned at all. Move "
                f"begin_step below {last + 1}, lower the frequency, or train "
                "for more steps."
            )
        if target is not None and (final is None or final[1] < target - _TOLERANCE):
            # A later `fit` may continue the schedule, so this is no error.
            warnings.warn(
                f"The pruning schedule {self.schedule!r} cannot reach its "
                f"target sparsity {target} within {planned}. Train for more "
                "steps, or call `fit` again to continue the schedule.",
                stacklevel=2,
            )

    def _final_firing(self, first, last):
        """Return `(step, sparsity)` of the last firing in [first, last], or None."""
        # keras-cost schedules compute this directly; others are scanned.
        last_step = getattr(self.schedule, "last_pruning_step", None)
        if last_step is None:
            return self._last_firing(first, last)
        step = last_step(first, last)
        if step is None:
            return None
        return step, self.schedule.sparsity_at(step)

    # Mask updates.

    def _last_firing(self, first, last):
        """Call the schedule backwards from `last` to find its last firing."""
        # NOTE: in `on_train_begin` this may call a foreign schedule once per
        # planned step, which is slow for TFMOT schedules over long fits.
        for step in range(last, first - 1, -1):
            should_prune, value = _call_schedule(self.schedule, step)
            if should_prune:
                return step, value
        return None

    def on_train_batch_end(self, batch, logs=None):
        if not self._masks_ready:
            self._prepare_masks()
        step = _read_step(self.model)
        if step <= self._next_step:
            return
        firing = self._last_firing(self._next_step, step - 1)
        self._next_step = step
        if firing is not None:
            self._update_masks(firing[1])
            self._criterion.reset()
            self._applied_sparsity = firing[1]

    def _update_masks(self, sparsity):
        values = [k.variable.numpy() for k in self._kernels]
        scores = [
            self._criterion.scores(kernel, value)
            for kernel, value in zip(self._kernels, values)
        ]
        if self.scope == "global":
            masks = self._granularity.global_masks(scores, sparsity)
        else:
            masks = [self._granularity.mask(s, sparsity) for s in scores]

        for kernel, value, mask in zip(self._kernels, values, masks):
            # Writing variables costs far more than ranking, so unchanged
            # masks (common late in a gradual schedule) are not written.
            previous = self._mask_cache.get(kernel.name)
            if previous is not None and np.array_equal(previous, mask):
                continue
            self._mask_cache[kernel.name] = mask
            _apply_mask(kernel.variable, value, mask)
            if self._granularity.masks_bias and getattr(kernel.layer, "use_bias", False):
                bias = kernel.layer.bias
                _apply_mask(bias, bias.numpy(), self._granularity.bias_mask(mask))

    # Logging.

    def _kernel_sparsities(self):
        result = {}
        for kernel in self._kernels:
            value = kernel.variable.numpy()
            result[kernel.name] = (int(np.count_nonzero(value == 0)), value.size)
        return result

    def _pruned_sparsity(self):
        if not self._layers_built():
            return 0.0
        counts = self._kernel_sparsities().values()
        total = sum(size for _, size in counts)
        return sum(zeros for zeros, _ in counts) / total if total else 0.0

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        counts = self._kernel_sparsities()
        total = sum(size for _, size in counts.values())
        overall = sum(zeros for zeros, _ in counts.values()) / total
        logs["sparsity"] = overall
        if self.verbose:
            for name, (zeros, size) in counts.items():
                logs[f"sparsity/{name}"] = zeros / size
            print(f"Epoch {epoch + 1}: sparsity {overall:.4f}")

    def on_train_end(self, logs=None):
        if self._criterion.detach():
            # Trace the model functions again without the activation
            # recorders.
            self.model.make_train_function(force=True)
            self.model.make_test_function(force=True)
            self.model.make_predict_function(force=True)
        # Reached when planned steps were unknown or training stopped early,
        # as with EarlyStopping.
        target = getattr(self.schedule, "target_sparsity_value", None)
        if target is None or self._applied_sparsity is None:
            return
        if self._applied_sparsity < target - _TOLERANCE:
            warnings.warn(
                f"Pruning ended at sparsity {self._applied_sparsity:.4f}, "
                f"below the schedule's target {target}, because training "
                "stopped before the schedule's last step. Train for more "
                "steps or end the schedule earlier.",
                stacklevel=2,
            )

    def get_config(self):
        if callable(self.layers):
            raise ValueError(
                "A PruneCallback with a predicate for `layers` cannot be "
                "serialized. Pass a list of layer names instead."
            )
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "criterion": self.criterion,
            "granularity": self.granularity,
            "scope": self.scope,
            "layers": self.layers,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("granularity"), list):
            config["granularity"] = tuple(config["granularity"])
        return cls(**config)
