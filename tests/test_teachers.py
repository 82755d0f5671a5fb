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
