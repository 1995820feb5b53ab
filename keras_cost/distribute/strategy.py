"""A `MultiWorkerMirroredStrategy` that Keras 3 `Model.fit` can run under."""

import tensorflow as tf


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` that accepts Keras 3 reductions.

    A drop-in replacement for `tf.distribute.MultiWorkerMirroredStrategy`:
    the constructor, the cluster set-up from `TF_CONFIG` and the collectives
    are TensorFlow's. Only `reduce` differs: it also accepts the two kinds of
    value that Keras 3 `fit` and `evaluate` pass to it and that TensorFlow's
    multi-worker strategy rejects. With the stock strategy, `model.fit` on
    two workers raises "Attempt to convert a value (PerReplica ...)" before
    the first step.

    Usually built through
    `keras_cost.distribute.strategy_from_environment()`. As with the parent
    class, create it at the start of the program, before any other
    TensorFlow op runs, and build and compile the model in its `scope()`.

    Note: this is not a Keras object, so it is not registered for Keras
    serialization: a strategy is never stored in a `.keras` file.

    Example:

    >>> import tensorflow as tf
    >>> from keras_cost.distribute import MultiWorkerMirroredStrategy
    >>> issubclass(MultiWorkerMirroredStrategy,
    ...            tf.distribute.MultiWorkerMirroredStrategy)
    True
    """

    def reduce(self, reduce_op, value, axis=None):
        """Reduce `value` across replicas, one leaf of a nested value at a time.

        Args:
            reduce_op: `"SUM"`, `"MEAN"` or a `tf.distribute.ReduceOp`.
            value: a `tf.distribute.DistributedValues` or tensor, or a nested
                structure (tuple, list, dict) of them.
            axis: the axis to reduce within each replica's value as well, or
                `None` to reduce across replicas only. A 0-d leaf has no axis
                to reduce, so it is reduced across replicas only.

        Returns:
            A tensor, or the same nested structure of tensors.
        """
        # WORKAROUND for Keras 3 `fit`/`evaluate` under multi-worker training,
        # checked with Keras 3.15.1 and TensorFlow 2.21 (other versions not
        # checked). Keras calls `reduce` in two ways that the stock
        # multi-worker strategy rejects, although `MirroredStrategy` accepts
        # both:
        # 1. `_maybe_symbolic_build` in keras/src/backend/tensorflow/trainer.py
        #    reduces the whole first batch, an `(x, y)` tuple, eagerly.
        #    `MirroredStrategy` maps over nested values, but the collective
        #    strategy converts the tuple to one tensor and fails.
        # 2. `reduce_per_replica` in the same file reduces the per-replica
        #    scalar metric results with `axis=0`, which does not exist on a
        #    0-d tensor.
        # The test `test_stock_strategy_fit_fails` fails once Keras stops
        # needing this, and then this method can be deleted.
        parent_reduce = super().reduce

        def reduce_leaf(leaf):
            leaf_axis = axis
            if leaf_axis is not None:
                local_value = self.experimental_local_results(leaf)[0]
                if local_value.shape.rank == 0:
                    leaf_axis = None
            return parent_reduce(reduce_op, leaf, axis=leaf_axis)

        return tf.nest.map_structure(reduce_leaf, value)
