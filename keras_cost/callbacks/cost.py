"""`CostCallback`: time, throughput, FLOPs and price of a `model.fit` run."""

import json
import math
import os
import time
import warnings

import keras

from keras_cost.cost.flops import count_flops

# An estimate: one training step costs about three forward passes, because
# the backward pass computes gradients with respect to both activations and
# weights, each about as costly as the forward pass.
TRAIN_FLOPS_PER_FORWARD_FLOP = 3

SUMMARY_FILE_NAME = "cost_summary.json"


def _check_number(name, value, allow_none=True, minimum=0.0, strict=False):
    if value is None and allow_none:
        return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number or None. Received: {name}={value!r}")
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise ValueError(f"`{name}` must be {bound} {minimum}. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="keras_cost")
class CostCallback(keras.callbacks.Callback):
    """Log what a training run costs in time, FLOPs and money.

    At the end of every epoch these values are written into `logs`, so
    `History`, `CSVLogger` and `TensorBoard` record them:

    - `step_seconds`: training time of the epoch divided by its optimizer
      steps. Training time runs from `on_epoch_begin` to the last
      `on_train_batch_end`, so validation is left out. Steps are read from
      `model.optimizer.iterations`, which stays right with
      `steps_per_execution > 1`. The first epoch includes the time Keras
      spends tracing and compiling the train step.
    - `wall_seconds`: seconds since `on_train_begin`, validation and other
      callbacks included, cumulative over the `fit` call.
    - `examples_per_second` (needs `batch_size`): examples of the epoch
      divided by its training time.
    - `train_flops` (needs `batch_size` and a FLOP count): an estimate,
      `3 * forward FLOPs per example * examples seen`, cumulative. The
      factor 3 counts the backward pass as twice the forward pass. Forward
      FLOPs follow `keras_cost.cost.flops` (a multiply-add is 2 FLOPs).
    - `cost` (needs `price_per_hour`): `price_per_hour * wall_seconds /
      3600`, cumulative, in the currency of the price.

    Keras hands the same `logs` dict to every callback in list order and
    adds `History` last, so `History` always receives these values. Place
    `TensorBoard` and `CSVLogger` after this callback in the list.

    At the end of training `summary()` returns the totals. With `verbose=1`
    they are printed, and with `log_dir` they are written to
    `<log_dir>/cost_summary.json`.

    Args:
        price_per_hour: Price of the machine per hour, for example 2.5 for
            a cloud instance. Defaults to `None`, which logs no `cost`.
        log_dir: Folder for `cost_summary.json`, created if missing.
            Defaults to `None`, which writes nothing.
        verbose: `0` silent, `1` prints the summary at the end of training.
            Defaults to `0`.
        batch_size: The batch size given to `fit`. Keras does not tell
            callbacks the batch size, so without it examples per second and
            training FLOPs are not logged. Defaults to `None`.
        flops_per_example: Forward FLOPs per example. Defaults to `None`,
            which counts them with `keras_cost.cost.count_flops` when
            training begins. Pass it for a subclassed model, whose input
            shape is unknown to the callback.

    Raises:
        ValueError: In the constructor, for an invalid argument, such as a
            negative `price_per_hour`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> from keras_cost.callbacks.cost import CostCallback
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> callback = CostCallback(price_per_hour=3.0, batch_size=8)
    >>> history = model.fit(np.zeros((16, 4)), np.zeros((16, 1)),
    ...     batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    >>> history.history["train_flops"]
    [432.0]
    >>> callback.summary()["examples"]
    16
    """

    def __init__(
        self,
        price_per_hour=None,
        log_dir=None,
        verbose=0,
        batch_size=None,
        flops_per_example=None,
    ):
        super().__init__()
        self.price_per_hour = _check_number("price_per_hour", price_per_hour)
        if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
            raise ValueError(
                "`log_dir` must be a path or None. "
                f"Received: log_dir of type {type(log_dir).__name__}"
            )
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        if verbose not in (0, 1) or isinstance(verbose, float):
            raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={verbose!r}")
        self.verbose = int(verbose)
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(
                "`batch_size` must be a positive integer (the batch size given "
                f"to fit) or None. Received: batch_size={batch_size!r}"
            )
        self.batch_size = batch_size
        self.flops_per_example = _check_number("flops_per_example", flops_per_example)
        self._summary = None

    def get_config(self):
        return {
            "price_per_hour": self.price_per_hour,
            "log_dir": self.log_dir,
            "verbose": self.verbose,
            "batch_size": self.batch_size,
            "flops_per_example": self.flops_per_example,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _read_step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _forward_flops(self):
        if self.flops_per_example is not None:
            return self.flops_per_example
        try:
            total, _, _ = count_flops(self.model)
        except ValueError as error:
            warnings.warn(
                f"CostCallback cannot count FLOPs, so train_flops is not logged: "
                f"{error} Pass flops_per_example=keras_cost.cost.model_cost("
                "model, input_shape=...).flops to CostCallback instead.",
                stacklevel=2,
            )
            return None
        return total

    def on_train_begin(self, logs=None):
        if self.batch_size is None:
            warnings.warn(
                "CostCallback does not log examples_per_second or train_flops "
                "because Keras does not tell callbacks the batch size. Pass "
                "batch_size=<the batch size given to fit>. Received: batch_size=None",
                stacklevel=2,
            )
            self._run_flops_per_example = None
        else:
            self._run_flops_per_example = self._forward_flops()
        self._train_begin_time = time.perf_counter()
        self._train_begin_step = self._read_step()
        self._train_seconds = 0.0
        self._examples = 0
        self._epochs = []
        self._summary = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_begin_time = time.perf_counter()
        self._epoch_begin_step = self._read_step()
        self._last_batch_time = self._epoch_begin_time

    def on_train_batch_end(self, batch, logs=None):
        self._last_batch_time = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        steps = self._read_step() - self._epoch_begin_step
        train_seconds = self._last_batch_time - self._epoch_begin_time
        self._train_seconds += train_seconds
        values = {
            "step_seconds": train_seconds / steps if steps else 0.0,
            "wall_seconds": time.perf_counter() - self._train_begin_time,
        }
        if self.batch_size is not None:
            # NOTE: the last batch of an epoch counts as a full batch, so
            # examples are over-counted when the data size is not a multiple
            # of the batch size.
            examples = steps * self.batch_size
            self._examples += examples
            values["examples_per_second"] = examples / train_seconds if train_seconds else 0.0
            if self._run_flops_per_example is not None:
                values["train_flops"] = float(
                    TRAIN_FLOPS_PER_FORWARD_FLOP * self._run_flops_per_example * self._examples
                )
        if self.price_per_hour is not None:
            values["cost"] = self.price_per_hour * values["wall_seconds"] / 3600.0

        if logs is not None:
            logs.update(values)
        self._epochs.append({"epoch": int(epoch), **values})

    def on_train_end(self, logs=None):
        self._summary = self._build_summary()
        if self.verbose:
            print(self._format_summary())
        if self.log_dir is not None:
            os.makedirs(self.log_dir, exist_ok=True)
            with open(os.path.join(self.log_dir, SUMMARY_FILE_NAME), "w") as file:
                json.dump(self._summary, file, indent=2)

    def _build_summary(self):
        wall_seconds = time.perf_counter() - self._train_begin_time
        steps = self._read_step() - self._train_begin_step
        examples = self._examples if self.batch_size is not None else None
        train_flops = None
        if examples is not None and self._run_flops_per_example is not None:
            train_flops = float(TRAIN_FLOPS_PER_FORWARD_FLOP * self._run_flops_per_example * examples)
        return {
            "epochs": len(self._epochs),
            "steps": steps,
            "examples": examples,
            "train_seconds": self._train_seconds,
            "wall_seconds": wall_seconds,
            "step_seconds": self._train_seconds / steps if steps else None,
            "examples_per_second": (
                examples / self._train_seconds if examples and self._train_seconds else None
            ),
            "flops_per_example": self._run_flops_per_example,
            "train_flops": train_flops,
            "price_per_hour": self.price_per_hour,
            "cost": (
                None if self.price_per_hour is None else self.price_per_hour * wall_seconds / 3600.0
            ),
            "per_epoch": list(self._epochs),
        }

    def _format_summary(self):
        summary = self._summary
        parts = [
            f"{summary['epochs']} epochs, {summary['steps']} steps",
            f"{summary['wall_seconds']:.2f} s wall",
        ]
        if summary["examples_per_second"] is not None:
            parts.append(f"{summary['examples_per_second']:,.0f} examples/s")
        if summary["train_flops"] is not None:
            parts.append(f"{summary['train_flops']:.3g} training FLOPs")
        if summary["cost"] is not None:
            parts.append(f"cost {summary['cost']:.6f}")
        return "CostCallback: " + ", ".join(parts)

    def summary(self):
        """Return the totals of the last `fit` call as a JSON-serializable dict.

        Returns:
            A dict with `epochs`, `steps`, `examples`, `train_seconds`,
            `wall_seconds`, `step_seconds`, `examples_per_second`,
            `flops_per_example`, `train_flops`, `price_per_hour`, `cost` and
            `per_epoch` (the values logged at each epoch). A value that was
            not measured is `None`.

        Raises:
            RuntimeError: If training has not ended yet.
        """
        if self._summary is None:
            raise RuntimeError(
                "CostCallback.summary() is available after model.fit ends. "
                "Call it after fit returns."
            )
        return self._summary
