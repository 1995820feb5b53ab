"""`TF_CONFIG` checks, the default strategy and the chief role, in one process.

No test here creates a multi-worker strategy: that would configure the
collectives of the whole pytest process. Two-worker runs are in
`test_multi_worker.py`.
"""

import json

import pytest
import tensorflow as tf

from keras_cost.distribute import is_chief
from keras_cost.distribute import read_tf_config
from keras_cost.distribute import strategy_from_environment

TWO_WORKERS = {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}


def _set_tf_config(monkeypatch, value):
    if not isinstance(value, str):
        value = json.dumps(value)
    monkeypatch.setenv("TF_CONFIG", value)


def test_strategy_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = strategy_from_environment()
    assert strategy is tf.distribute.get_strategy()


def test_strategy_empty_tf_config(monkeypatch):
    _set_tf_config(monkeypatch, "  ")
    assert strategy_from_environment().num_replicas_in_sync == 1


def test_read_valid_tf_config(monkeypatch):
    config = {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 1}}
    _set_tf_config(monkeypatch, config)
    assert read_tf_config() == config


@pytest.mark.parametrize(
    "tf_config, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({"task": {"type": "worker", "index": 0}}, "has no 'cluster'"),
        ({"cluster": {"worker": []}, "task": {}}, "at least one"),
        ({"cluster": {"worker": ["localhost"]}, "task": {}}, "'host:port'"),
        ({"cluster": TWO_WORKERS}, "has no valid 'task'"),
        ({"cluster": TWO_WORKERS, "task": {"type": "worker"}}, "no valid 'task'"),
        (
            {"cluster": TWO_WORKERS, "task": {"type": "ps", "index": 0}},
            "Received: type='ps'",
        ),
        (
            {"cluster": TWO_WORKERS, "task": {"type": "chief", "index": 0}},
            "no address list",
        ),
        (
            {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": "0"}},
            "must be an integer",
        ),
        (
            {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}},
            "Received: index=2",
        ),
        (
            {"cluster": TWO_WORKERS, "task": {"type": "worker", "index": -1}},
            "between 0 and 1",
        ),
    ],
)
def test_strategy_bad_tf_config(monkeypatch, tf_config, message):
    _set_tf_config(monkeypatch, tf_config)
    with pytest.raises(ValueError, match=message):
        strategy_from_environment()


def test_strategy_bad_options(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TypeError, match="communication_options='ring'"):
        strategy_from_environment(communication_options="ring")


def test_chief_default_strategy():
    assert is_chief()


def test_chief_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert is_chief(strategy)
