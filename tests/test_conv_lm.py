"""The causal convolutional LM: shapes, causality, learning, codistillation."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import codistill_model
from tf_codistill import exchange
from tf_codistill import testing
from tf_codistill.datasets import sharding
from tf_codistill.datasets import text
from tf_codistill.models import conv_lm as conv_lm_lib

VOCAB = 40
SMALL = dict(vocab_size=VOCAB, embedding_dim=6, context=4, hidden_units=(16, 12))
FIXTURE = os.path.join(testing.repo_root(), "testdata", "text")


def small(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return conv_lm_lib.conv_lm(**{**SMALL, **kwargs})


def tokens(batch, time, seed):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, time)).astype(np.int32)


def test_shapes_and_layers():
    model = small()
    logits = model(tokens(3, 20, 0))
    assert logits.shape == (3, 20, VOCAB) and logits.dtype == tf.float32
    # Embedding 40x6; conv 4*6*16 + 16; dense 16*12 + 12; softmax 12*40 + 40.
    assert model.count_params() == 40 * 6 + (4 * 6 * 16 + 16) + (16 * 12 + 12) + (12 * 40 + 40)
    assert model.get_layer("context").kernel_size == (4,)
    assert model.get_layer("hidden_1").units == 12
    # One width: the convolution feeds the softmax directly.
    assert conv_lm_lib.conv_lm(VOCAB, 6, 4, (16,)).get_layer("logits").input_shape[-1] == 16


def test_each_position_sees_exactly_the_previous_context_tokens():
    # Position i depends on tokens i - k + 1 .. i (k = 4): changing token t
    # changes the logits at t .. t + 3 and nowhere else.
    model = small()
    x = tokens(2, 16, 1)
    base = model(x).numpy()
    for t in (0, 5, 13):
        changed = x.copy()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        moved = np.abs(model(changed).numpy() - base).max(axis=(0, 2))
        expected = [t <= i <= t + 3 for i in range(16)]
        np.testing.assert_array_equal(moved > 1e-6, expected, err_msg=f"token {t}")


def test_rows_and_batches_are_independent():
    # No state: a row's logits do not depend on the other rows or on earlier calls.
    model = small()
    x = tokens(4, 10, 2)
    together = model(x).numpy()
    model(tokens(4, 10, 3))
    np.testing.assert_allclose(model(x[2:3]).numpy()[0], together[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(context=True), "context must be a positive integer"),
        (dict(embedding_dim=2.0), "embedding_dim must be a positive integer"),
        (dict(hidden_units=()), "hidden_units needs at least one width"),
        (dict(hidden_units=(8, 0)), "hidden_units must be a positive integer, got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        conv_lm_lib.conv_lm(**{**SMALL, **kwargs})


def test_learns_the_bundled_text(tmp_path):
    # Bytes of testdata/text: the validation cross-entropy per byte falls well
    # below its start (ln 258 = 5.55 nats for uniform predictions).
    corpus = text.TextCorpus(
        train_files=os.path.join(FIXTURE, "train.txt"),
        eval_files=os.path.join(FIXTURE, "valid.txt"),
        tokenizer="bytes",
        vocab_dir=str(tmp_path),
    )
    train = text.lm_input_fn(sharding.DataContext(training=True, batch_size=8), corpus=corpus)
    valid = text.lm_input_fn(sharding.DataContext(training=False, batch_size=8), corpus=corpus)
    keras.utils.set_random_seed(0)
    model = conv_lm_lib.conv_lm(corpus.vocab_size, 16, 8, (64,))
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="ce")],
    )
    before = model.evaluate(valid, verbose=0, return_dict=True)["ce"]
    model.fit(train, steps_per_epoch=150, epochs=1, verbose=0)
    after = model.evaluate(valid, verbose=0, return_dict=True)["ce"]
    assert before == pytest.approx(np.log(258), abs=0.1)
    assert after < 3.3, (before, after)


def test_codistills_from_a_peer_with_a_cloned_teacher(tmp_path):
    # One step of codistillation: the teacher (a clone of the student, loaded
    # with the peer's checkpoint) gives a finite distillation loss; only the
    # student's variables change.
    peer = small(seed=7)
    exchange.Publisher(peer, exchange.group_dir(str(tmp_path), 1)).publish(3)
    model = codistill_model.CodistillModel(
        small(seed=0), group_index=0, num_groups=2, exchange_dir=str(tmp_path), burn_in_steps=0
    )
    model.compile(
        keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    assert model.reload_teachers()[0].status == "loaded"
    teacher = model.teachers[0]
    for got, want in zip(teacher.get_weights(), peer.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    student_before = [w.copy() for w in model.student.get_weights()]
    teacher_before = [w.copy() for w in teacher.get_weights()]
    x, y = tokens(4, 12, 1), tokens(4, 12, 2)
    logs = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(logs["distill_loss"][0]) and logs["distill_loss"][0] > 0
    assert all(
        not np.array_equal(a, b)
        for a, b in zip(model.student.get_weights(), student_before, strict=True)
    )
    for got, want in zip(teacher.get_weights(), teacher_before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not teacher.trainable_variables or not teacher.trainable
