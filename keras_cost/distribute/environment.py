"""Choose the distribution strategy and the worker's role from `TF_CONFIG`."""

import json
import os

import tensorflow as tf

from keras_cost.distribute.strategy import MultiWorkerMirroredStrategy

# Multi-worker mirrored training runs on these jobs. "ps" belongs to
# parameter-server training and "evaluator" to a side-car evaluation job,
# neither of which trains under this strategy.
TRAINING_JOBS = ("chief", "worker")


def strategy_from_environment(communication_options=None):
    """Create the strategy that the `TF_CONFIG` environment variable describes.

    With `TF_CONFIG` set, returns a
    `keras_cost.distribute.MultiWorkerMirroredStrategy`, which Keras 3
    `model.fit` can run under. Without it, returns TensorFlow's default
    strategy (one device, no distribution), so the same script runs on one
    machine and on a cluster.

    `TF_CONFIG` is JSON such as
    `{"cluster": {"worker": ["host0:port", "host1:port"]},
    "task": {"type": "worker", "index": 0}}`. It is checked here so that a
    mistake is reported before the workers wait for each other.

    Call it at the start of the program, before any other TensorFlow op
    runs, then build and compile the model in `strategy.scope()` and feed
    `fit` the global batch size. Every worker must see the same data order,
    so pass `shuffle=False` or seed the shuffling identically.

    Args:
        communication_options: a
            `tf.distribute.experimental.CommunicationOptions` for the
            collectives, or `None` for TensorFlow's defaults. Defaults to
            `None`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: if `TF_CONFIG` is not valid JSON, has no cluster, or its
            task is missing, of a job other than "chief" or "worker", or
            indexes past the end of its job's address list.
        TypeError: if `communication_options` is not a
            `tf.distribute.experimental.CommunicationOptions`.

    Example:

    >>> from keras_cost.distribute import strategy_from_environment
    >>> strategy = strategy_from_environment()  # no TF_CONFIG here
    >>> strategy.num_replicas_in_sync
    1
    """
    if communication_options is not None and not isinstance(
        communication_options, tf.distribute.experimental.CommunicationOptions
    ):
        raise TypeError(
            "`communication_options` must be a "
            "`tf.distribute.experimental.CommunicationOptions` or None. "
            f"Received: communication_options={communication_options!r}"
        )

    tf_config = read_tf_config()
    if tf_config is None:
        return tf.distribute.get_strategy()
    return MultiWorkerMirroredStrategy(
        communication_options=communication_options
    )


def read_tf_config():
    """Parse and check the `TF_CONFIG` environment variable.

    Returns:
        The parsed dict, or `None` when `TF_CONFIG` is unset or empty.

    Raises:
        ValueError: if `TF_CONFIG` is set but does not describe one task of a
            multi-worker training cluster.

    Example:

    >>> from keras_cost.distribute import read_tf_config
    >>> read_tf_config() is None  # no TF_CONFIG here
    True
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return None

    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"TF_CONFIG is not valid JSON ({error}). Set it to JSON such as "
            '{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
            '"task": {"type": "worker", "index": 0}}. '
            f"Received: TF_CONFIG={raw!r}"
        ) from None
    if not isinstance(tf_config, dict):
        raise ValueError(
            "TF_CONFIG must be a JSON object with the keys 'cluster' and "
            f"'task'. Received: TF_CONFIG={raw!r}"
        )

    _check_cluster(tf_config.get("cluster"), raw)
    _check_task(tf_config.get("task"), tf_config["cluster"], raw)
    return tf_config


def _check_cluster(cluster, raw):
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(
            "TF_CONFIG has no 'cluster': expected an object that maps each job "
            "to its list of 'host:port' addresses, such as "
            '{"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}. '
            f"Received: TF_CONFIG={raw!r}"
        )
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ValueError(
                f"TF_CONFIG cluster job {job!r} must list at least one "
                f"'host:port' address. Received: {job}={addresses!r}"
            )
        for address in addresses:
            if not isinstance(address, str) or ":" not in address:
                raise ValueError(
                    f"Every address of TF_CONFIG cluster job {job!r} must be "
                    f"a 'host:port' string. Received: {address!r}"
                )


def _check_task(task, cluster, raw):
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            "TF_CONFIG has no valid 'task': expected an object such as "
            '{"type": "worker", "index": 0} that names this process\'s job '
            f"and its position in that job's list. Received: TF_CONFIG={raw!r}"
        )

    job, index = task["type"], task["index"]
    if job not in TRAINING_JOBS:
        raise ValueError(
            f"TF_CONFIG task type must be one of {TRAINING_JOBS} for "
            "multi-worker mirrored training. Parameter-server and evaluator "
            f"jobs are not supported here. Received: type={job!r}"
        )
    if job not in cluster:
        raise ValueError(
            f"TF_CONFIG task type {job!r} has no address list in the cluster. "
            f"Add it to 'cluster' or fix the task type. Received: "
            f"cluster jobs={sorted(cluster)}"
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(
            f"TF_CONFIG task index must be an integer. Received: index={index!r}"
        )
    if not 0 <= index < len(cluster[job]):
        raise ValueError(
            f"TF_CONFIG task index must be between 0 and "
            f"{len(cluster[job]) - 1}, the positions in the {job!r} address "
            f"list. Received: index={index}"
        )


def is_chief(strategy=None):
    """Return whether this process is the chief of its training cluster.

    The chief is the task of the "chief" job or, when the cluster has none,
    worker 0. It is the one worker whose checkpoints and saved models are
    kept. Without a cluster (one process, any single-machine strategy),
    the process is the chief.

    Args:
        strategy: the `tf.distribute.Strategy` to ask, or `None` for the
            strategy of the current scope (the default strategy outside any
            scope). Pass `model.distribute_strategy` to ask about a model's
            strategy. Defaults to `None`.

    Returns:
        A Python bool.

    Example:

    >>> from keras_cost.distribute import is_chief
    >>> is_chief()  # one process, no cluster
    True
    """
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    # TensorFlow sets `should_checkpoint` only on the chief of a
    # multi-worker cluster, and on every single-process strategy.
    return bool(strategy.extended.should_checkpoint)
