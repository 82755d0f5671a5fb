"""The LSTM language model: sizes, carried state, resets, evaluation, codistillation."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill import codistill_model
from tf_codistill import exchange
from tf_codistill import testing
from tf_codistill.models import lstm_lm as lstm_lm_lib

VOCAB = 50
SMALL = dict(vocab_size=VOCAB, embedding_dim=8, units=16)


def tokens(batch, time, seed):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, time)).astype(np.int32)


def small(carry_state=False, batch_size=None, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return lstm_lm_lib.lstm_lm(
        **{**SMALL, **kwargs}, carry_state=carry_state, batch_size=batch_size
    )


def states(model):
    return [
        v.numpy().copy()
        for layer in lstm_lm_lib.carried_lstm_layers(model)
        for v in layer.state_variables
    ]


class TestSizes:
    def test_paper_sizes_parameter_count(self):
        # Built, not trained. Vocabulary V = 24006, embeddings E = 256, U = 1024 units:
        #   embedding          V * E              = 24006 * 256          =  6,145,536
        #   LSTM 1             4U (E + U) + 4U    = 4096 * 1280 + 4096   =  5,246,976
        #   layer norm 1       2U                                        =      2,048
        #   LSTM 2             4U (U + U) + 4U    = 4096 * 2048 + 4096   =  8,392,704
        #   layer norm 2       2U                                        =      2,048
        #   softmax            U * V + V          = 1024 * 24006 + 24006 = 24,606,150
        #   total                                                        = 44,395,462
        model = lstm_lm_lib.lstm_lm(24006, carry_state=True, batch_size=128)
        assert model.count_params() == 44_395_462
        shapes = {w.name: tuple(w.shape) for w in model.weights}
        assert shapes["embedding/embeddings:0"] == (24006, 256)
        assert shapes["lstm_1/lstm/lstm_cell/recurrent_kernel:0"] == (1024, 4096)
        assert shapes["logits/kernel:0"] == (1024, 24006)
        # The carried state (2 layers x h, c of [128, 1024]) is not a weight.
        assert len(model.weights) == 13
        assert [
            tuple(v.shape) for v in lstm_lm_lib.carried_lstm_layers(model)[1].state_variables
        ] == [
            (128, 1024),
            (128, 1024),
        ]

    def test_small_shapes_and_options(self):
        model = small()
        out = model(tokens(3, 7, 0))
        assert out.shape == (3, 7, VOCAB) and out.dtype == tf.float32
        # 50*8 + (64*(8+16) + 64) + 32 + (64*32 + 64) + 32 + (16*50 + 50) = 5,162.
        assert model.count_params() == 400 + 1600 + 32 + 2112 + 32 + 850
        bare = small(layer_norm=False, num_layers=1)
        assert bare.count_params() == 400 + 1600 + 850
        assert not lstm_lm_lib.carried_lstm_layers(model)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(vocab_size=0), "vocab_size must be a positive integer"),
            (dict(vocab_size=10, units=2.5), "units must be a positive integer"),
            (dict(vocab_size=10, carry_state=True), "carry_state=True needs batch_size"),
            (dict(vocab_size=10, dropout=1.0), "dropout must be in"),
        ],
    )
    def test_bad_arguments(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            lstm_lm_lib.lstm_lm(**kwargs)


class TestCarriedState:
    def test_state_is_carried_exactly(self):
        # Batch 2 after batch 1 equals the second half of one long sequence.
        carried, plain = small(carry_state=True, batch_size=3), small()
        plain.set_weights(carried.get_weights())
        a, c = tokens(3, 5, 1), tokens(3, 4, 2)
        out_a, out_c = carried(a), carried(c)
        whole = plain(np.concatenate([a, c], axis=1))
        np.testing.assert_allclose(out_a, whole[:, :5], atol=1e-5)
        np.testing.assert_allclose(out_c, whole[:, 5:], atol=1e-5)
        # ... so batch 2's outputs depend on batch 1: another batch 1 changes them.
        carried.reset_states()
        carried(tokens(3, 5, 3))
        assert np.abs(carried(c) - out_c).max() > 1e-3

    def test_reset_states_really_resets(self):
        carried, plain = small(carry_state=True, batch_size=3), small()
        plain.set_weights(carried.get_weights())
        c = tokens(3, 4, 2)
        carried(tokens(3, 5, 1))
        assert all(np.abs(s).max() > 0 for s in states(carried))
        carried.reset_states()  # keras.Model.reset_states reaches every CarriedLSTM.
        assert all(np.abs(s).max() == 0 for s in states(carried))
        np.testing.assert_allclose(carried(c), plain(c), atol=1e-6)

    def test_without_carry_batches_are_independent(self):
        model = small()
        c = tokens(3, 4, 2)
        first = model(c)
        model(tokens(3, 5, 1))
        np.testing.assert_array_equal(model(c), first)

    def test_batch_size_mismatch_is_named(self):
        model = small(carry_state=True, batch_size=3)
        with pytest.raises(ValueError, match="carries the state of 3 streams per replica"):
            model(tokens(2, 4, 0))

    def test_checkpoints_hold_weights_only(self, tmp_path):
        # A carried-state model's checkpoint restores into a model of another
        # batch size, with or without carried state (e.g. for evaluation).
        carried = small(carry_state=True, batch_size=3, seed=1)
        carried(tokens(3, 4, 0))
        path = tf.train.Checkpoint(model=carried).write(str(tmp_path / "ckpt"))
        for other in (small(seed=2), small(carry_state=True, batch_size=5, seed=2)):
            tf.train.Checkpoint(model=other).read(path).assert_existing_objects_matched()
            for w0, w1 in zip(carried.get_weights(), other.get_weights(), strict=True):
                np.testing.assert_array_equal(w0, w1)
        # 13 weights and nothing shaped like the [3, 16] state.
        stored = [(k, s) for k, s in tf.train.list_variables(path) if k.startswith("model/")]
        assert len(stored) == 13 and all(s != [3, 16] for _, s in stored)

    def test_clone_model_gets_its_own_state(self):
        model = small(carry_state=True, batch_size=3)
        model(tokens(3, 5, 1))  # Leaves state behind in the original.
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        assert len(lstm_lm_lib.carried_lstm_layers(clone)) == 2
        assert all(np.abs(s).max() == 0 for s in states(clone))
        x = tokens(3, 4, 0)
        from_zero = clone(x)
        assert np.abs(from_zero - model(x)).max() > 1e-3
        model.reset_states()
        np.testing.assert_allclose(from_zero, model(x), atol=1e-6)

    def test_each_replica_carries_its_own_rows(self):
        # Two replicas on two virtual CPUs, 2 streams each: replica r runs
        # rows [2r, 2r + 2) of a 4-row batch and carries their state.
        # The process-wide one: a second strategy would reuse its collective keys.
        strategy = testing.mirrored_strategy()
        with strategy.scope():
            model = small(carry_state=True, batch_size=2)
        plain = small()
        plain.set_weights(model.get_weights())
        layer = lstm_lm_lib.carried_lstm_layers(model)[0]

        def local(values):
            return [t.numpy() for t in strategy.experimental_local_results(values)]

        @tf.function
        def step(x):
            def fn():
                r = tf.distribute.get_replica_context().replica_id_in_sync_group
                return model(tf.gather(x, tf.stack([2 * r, 2 * r + 1])))

            return strategy.run(fn)

        a, c = tokens(4, 3, 1), tokens(4, 3, 2)
        step(a)
        out_c = np.concatenate(local(step(c)))
        whole = plain(np.concatenate([a, c], axis=1))
        np.testing.assert_allclose(out_c, whole[:, 3:], atol=1e-5)
        h = local(layer.state_variables[0])
        assert np.abs(h[0] - h[1]).max() > 1e-4
        # Stash, reset and restore act on every replica's copy.
        for lay in lstm_lm_lib.carried_lstm_layers(model):
            lay.stash_states()
            lay.reset_states()
        assert all(np.abs(z).max() == 0 for z in local(layer.state_variables[0]))
        for lay in lstm_lm_lib.carried_lstm_layers(model):
            lay.restore_states()
        for before, after in zip(h, local(layer.state_variables[0]), strict=True):
            np.testing.assert_array_equal(before, after)


def lm_data(batch, steps, seed):
    x = tokens(batch, 4 * steps + 1, seed)
    inputs = np.stack(np.split(x[:, :-1], steps, axis=1))
    targets = np.stack(np.split(x[:, 1:], steps, axis=1))
    return tf.data.Dataset.from_tensor_slices((inputs, targets))


class TestCarriedStateCallback:
    def fit(self, validation, callbacks):
        # Learning rate 0: the weights never change, only the carried state.
        model = small(carry_state=True, batch_size=2)
        model.compile(
            keras.optimizers.SGD(0.0),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=True,  # Seconds faster than tracing the LSTM; same state logic.
        )
        model.fit(
            lm_data(2, 2, 1),
            epochs=2,
            steps_per_epoch=1,
            validation_data=lm_data(2, 1, 2) if validation else None,
            callbacks=callbacks,
            verbose=0,
        )
        return model

    def test_evaluation_leaves_the_training_state_alone(self):
        # Reference: 2 training steps, no evaluation.
        reference = states(self.fit(False, []))
        # An evaluation after step 1 (end of epoch 1) runs the model on other
        # streams; the callback puts the training state back afterwards.
        isolated = states(self.fit(True, [lstm_lm_lib.CarriedStateCallback()]))
        for r, s in zip(reference, isolated, strict=True):
            np.testing.assert_allclose(r, s, atol=1e-6)
        # Without the callback the evaluation corrupts it.
        corrupted = states(self.fit(True, []))
        assert max(np.abs(r - s).max() for r, s in zip(reference, corrupted, strict=True)) > 1e-3

    def test_evaluation_starts_from_zero_state(self):
        model = small(carry_state=True, batch_size=2)
        model.compile(
            keras.optimizers.SGD(0.0),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=True,  # Seconds faster than tracing the LSTM; same state logic.
        )
        val = lm_data(2, 2, 2)
        fresh = model.evaluate(val, verbose=0)
        model.predict(tokens(2, 4, 5), verbose=0)  # Leaves some state behind.
        callback = lstm_lm_lib.CarriedStateCallback()
        assert model.evaluate(val, verbose=0, callbacks=[callback]) == pytest.approx(fresh)
        assert model.evaluate(val, verbose=0) != pytest.approx(fresh)

    def test_reset_every_n_steps(self):
        callback = lstm_lm_lib.CarriedStateCallback(reset_every_n_steps=1)
        model = self.fit(False, [callback])
        assert callback.resets == 2  # After steps 1 and 2.
        assert all(np.abs(s).max() == 0 for s in states(model))
        with pytest.raises(ValueError, match="reset_every_n_steps"):
            lstm_lm_lib.CarriedStateCallback(reset_every_n_steps=0)


class TestCodistillation:
    def test_teachers_carry_their_own_state_and_masks_count(self, tmp_path):
        # A codistilling LM whose teacher is a peer's checkpoint: the distill
        # loss is finite, the teacher's state is carried too, and positions
        # with mask 0 do not count (their inputs can change without effect).
        def builder():
            return small(carry_state=True, batch_size=2)

        peer = small(carry_state=True, batch_size=2, seed=7)
        exchange.Publisher(peer, exchange.group_dir(str(tmp_path), 1)).publish(3)
        model = codistill_model.CodistillModel(
            builder(),
            group_index=0,
            num_groups=2,
            exchange_dir=str(tmp_path),
            teacher_builder=builder,
            burn_in_steps=0,
        )
        model.compile(
            keras.optimizers.SGD(0.0),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=True,  # Seconds faster than tracing the LSTM; same state logic.
        )
        assert model.reload_teachers()[0].status == "loaded"
        # Student 2 + teacher 2 + the spare teacher buffer 2 (background reloads).
        assert len(lstm_lm_lib.carried_lstm_layers(model)) == 6
        x, y = tokens(2, 6, 1), tokens(2, 6, 2)
        mask = np.ones([2, 6], np.float32)
        mask[:, 4:] = 0.0

        def distill_loss(x_, mask_):
            model.reset_states()
            return model.evaluate(x_, y, sample_weight=mask_, verbose=0, return_dict=True)[
                "distill_loss"
            ]

        base = distill_loss(x, mask)
        assert np.isfinite(base) and base > 0
        # The last input token only affects the last position (the LSTM is
        # causal), which the mask leaves out.
        changed = x.copy()
        changed[:, 5] = (changed[:, 5] + 1) % VOCAB
        assert distill_loss(changed, mask) == pytest.approx(base, rel=1e-6)
        assert distill_loss(changed, np.ones_like(mask)) != pytest.approx(
            distill_loss(x, np.ones_like(mask)), rel=1e-6
        )
        teacher_state = states(model.teachers[0])
        assert any(np.abs(s).max() > 0 for s in teacher_state)
