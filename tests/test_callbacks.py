"""callbacks: the exchange interval and its interface to the model, logged values."""

import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import callbacks
from tf_codistill import errors
from tf_codistill import testing


def test_constant_rate_of_a_mirrored_optimizer():
    # Under MirroredStrategy the rate is a MirroredVariable, which NumPy
    # cannot convert in the strategy's scope, where Keras runs callbacks
    # (every --strategy=mirrored run failed at its first summary).
    # (No collective all-reduce: it could clash with another test's strategy.)
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        optimizer = keras.optimizers.Adagrad(learning_rate=0.001)
        optimizer.build([tf.Variable([1.0])])
        assert callbacks.current_learning_rate(optimizer) == pytest.approx(0.001)


def test_schedule_gives_the_rate_of_the_last_update():
    # tf_keras' `optimizer.learning_rate` is then the rate it last applied.
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [1], [1.0, 0.5]
    )  # 0.5 after step 1.
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    variable = tf.Variable([1.0])
    for _ in range(3):  # Updates at steps 0, 1, 2: the last one at rate 0.5.
        optimizer.apply_gradients([(tf.constant([1.0]), variable)])
    assert callbacks.current_learning_rate(optimizer) == 0.5


class RecordingClient:
    """Stands for a CodistillModel's exchange client; records the callback's calls."""

    def __init__(self, background):
        self.background = background
        self.calls = []

    def start(self, interval, wait_for_peers_s, poll_s):
        self.calls.append(("start", interval, wait_for_peers_s))

    def exchange(self, interval):
        self.calls.append(("exchange", interval))

    def poll(self):
        self.calls.append(("poll",))

    def check_publish(self):
        """Called after every step; records nothing (it would be every call)."""

    def logs(self, step):
        return {"teachers_in_use": 1.0}

    def finish(self):
        self.calls.append(("finish",))

    def note_distill_weight(self, weight):
        pass  # Told the epoch's mean weight; the calls recorded are the interval's.


def _fit(client, callback, steps, steps_per_execution=1):
    model = testing.mlp()
    model.exchange_client = client  # What ExchangeCallback talks to, and nothing else.
    model.compile("sgd", "mse", steps_per_execution=steps_per_execution)
    x, y = testing.toy_classification(steps * 4)
    history = model.fit(x, tf.one_hot(y, 4), batch_size=4, verbose=0, callbacks=[callback]).history
    return history


def test_exchange_callback_drives_the_client_at_interval_boundaries():
    client = RecordingClient(background=False)
    history = _fit(client, callbacks.ExchangeCallback(4, wait_for_peers_s=2.0), steps=10)
    assert client.calls == [
        ("start", 0, 2.0),
        ("exchange", 1),  # after step 4
        ("exchange", 2),  # after step 8
        ("finish",),
    ]
    assert history["teachers_in_use"] == [1.0]


def test_background_clients_are_polled_ten_times_per_interval():
    client = RecordingClient(background=True)
    _fit(client, callbacks.ExchangeCallback(20), steps=20)
    # A poll every 2 steps; at step 20 the exchange comes first, then the poll.
    assert client.calls == [
        ("start", 0, 0.0),
        *[("poll",)] * 9,
        ("exchange", 1),
        ("poll",),
        ("finish",),
    ]


def test_steps_per_execution_exchanges_at_the_first_boundary_after_a_multiple():
    client = RecordingClient(background=False)
    _fit(client, callbacks.ExchangeCallback(4), steps=12, steps_per_execution=3)
    # Executions end after steps 3, 6, 9, 12: multiples of 4 crossed in (3, 6], (6, 9], (9, 12].
    assert [c for c in client.calls if c[0] == "exchange"] == [
        ("exchange", 1),
        ("exchange", 2),
        ("exchange", 3),
    ]


def test_exchange_callback_needs_a_codistill_model():
    model = testing.mlp()
    with pytest.raises(errors.ConfigError, match="ExchangeCallback needs a tf_codistill"):
        callbacks.ExchangeCallback(4).set_model(model)
    with pytest.raises(errors.ConfigError, match="every_n_steps must be an integer >= 1"):
        callbacks.ExchangeCallback(0)


def test_with_exchange_adds_one_after_backup_and_restore():
    backup = keras.callbacks.BackupAndRestore("/tmp/unused")
    other = keras.callbacks.History()
    added = callbacks.with_exchange([other, backup], 7)
    assert added[:2] == [other, backup] and isinstance(added[2], callbacks.ExchangeCallback)
    assert added[2].every_n_steps == 7
    own = callbacks.ExchangeCallback(3)
    assert callbacks.with_exchange([own], 7) == [own]


def test_step_counting_asks_keras_for_unconverted_logs():
    # A private tf_keras switch (no public one): without it Keras converts the
    # logs to numpy after every step, a device read the callbacks do not need.
    assert hasattr(keras.callbacks.Callback(), "_supports_tf_logs")
    assert callbacks.StepCounting()._supports_tf_logs is True  # pylint: disable=protected-access
