"""datasets.teacher_student: fresh, indexed, disjoint streams and exact evaluation targets."""

import numpy as np
import pytest
import tensorflow as tf

from tf_codistill.datasets import sharding
from tf_codistill.datasets import teacher_student


def batches(context, count, **kwargs):
    dataset = teacher_student.teacher_student_input_fn(context, **kwargs)
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def test_training_batches_are_fresh_and_labels_one_hot():
    context = sharding.DataContext(training=True, batch_size=64)
    (x0, y0), (x1, y1) = batches(context, 2)
    assert x0.shape == (64, 32) and y0.shape == (64, 10)
    np.testing.assert_array_equal(y0.sum(axis=1), np.ones(64))
    assert not np.allclose(x0, x1)  # a new batch every step


def test_groups_read_disjoint_streams_or_the_same_one():
    def first(group, mode):
        context = sharding.DataContext(
            training=True, batch_size=8, group_index=group, num_groups=2, mode=mode
        )
        return batches(context, 1)[0][0]

    assert not np.allclose(first(0, "disjoint"), first(1, "disjoint"))
    np.testing.assert_array_equal(first(0, "same"), first(1, "same"))


def test_a_restarted_group_resumes_at_the_batch_it_stopped_at():
    context = sharding.DataContext(training=True, batch_size=8, replicas_per_pipeline=2)
    full = batches(context, 6)
    resumed = batches(sharding.DataContext(**{**vars(context), "initial_step": 2}), 2)
    # Two steps of two replicas consumed four batches.
    np.testing.assert_array_equal(resumed[0][0], full[4][0])
    np.testing.assert_array_equal(resumed[1][0], full[5][0])


def test_workers_of_a_group_split_its_stream():
    def worker(index):
        context = sharding.DataContext(
            training=True, batch_size=8, worker_index=index, num_workers=2
        )
        return batches(context, 2)

    whole = batches(sharding.DataContext(training=True, batch_size=8), 4)
    np.testing.assert_array_equal(worker(0)[0][0], whole[0][0])
    np.testing.assert_array_equal(worker(1)[0][0], whole[1][0])
    np.testing.assert_array_equal(worker(0)[1][0], whole[2][0])


def test_labels_are_sampled_from_the_oracle():
    oracle = teacher_student.Oracle()
    x, logits, labels = oracle.batch(oracle.stream_key(0, 0), 0, 20000)
    probs = tf.nn.softmax(logits).numpy()
    # The mean predicted probability of each class matches its frequency.
    frequency = np.bincount(labels.numpy(), minlength=10) / 20000
    np.testing.assert_allclose(frequency, probs.mean(axis=0), atol=0.01)


def test_evaluation_targets_are_the_oracle_probabilities_and_splits_differ():
    context = sharding.DataContext(training=False, batch_size=100)
    dataset = teacher_student.teacher_student_input_fn(context, num_eval_examples=300)
    x, p = next(iter(dataset))
    np.testing.assert_allclose(p.numpy().sum(axis=1), np.ones(100), rtol=1e-5)
    oracle = teacher_student.Oracle()
    np.testing.assert_allclose(p.numpy(), tf.nn.softmax(oracle.logits(x)).numpy(), rtol=1e-5)
    test = teacher_student.teacher_student_input_fn(
        context, num_eval_examples=300, eval_split="test"
    )
    assert not np.allclose(next(iter(test))[0].numpy(), x.numpy())
    assert sum(1 for _ in dataset) == 3


def test_bayes_loss_is_the_oracle_entropy_and_lower_with_sharper_labels():
    # The oracle's expected cross-entropy against its own probabilities is
    # their entropy: below ln(10) = 2.303, and lower for sharper labels.
    soft = teacher_student.bayes_loss(teacher_student.Oracle(sharpness=1.0))
    sharp = teacher_student.bayes_loss(teacher_student.Oracle(sharpness=6.0))
    assert 0 < sharp < soft < np.log(10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=1), "num_classes must be >= 2"),
        (dict(sharpness=0.0), "sharpness must be > 0"),
        (dict(depth=0), "hidden and depth must be integers >= 1"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        teacher_student.Oracle(**kwargs)


def test_unknown_eval_split():
    with pytest.raises(ValueError, match="eval_split must be one of"):
        teacher_student.teacher_student_input_fn(
            sharding.DataContext(training=False), eval_split="train"
        )
