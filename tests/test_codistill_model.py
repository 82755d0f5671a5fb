"""CodistillModel: the train step, teachers, metrics and arguments."""

import math
import os

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

import tf_codistill
from tf_codistill import errors
from tf_codistill import exchange
from tf_codistill import losses
from tf_codistill import schedules
from tf_codistill import testing

SCCE = keras.losses.SparseCategoricalCrossentropy


def publish_peer(model, exchange_dir, group, step):
    """Publishes `model` as group `group`'s checkpoint at `step`, as a peer would."""
    return exchange.Publisher(model, exchange.group_dir(exchange_dir, group)).publish(step)


def make_codistill(exchange_dir, group=0, num_groups=2, seed=0, **kwargs):
    return testing.codistill_model(
        exchange_dir, group, num_groups, seed, metrics=["accuracy"], **kwargs
    )


def manual_step(student, teacher, x, y, weight, lr, distill_loss=None):
    """One SGD step of task + weight * psi computed directly, for comparison."""
    distill_loss = distill_loss or losses.SoftmaxCrossEntropy()
    with tf.GradientTape() as tape:
        logits = student(x, training=True)
        task = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        )
        psi = tf.reduce_mean(distill_loss([teacher(x, training=False)], logits))
        total = task + weight * psi
    grads = tape.gradient(total, student.trainable_variables)
    new_weights = [
        v.numpy() - lr * g.numpy() for v, g in zip(student.trainable_variables, grads, strict=True)
    ]
    teacher_top1 = tf.argmax(teacher(x), axis=-1)
    agreement = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), teacher_top1), tf.float32))
    return dict(
        task=float(task),
        psi=float(psi),
        total=float(total),
        agreement=float(agreement),
        weights=new_weights,
    )


class TrainStepTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.x, self.y = testing.toy_classification(64)

    def test_one_step_matches_hand_computation(self):
        peer = testing.mlp(seed=1)
        publish_peer(peer, self.dir, group=1, step=100)
        model = make_codistill(self.dir, distill_weight=0.5)
        model.reload_teachers()
        x, y = self.x[:16], self.y[:16]
        expected = manual_step(model.student, peer, x, y, weight=0.5, lr=0.1)
        history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
        for got, want in zip(model.student.trainable_variables, expected["weights"], strict=True):
            self.assertAllClose(got, want, atol=1e-6)
        self.assertAllClose(history["total_loss"], [expected["total"]], atol=1e-5)
        self.assertAllClose(history["loss"], [expected["task"]], atol=1e-5)
        self.assertAllClose(history["task_loss"], [expected["task"]], atol=1e-5)
        self.assertAllClose(history["distill_loss"], [expected["psi"]], atol=1e-5)
        self.assertAllClose(history["distill_weight"], [0.5])
        self.assertAllClose(history["agreement"], [expected["agreement"]])
        # Own step 0 when the step ran, teacher from step 100.
        self.assertAllClose(history["teacher_staleness"], [-100.0])

    def test_only_student_variables_change(self):
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=5)
        model = make_codistill(self.dir)
        model.reload_teachers()
        teacher = model.teachers[0]
        self.assertEqual(teacher.trainable_weights, [])
        self.assertEqual(
            {v.ref() for v in model.trainable_variables},
            {v.ref() for v in model.student.trainable_variables},
        )
        teacher_before = [w.copy() for w in teacher.get_weights()]
        student_before = [w.copy() for w in model.student.get_weights()]
        history = model.fit(self.x, self.y, batch_size=16, epochs=1, verbose=0).history
        self.assertGreater(history["distill_loss"][0], 0.0)
        for before, after in zip(teacher_before, teacher.get_weights(), strict=True):
            self.assertAllEqual(before, after)
        changed = [
            not np.array_equal(b, a)
            for b, a in zip(student_before, model.student.get_weights(), strict=True)
        ]
        self.assertTrue(all(changed))

    def test_reload_is_bit_exact_and_never_retraces(self):
        peer = testing.mlp(seed=1)
        model = make_codistill(self.dir, exchange_every_n_steps=2)
        publish_peer(peer, self.dir, group=1, step=10)
        model.fit(self.x, self.y, batch_size=16, epochs=1, verbose=0)
        traces = model.train_function.experimental_get_tracing_count()
        for step in (20, 30, 40):
            peer.set_weights([w + 0.5 for w in peer.get_weights()])
            path = publish_peer(peer, self.dir, group=1, step=step)
            # Reloads happen inside fit (every 2 steps) and by hand.
            model.fit(self.x, self.y, batch_size=16, epochs=1, verbose=0)
            self.assertEqual(model.train_function.experimental_get_tracing_count(), traces)
            self.assertEqual(list(model.teacher_steps), [step])
            reader = tf.train.load_checkpoint(path)
            for variable, key in zip(
                model.teachers[0].weights, _weight_keys(peer, path), strict=True
            ):
                self.assertAllEqual(variable.numpy(), reader.get_tensor(key))

    def test_burn_in_switches_distillation_on(self):
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=0)
        model = make_codistill(self.dir, burn_in_steps=4, distill_weight=2.0)
        ds = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(16).repeat()
        history = model.fit(ds, steps_per_epoch=4, epochs=2, verbose=0).history
        # Epoch 1 = steps 0..3 (burn-in), epoch 2 = steps 4..7.
        self.assertAllClose(history["distill_weight"], [0.0, 2.0])
        self.assertEqual(history["distill_loss"][0], 0.0)
        self.assertGreater(history["distill_loss"][1], 0.0)
        self.assertAllClose(
            history["total_loss"][1],
            history["task_loss"][1] + 2.0 * history["distill_loss"][1],
            rtol=1e-5,
        )
        self.assertAllClose(history["total_loss"][0], history["task_loss"][0])
        self.assertAllClose(history["loss"], history["task_loss"])

    def test_no_peer_checkpoint_means_no_distillation(self):
        model = make_codistill(self.dir)
        history = model.fit(self.x, self.y, batch_size=16, epochs=1, verbose=0).history
        self.assertEqual(history["distill_weight"], [0.0])
        self.assertEqual(history["distill_loss"], [0.0])
        self.assertAllClose(history["total_loss"], history["task_loss"])
        self.assertEqual(list(model.teacher_steps), [-1])
        # The group still published its own checkpoint at the end of training.
        self.assertIsNotNone(tf.train.latest_checkpoint(os.path.join(self.dir, "group_0")))

    def test_max_staleness_leaves_old_teachers_out(self):
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=0)
        model = make_codistill(self.dir, max_staleness_steps=3)
        ds = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(16).repeat()
        history = model.fit(ds, steps_per_epoch=4, epochs=2, verbose=0).history
        # Steps 0..3 are within 3 steps of the teacher (step 0); 4..7 are not.
        self.assertAllClose(history["distill_weight"], [1.0, 0.0])

    def test_several_peers_average(self):
        peers = {g: testing.mlp(seed=g) for g in (1, 2)}
        for g, peer in peers.items():
            publish_peer(peer, self.dir, group=g, step=7)
        model = make_codistill(self.dir, num_groups=3)
        outcomes = model.reload_teachers()
        self.assertEqual(
            [(o.peer, o.status, o.step) for o in outcomes],
            [(1, "loaded", 7), (2, "loaded", 7)],
        )
        x = self.x[:8]
        got = model.evaluate(x, self.y[:8], batch_size=8, verbose=0, return_dict=True)

        # By hand, in numpy, from the peers' own models (not the teachers):
        # the paper's psi is the cross-entropy to the peers' *averaged
        # distribution*, -sum_c mean_j(p_j,c) * log_softmax(student)_c,
        # averaged over the batch.
        def softmax(z):
            e = np.exp(z - z.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        averaged = np.mean([softmax(peers[g](x).numpy().astype(np.float64)) for g in (1, 2)], 0)
        logits = model.student(x).numpy().astype(np.float64)
        log_q = logits - logits.max(-1, keepdims=True)
        log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
        want = float(np.mean(-(averaged * log_q).sum(-1)))
        self.assertAllClose(got["distill_loss"], want, rtol=1e-5)
        # Not the distribution of the peers' averaged logits (the other
        # averaging tf_codistill offers), which gives another number here.
        mean_logits = np.mean([peers[g](x).numpy().astype(np.float64) for g in (1, 2)], 0)
        in_logit_space = float(np.mean(-(softmax(mean_logits) * log_q).sum(-1)))
        self.assertNotAllClose(in_logit_space, want, rtol=1e-3)

    def test_evaluate_reports_student_metrics_and_agreement(self):
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=0)
        model = make_codistill(self.dir, burn_in_steps=1000)
        model.reload_teachers()
        result = model.evaluate(self.x, self.y, batch_size=32, verbose=0, return_dict=True)
        self.assertEqual(
            set(result),
            {
                "loss",
                "total_loss",
                "task_loss",
                "distill_loss",
                "distill_weight",
                "teacher_staleness",
                "agreement",
                "accuracy",
                "nonfinite_teacher_batches",
            },
        )
        # During burn-in the total is the task loss, but agreement is reported.
        self.assertAllClose(result["total_loss"], result["task_loss"])
        self.assertEqual(result["distill_weight"], 0.0)
        self.assertGreater(result["agreement"], 0.0)

    def test_metrics_names_label_evaluate_values(self):
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=0)
        model = make_codistill(self.dir)
        model.fit(self.x, self.y, batch_size=16, epochs=1, verbose=0)
        values = model.evaluate(self.x, self.y, batch_size=32, verbose=0)
        as_dict = model.evaluate(self.x, self.y, batch_size=32, verbose=0, return_dict=True)
        self.assertLen(values, len(model.metrics_names))
        self.assertEqual(dict(zip(model.metrics_names, values, strict=True)), as_dict)

    def test_val_loss_is_the_task_loss_of_a_plain_model(self):
        # Burn-in ends after epoch 1: val_loss must not jump with the switch
        # (EarlyStopping, ReduceLROnPlateau and ModelCheckpoint read it), and
        # must be what the student alone, compiled as a plain model, reports.
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=0)
        model = make_codistill(self.dir, burn_in_steps=4, distill_weight=2.0)
        ds = tf.data.Dataset.from_tensor_slices((self.x, self.y)).batch(16).repeat()
        val = (self.x[:32], self.y[:32])
        history = model.fit(ds, steps_per_epoch=4, epochs=2, validation_data=val, verbose=0).history
        self.assertAllClose(history["val_loss"], history["val_task_loss"])
        self.assertAllClose(history["val_distill_weight"], [2.0, 2.0])  # At steps 4 and 8.
        self.assertAllClose(
            history["val_total_loss"],
            np.add(history["val_task_loss"], 2.0 * np.asarray(history["val_distill_loss"])),
            rtol=1e-5,
        )
        plain = testing.mlp()
        plain.compile(loss=SCCE(from_logits=True), metrics=["accuracy"])
        plain.set_weights(model.student.get_weights())
        want = plain.evaluate(*val, verbose=0, return_dict=True)
        got = model.evaluate(*val, verbose=0, return_dict=True)
        self.assertAllClose(got["loss"], want["loss"], rtol=1e-6)
        self.assertAllClose(got["accuracy"], want["accuracy"])
        self.assertAllClose(history["val_loss"][-1], want["loss"], rtol=1e-6)

    def test_sequence_outputs_with_masks(self):
        # Hand-worked: the student's logits are all 0 (a zero Dense), so its
        # distribution is uniform over V = 4 classes and, at every position,
        # both the task loss and psi = CE(q, uniform) = -sum_c q_c ln(1/4)
        # equal ln 4 = 1.386294, whatever the label or the teacher's q. The
        # reduction alone decides the values. Batch 2 x time 4.
        ln4 = math.log(4.0)
        tokens = np.array([[5, 0, 0, 0], [3, 0, 0, 0]])  # 0 = padding: 2 of 8 valid (25%).
        labels = np.array([[1, 2, 3, 0], [2, 1, 0, 3]])
        weights = np.array([[2.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32)
        both = np.array([[2.0, 1.0, 1.0, 1.0], [0.5, 1.0, 1.0, 1.0]], np.float32)
        cases = [
            # Keras mask (Embedding(mask_zero=True)) alone: tf_keras divides by
            # the valid tokens: 2 * ln 4 / 2 = ln 4.
            ("mask", True, None, ln4),
            # [batch, time] sample weights alone: divided by all 8 positions:
            # (2 + 1 + 1) * ln 4 / 8 = 0.5 ln 4.
            ("weights", False, weights, 0.5 * ln4),
            # Both: weighted sum over valid tokens / valid tokens:
            # (2 + 0.5) * ln 4 / 2 = 1.25 ln 4.
            ("both", True, both, 1.25 * ln4),
        ]
        for name, mask_zero, sample_weight, expected in cases:
            with self.subTest(name):
                d = self.create_tempdir().full_path
                publish_peer(_token_model(mask_zero, seed=1), d, group=1, step=3)
                model = tf_codistill.CodistillModel(
                    _token_model(mask_zero),
                    group_index=0,
                    num_groups=2,
                    exchange_dir=d,
                    burn_in_steps=0,
                )
                model.compile(keras.optimizers.SGD(0.0), loss=SCCE(from_logits=True))
                model.reload_teachers()
                got = model.evaluate(
                    tokens,
                    labels,
                    sample_weight=sample_weight,
                    batch_size=2,
                    verbose=0,
                    return_dict=True,
                )
                # The task loss is Keras' own reduction; psi must agree with it.
                self.assertAllClose(got["task_loss"], expected, atol=1e-6)
                self.assertAllClose(got["distill_loss"], expected, atol=1e-6)
                history = model.fit(
                    tokens, labels, sample_weight=sample_weight, batch_size=2, verbose=0
                ).history
                self.assertAllClose(history["distill_loss"], [expected], atol=1e-6)
                self.assertAllClose(history["task_loss"], [expected], atol=1e-6)

    def test_student_saves_without_teachers(self):
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=0)
        model = make_codistill(self.dir)
        model.fit(self.x, self.y, batch_size=16, epochs=1, verbose=0)
        path = os.path.join(self.create_tempdir().full_path, "served.keras")
        model.student.save(path)
        served = keras.models.load_model(path)
        self.assertLen(served.weights, len(model.student.weights))
        self.assertAllClose(served(self.x[:4]), model.student(self.x[:4]))
        self.assertAllClose(model.predict(self.x[:4], verbose=0), served(self.x[:4]))

    def test_model_checkpoint_with_defaults_saves_the_student(self):
        # What Keras users write: ModelCheckpoint calls model.save, which
        # saves the student alone, loadable by plain tf_keras.
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=0)
        model = make_codistill(self.dir)
        out = self.create_tempdir().full_path
        callbacks = [
            keras.callbacks.ModelCheckpoint(os.path.join(out, "epoch{epoch}.keras")),
            keras.callbacks.ModelCheckpoint(os.path.join(out, "savedmodel_{epoch}")),
            keras.callbacks.ModelCheckpoint(
                os.path.join(out, "best.keras"), monitor="val_loss", save_best_only=True
            ),
        ]
        model.fit(
            self.x,
            self.y,
            batch_size=16,
            epochs=2,
            validation_split=0.25,
            verbose=0,
            callbacks=callbacks,
        )
        for name in ("epoch2.keras", "savedmodel_2", "best.keras"):
            served = keras.models.load_model(os.path.join(out, name))
            self.assertLen(served.weights, len(model.student.weights))
            if name != "best.keras":
                self.assertAllClose(served(self.x[:4]), model.student(self.x[:4]), atol=1e-6)
        # And model.save itself, as Keras users call it.
        model.save(os.path.join(out, "direct.keras"))
        served = keras.models.load_model(os.path.join(out, "direct.keras"))
        self.assertAllClose(served(self.x[:4]), model.student(self.x[:4]), atol=1e-6)

    def test_weights_checkpoint_keeps_the_training_state(self):
        # save_weights-style checkpoints hold everything: student and teachers.
        publish_peer(testing.mlp(seed=1), self.dir, group=1, step=7)
        model = make_codistill(self.dir)
        out = self.create_tempdir().full_path
        for path in (os.path.join(out, "tf", "ckpt"), os.path.join(out, "all.weights.h5")):
            model.fit(
                self.x,
                self.y,
                batch_size=16,
                epochs=1,
                verbose=0,
                callbacks=[keras.callbacks.ModelCheckpoint(path, save_weights_only=True)],
            )
            other = make_codistill(self.create_tempdir().full_path, seed=5)
            other.load_weights(path)
            for a, b in zip(other.get_weights(), model.get_weights(), strict=True):
                self.assertAllClose(a, b)
            self.assertEqual(list(other.teacher_steps), [7])


class MixedPrecisionTest(parameterized.TestCase, tf.test.TestCase):
    """Both Keras mixed-precision policies train, with psi computed in float32."""

    def tearDown(self):
        keras.mixed_precision.set_global_policy("float32")
        super().tearDown()

    @parameterized.parameters("mixed_float16", "mixed_bfloat16")
    def test_policy_trains_with_float32_psi(self, policy):
        keras.mixed_precision.set_global_policy(policy)
        d = self.create_tempdir().full_path
        x, y = testing.toy_classification(64)
        # An ordinary head: the logits come out in the policy's compute dtype.
        peer = make_codistill(d, group=1, seed=1)
        peer.fit(x, y, batch_size=16, epochs=1, verbose=0)
        model = make_codistill(d)
        before = [w.copy() for w in model.student.get_weights()]
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
        compute_dtype = keras.mixed_precision.Policy(policy).compute_dtype
        self.assertEqual(model.student.compute_dtype, compute_dtype)
        self.assertEqual(model.teachers[0].compute_dtype, compute_dtype)
        self.assertEqual(model.teachers[0](x[:2]).dtype, compute_dtype)
        self.assertGreater(history["distill_loss"][0], 0.0)
        self.assertTrue(np.isfinite(history["loss"][0]))
        after = model.student.get_weights()
        self.assertFalse(any(np.array_equal(b, a) for b, a in zip(before, after, strict=True)))
        # psi from the low-precision logits (computed in a graph, as the step
        # does: eager bfloat16 kernels round differently), itself in float32:
        # a psi computed in the policy's dtype would be off by ~1e-3.
        result = model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
        student, teacher = model.student, model.teachers[0]
        student_logits, teacher_logits = tf.function(
            lambda x: (student(x, training=False), teacher(x, training=False))
        )(x)
        want = losses.SoftmaxCrossEntropy()([teacher_logits], student_logits)
        self.assertAllClose(result["distill_loss"], float(tf.reduce_mean(want)), rtol=1e-5)


class TeacherBuilderTest(tf.test.TestCase):
    def test_subclassed_student_needs_builder(self):
        student = testing.SubclassedMLP()
        student(np.zeros((1, 8), np.float32))
        d = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, "teacher_builder"):
            tf_codistill.CodistillModel(student, group_index=0, num_groups=2, exchange_dir=d)
        model = tf_codistill.CodistillModel(
            student,
            group_index=0,
            num_groups=2,
            exchange_dir=d,
            teacher_builder=lambda: testing.SubclassedMLP(seed=3),
            burn_in_steps=0,
        )
        self.assertFalse(model.teachers[0].trainable_weights)
        peer = testing.SubclassedMLP(seed=1)
        peer(np.zeros((1, 8), np.float32))
        publish_peer(peer, d, group=1, step=1)
        self.assertEqual(model.reload_teachers()[0].status, "loaded")
        self.assertAllClose(
            model.teachers[0](np.ones((2, 8), np.float32)),
            peer(np.ones((2, 8), np.float32)),
        )

    def test_builder_of_another_architecture_is_refused(self):
        d = self.create_tempdir().full_path
        with self.assertRaisesRegex(ValueError, "differ from the student"):
            tf_codistill.CodistillModel(
                testing.mlp(),
                group_index=0,
                num_groups=2,
                exchange_dir=d,
                teacher_builder=lambda: testing.mlp(hidden=(5,)),
            )


class ArgumentTest(parameterized.TestCase, tf.test.TestCase):
    @parameterized.named_parameters(
        (
            "group_out_of_range",
            dict(group_index=2, num_groups=2),
            "group_index must be < num_groups",
        ),
        ("negative_group", dict(group_index=-1), "group_index must be an integer >= 0"),
        ("zero_groups", dict(num_groups=0), "num_groups must be an integer >= 1"),
        ("self_peer", dict(peer_indices=[0]), "peer_indices must name other groups"),
        ("duplicate_peers", dict(num_groups=3, peer_indices=[1, 1]), "duplicates"),
        (
            "bad_interval",
            dict(exchange_every_n_steps=0),
            "exchange_every_n_steps must be",
        ),
        ("bad_loss", dict(distill_loss="kld"), "Unknown distillation loss 'kld'"),
        (
            "schedule_and_burn_in",
            dict(distill_weight=schedules.LinearRamp(), burn_in_steps=3),
            "burn_in_steps applies to a numeric distill_weight only",
        ),
        ("bad_staleness", dict(max_staleness_steps=-2), "max_staleness_steps must be"),
        (
            "bad_keep",
            dict(max_checkpoints_to_keep=0),
            "max_checkpoints_to_keep must be",
        ),
    )
    def test_bad_argument_is_named(self, overrides, message):
        kwargs = dict(group_index=0, num_groups=2, exchange_dir=self.create_tempdir().full_path)
        kwargs.update(overrides)
        with self.assertRaisesRegex(ValueError, message):
            tf_codistill.CodistillModel(testing.mlp(), **kwargs)

    def test_unbuilt_student(self):
        with self.assertRaisesRegex(ValueError, "has no variables yet"):
            tf_codistill.CodistillModel(
                keras.Sequential([keras.layers.Dense(2)]),
                group_index=0,
                num_groups=2,
                exchange_dir="/tmp/unused",
            )

    def test_keras3_model_is_refused(self):
        keras3_model = tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(2)])
        with self.assertRaisesRegex(TypeError, "tf_keras.Model"):
            tf_codistill.CodistillModel(keras3_model, group_index=0, num_groups=2, exchange_dir="x")

    def test_keras3_optimizer_loss_metric_and_callback_are_refused_naming_the_fix(self):
        # tf.keras is Keras 3 here; without the check these fail inside fit
        # ("Could not interpret optimizer identifier", "'EarlyStopping' object
        # has no attribute '_implements_train_batch_hooks'").
        model = tf_codistill.CodistillModel(
            testing.mlp(), group_index=0, num_groups=1, exchange_dir=self.create_tempdir().full_path
        )
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        fix = "import tf_keras as keras` and use keras.*, or set TF_USE_LEGACY_KERAS=1"
        for what, kwargs in [
            ("Adam", dict(optimizer=tf.keras.optimizers.Adam(), loss=loss)),
            ("MeanSquaredError", dict(optimizer="sgd", loss=tf.keras.losses.MeanSquaredError())),
            ("Accuracy", dict(optimizer="sgd", loss=loss, metrics=[tf.keras.metrics.Accuracy()])),
        ]:
            with self.assertRaisesRegex(TypeError, f"compile\\(\\) got {what} from Keras 3.*{fix}"):
                model.compile(**kwargs)
        model.compile(keras.optimizers.SGD(0.1), loss=loss)
        x, y = np.zeros((8, 8), np.float32), np.zeros((8,), np.int32)
        with self.assertRaisesRegex(
            TypeError, f"fit\\(callbacks=...\\) got EarlyStopping from Keras 3.*{fix}"
        ):
            model.fit(x, y, callbacks=[tf.keras.callbacks.EarlyStopping()], verbose=0)
        # tf_keras's own are accepted.
        model.fit(x, y, callbacks=[keras.callbacks.EarlyStopping()], verbose=0)

    def test_paper_defaults(self):
        model = tf_codistill.CodistillModel(
            testing.mlp(),
            group_index=0,
            num_groups=2,
            exchange_dir=self.create_tempdir().full_path,
        )
        self.assertEqual(model.distill_loss, losses.SoftmaxCrossEntropy(temperature=1.0))
        self.assertEqual(model.distill_weight_schedule, schedules.BurnIn(1.0, 3000))
        self.assertEqual(model.exchange_every_n_steps, 50)
        self.assertEqual(model.peer_indices, (1,))


class OutputTest(tf.test.TestCase):
    """What psi reads: logits, one output (named when there are several)."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.x, self.y = testing.toy_classification(32)

    def _wrap(self, student, **kwargs):
        return tf_codistill.CodistillModel(
            student, group_index=0, num_groups=2, exchange_dir=self.dir, burn_in_steps=0, **kwargs
        )

    def test_probability_outputs_are_refused_at_construction(self):
        inputs = keras.Input((8,))
        softmax_head = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(inputs))
        softmax_layer = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(4), keras.layers.Softmax()]
        )
        sigmoid_head = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(inputs))
        for student in (softmax_head, softmax_layer, sigmoid_head):
            with self.assertRaisesRegex(ValueError, "probabilities, but distillation needs logits"):
                self._wrap(student)

    def test_subclassed_probability_output_is_refused_at_construction(self):
        class Probabilities(keras.Model):
            def __init__(self):
                super().__init__()
                self.dense = keras.layers.Dense(4)

            def call(self, x, training=None):
                return keras.activations.softmax(self.dense(x))

        def build():
            model = Probabilities()
            model(np.zeros((1, 8), np.float32))
            return model

        # Its outputs are known from a trace, done at construction: one error
        # of ours, not one wrapped in Keras' train function.
        with self.assertRaisesRegex(
            errors.ConfigError, "outputs softmax probabilities, but distillation needs logits"
        ):
            self._wrap(build(), teacher_builder=build)

    def _two_heads(self, seed=0):
        inputs = keras.Input((8,), name="features")
        hidden = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
        init = keras.initializers.GlorotUniform(seed)
        logits = keras.layers.Dense(4, name="logits", kernel_initializer=init)(hidden)
        aux = keras.layers.Dense(1, activation="sigmoid", name="aux", kernel_initializer=init)(
            hidden
        )
        return keras.Model(inputs, [logits, aux])

    def test_several_outputs_need_a_choice_at_construction(self):
        with self.assertRaisesRegex(ValueError, r"has 2 outputs \['logits', 'aux'\]"):
            self._wrap(self._two_heads())
        with self.assertRaisesRegex(ValueError, "not an output of student"):
            self._wrap(self._two_heads(), distill_output="head")
        with self.assertRaisesRegex(ValueError, "'aux' is sigmoid probabilities"):
            self._wrap(self._two_heads(), distill_output="aux")

    def test_named_output_is_distilled_and_every_output_trained(self):
        publish_peer(self._two_heads(seed=1), self.dir, group=1, step=0)
        model = self._wrap(self._two_heads(), distill_output="logits")
        model.compile(
            keras.optimizers.SGD(0.1),
            loss=[SCCE(from_logits=True), keras.losses.BinaryCrossentropy()],
        )
        model.reload_teachers()
        aux_labels = (self.y > 1).astype("float32")[:, None]
        got = model.evaluate(
            self.x, [self.y, aux_labels], batch_size=32, verbose=0, return_dict=True
        )
        student_logits, _ = model.student(self.x)
        teacher_logits, _ = model.teachers[0](self.x)
        want = losses.SoftmaxCrossEntropy()([teacher_logits], student_logits)
        self.assertAllClose(got["distill_loss"], float(tf.reduce_mean(want)), rtol=1e-5)
        # The task loss is both heads' (what a plain model compiled so reports).
        plain = self._two_heads()
        plain.set_weights(model.student.get_weights())
        plain.compile(loss=[SCCE(from_logits=True), keras.losses.BinaryCrossentropy()])
        plain_loss = plain.evaluate(self.x, [self.y, aux_labels], batch_size=32, verbose=0)[0]
        self.assertAllClose(got["loss"], plain_loss, rtol=1e-6)
        before = model.student.get_layer("aux").get_weights()[0].copy()
        model.fit(self.x, [self.y, aux_labels], batch_size=16, verbose=0)
        self.assertFalse(np.array_equal(before, model.student.get_layer("aux").get_weights()[0]))


class MirroredMetricsTest(tf.test.TestCase):
    """Reported metrics are true values under MirroredStrategy, not replica sums."""

    def test_metrics_and_step_match_single_device(self):
        strategy = testing.mirrored_strategy()
        d = self.create_tempdir().full_path
        peer = testing.mlp(seed=1)
        publish_peer(peer, d, group=1, step=0)
        x, y = testing.toy_classification(32)
        reference = testing.mlp(seed=0)
        teacher = testing.mlp(seed=1)
        expected = manual_step(reference, teacher, x, y, weight=1.0, lr=0.1)
        with strategy.scope():
            model = make_codistill(d)
        history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
        self.assertAllClose(history["total_loss"], [expected["total"]], atol=1e-5)
        self.assertAllClose(history["loss"], [expected["task"]], atol=1e-5)
        self.assertAllClose(history["task_loss"], [expected["task"]], atol=1e-5)
        self.assertAllClose(history["distill_loss"], [expected["psi"]], atol=1e-5)
        self.assertAllClose(history["distill_weight"], [1.0])
        self.assertAllClose(history["agreement"], [expected["agreement"]])
        for got, want in zip(model.student.trainable_variables, expected["weights"], strict=True):
            self.assertAllClose(got, want, atol=1e-6)


def _token_model(mask_zero, seed=0, vocab=4, length=4):
    """[batch, length] ids -> [batch, length, vocab] logits; all 0 unless `seed` > 0."""
    inputs = keras.Input((length,), dtype="int32")
    h = keras.layers.Embedding(8, 3, mask_zero=mask_zero)(inputs)
    init = keras.initializers.GlorotUniform(seed) if seed else "zeros"
    return keras.Model(inputs, keras.layers.Dense(vocab, kernel_initializer=init)(h))


def _weight_keys(model, path):
    """Checkpoint keys of `model.weights`, in order, found by value in `path`."""
    reader = tf.train.load_checkpoint(path)
    keys = [k for k in reader.get_variable_to_shape_map() if k.startswith("model/")]
    found = []
    for w in model.weights:
        matches = [k for k in keys if np.array_equal(reader.get_tensor(k), w.numpy())]
        assert len(matches) == 1, (w.name, matches)
        found.append(matches[0])
    return found


if __name__ == "__main__":
    tf.test.main()
