"""teachers: the pool of teacher slots the train step reads."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import errors
from tf_codistill import losses
from tf_codistill import teachers
from tf_codistill import testing


def _pool(slot_peers=(1, 2), buffers=1, max_staleness_steps=None):
    student = testing.mlp(seed=0)
    return student, teachers.TeacherPool(
        student,
        lambda: testing.mlp(seed=9),
        slot_peers=slot_peers,
        buffers=buffers,
        max_staleness_steps=max_staleness_steps,
    )


def test_slots_start_empty_and_frozen():
    student, pool = _pool(buffers=2)
    assert (pool.num_slots, pool.buffers) == (2, 2)
    assert list(pool.teacher_steps.numpy()) == [-1, -1]
    assert list(pool.teacher_peers.numpy()) == [1, 2]
    assert pool.trainable_weights == [] and all(not t.trainable for t in pool.teachers)
    # Two buffers of two slots, each a copy of the student's architecture.
    assert len(pool.non_trainable_weights) >= 4 * len(student.weights)


def test_switch_changes_what_the_step_reads_on_host_and_device():
    _, pool = _pool(buffers=2)
    pool.switch(1, buffer=1, step=40, peer=3)
    active, steps, peers = pool.holding()
    assert (list(active), list(steps), list(peers)) == ([0, 1], [-1, 40], [1, 3])
    assert list(pool.teacher_steps.numpy()) == [-1, 40]
    assert list(pool.teacher_peers.numpy()) == [1, 3]
    assert pool.teachers[1] is pool.buffer(1, 1)
    # A host copy is returned: changing it changes nothing.
    pool.holding()[1][0] = 99
    assert pool.holding()[1][0] == -1
    pool.switch(1, buffer=1, step=-1)  # Taken out of use; the peer stays.
    assert list(pool.holding(refresh=True)[2]) == [1, 3]


def test_peer_weights_leave_out_empty_and_stale_slots():
    _, pool = _pool(slot_peers=(1, 2, 3), max_staleness_steps=5)
    pool.switch(0, 0, 10)
    pool.switch(1, 0, 4)
    # Step 10: slot 0 (step 10) is 0 steps old, slot 1 (step 4) 6 > 5, slot 2 empty.
    assert list(pool.peer_weights(tf.constant(10, tf.int64)).numpy()) == [1.0, 0.0, 0.0]
    assert list(pool.staleness(tf.constant(10, tf.int64)).numpy())[:2] == [0.0, 6.0]


def test_targets_average_the_usable_teachers_only():
    _, pool = _pool()
    for k, seed in enumerate((3, 4)):
        pool.buffer(k, 0).set_weights(testing.mlp(seed=seed).get_weights())
        pool.switch(k, 0, 7)
    # Slot 1's teacher predicts NaN: it is left out of the average.
    pool.buffer(1, 0).set_weights([w * np.nan for w in pool.buffer(1, 0).get_weights()])
    x, _ = testing.toy_classification(4)
    y_pred = tf.zeros([4, 4])
    psi = losses.SoftmaxCrossEntropy()
    targets, agreement, usable = pool.targets(x, y_pred, tf.ones([2]), tf.constant(True), psi)
    assert list(usable.numpy()) == [1.0, 0.0]
    expected = psi.aggregate([pool.buffer(0, 0)(x)], tf.ones([1]))
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    assert agreement.shape == (4,)
    _, _, skipped = pool.targets(x, y_pred, tf.ones([2]), tf.constant(False), psi)
    assert list(skipped.numpy()) == [0.0, 0.0]


def test_only_graph_networks_are_cloned():
    # `_is_graph_network` is the tf_keras attribute clone_model checks; if it
    # disappeared, functional students would be taken for subclassed ones.
    assert teachers._is_graph_network(testing.mlp())
    subclassed = testing.SubclassedMLP()
    subclassed(np.zeros((1, 8), np.float32))
    assert not teachers._is_graph_network(subclassed)
    clone = teachers.resolve_builder(testing.mlp(seed=1), None)()
    assert isinstance(clone, keras.Model) and len(clone.weights) == 4
    with pytest.raises(errors.ConfigError, match="subclassed model, which cannot be cloned"):
        teachers.resolve_builder(subclassed, None)
    with pytest.raises(errors.ConfigTypeError, match="teacher_builder must be callable"):
        teachers.resolve_builder(subclassed, 3)


def test_unbuilt_teacher_is_built_like_the_student():
    student = testing.mlp()
    teacher = keras.Sequential([keras.layers.Dense(16), keras.layers.Dense(4)])
    teachers.build_like(teacher, student)
    assert [w.shape for w in teacher.weights] == [w.shape for w in student.weights]


def test_students_that_cannot_be_wrapped():
    with pytest.raises(errors.ConfigTypeError, match="student must be a tf_keras.Model"):
        teachers.check_student(object())
    with pytest.raises(errors.ConfigError, match="has no variables yet"):
        teachers.check_student(keras.Sequential([keras.layers.Dense(2)]))


def test_reset_states_reaches_stateful_teachers():
    from tf_codistill.models import lstm_lm

    def build():
        return lstm_lm.lstm_lm(
            11, embedding_dim=4, units=3, num_layers=1, carry_state=True, batch_size=2
        )

    student = build()
    pool = teachers.TeacherPool(student, build, slot_peers=(1,), buffers=2)
    assert pool.stateful
    tokens = np.ones((2, 3), np.int32)
    for k in (0, 1):
        pool.buffer(0, k)(tokens)
    layers = lstm_lm.carried_lstm_layers(pool)
    assert len(layers) == 2 and any(np.abs(s.numpy()).max() > 0 for s in layers[0].state_variables)
    pool.reset_states()
    assert all(np.abs(s.numpy()).max() == 0 for layer in layers for s in layer.state_variables)


def _carried_state(model) -> list:
    from tf_codistill.models import lstm_lm

    return [
        v.numpy() for layer in lstm_lm.carried_lstm_layers(model) for v in layer.state_variables
    ]


def test_a_switch_carries_a_stateful_teachers_state_over(tmp_path):
    # Background reloads write into the spare buffer and switch to it: the
    # newly active teacher must continue the streams from the state the
    # teacher in use had, not from its own state of one exchange earlier
    # (or zeros), which cost +0.08-0.1 nats on the first batch of each switch.
    from tf_codistill import exchange
    from tf_codistill.codistill_model import CodistillModel
    from tf_codistill.models import lstm_lm

    def build():
        return lstm_lm.lstm_lm(
            7, embedding_dim=4, units=5, num_layers=1, carry_state=True, batch_size=2
        )

    peer = build()
    publisher = exchange.Publisher(peer, exchange.group_dir(str(tmp_path), 1))
    publisher.publish(1)
    model = CodistillModel(
        build(),
        group_index=0,
        num_groups=2,
        exchange_dir=str(tmp_path),
        burn_in_steps=0,
        teacher_builder=build,
        background_reload=True,
    )
    model.compile(
        keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    tokens = np.random.default_rng(0).integers(1, 7, size=(2, 6))
    for step in (2, 3):
        # The teacher in use runs on 3 batches: its carried state moves on.
        model.fit(tokens, tokens, batch_size=2, epochs=3, verbose=0)
        old = model.teachers[0]
        state = _carried_state(old)
        assert all(np.abs(s).max() > 0 for s in state)
        peer.set_weights([w + 0.1 for w in peer.get_weights()])
        publisher.publish(step)
        assert model.reload_teachers()[0].status == "loaded"
        assert model.teachers[0] is not old  # The other buffer, now in use.
        for got, want in zip(_carried_state(model.teachers[0]), state, strict=True):
            np.testing.assert_array_equal(got, want)


def test_carried_state_of_a_stateful_keras_rnn():
    inputs = keras.Input(batch_shape=(2, 3, 4))
    outputs = keras.layers.LSTM(5, stateful=True)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(outputs))
    assert [tuple(v.shape) for v in teachers.carried_state(model)] == [(2, 5), (2, 5)]
    assert teachers.carried_state(testing.mlp()) == []
