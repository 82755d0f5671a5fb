"""Checkpoint exchange: the on-disk contract and every way a peer checkpoint can be bad."""

import glob
import os
import unittest.mock

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

import tf_codistill
from tf_codistill import exchange
from tf_codistill import exchange_client
from tf_codistill import testing
from tf_codistill.testing import drills


def _data_file(prefix):
    (path,) = glob.glob(prefix + ".data-*")
    return path


def _truncate(fraction):
    def corrupt(prefix):
        path = _data_file(prefix)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(int(size * fraction))

    return corrupt


def _grow(suffix, size):
    """Makes a checkpoint file sparse-huge (the reader must refuse it unread)."""

    def corrupt(prefix):
        with open(prefix + suffix, "r+b") as f:
            f.truncate(size)

    return corrupt


def _empty_index(prefix):
    open(prefix + ".index", "wb").close()


def _delete_data(prefix):
    os.remove(_data_file(prefix))


def _delete_all(prefix):
    for path in glob.glob(prefix + ".*"):
        os.remove(path)


def _write_state(content):
    def corrupt(prefix):
        with open(os.path.join(os.path.dirname(prefix), "checkpoint"), "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())

    return corrupt


def _republish(model_fn, step_in_file=None):
    """Overwrites ckpt-10 with another model's checkpoint (optionally another step)."""

    def corrupt(prefix):
        _delete_all(prefix)
        step = tf.Variable(10 if step_in_file is None else step_in_file, dtype=tf.int64)
        tf.train.Checkpoint(model=model_fn(), step=step).write(prefix)

    return corrupt


def _nan_model():
    model = testing.mlp(seed=4)
    weights = model.get_weights()
    weights[0][0, 0] = np.nan
    model.set_weights(weights)
    return model


def _extra_layer_model():
    inputs = keras.Input((8,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    h = keras.layers.Dense(4)(h)
    return keras.Model(inputs, keras.layers.Dense(4)(h))


def _float64_model():
    inputs = keras.Input((8,), dtype="float64")
    h = keras.layers.Dense(16, dtype="float64")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, dtype="float64")(h))


class PeerFailureTest(parameterized.TestCase, tf.test.TestCase):
    """Each bad checkpoint leaves the previous teacher intact and training running."""

    def setUp(self):
        super().setUp()
        self.dir = self.create_tempdir().full_path
        self.peer = testing.mlp(seed=1)
        self.publisher = exchange.Publisher(self.peer, exchange.group_dir(self.dir, 1))
        self.publisher.publish(5)
        self.model = tf_codistill.CodistillModel(
            testing.mlp(seed=0),
            group_index=0,
            num_groups=2,
            exchange_dir=self.dir,
            burn_in_steps=0,
        )
        self.model.compile(
            keras.optimizers.SGD(0.1),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        (outcome,) = self.model.reload_teachers()
        self.assertEqual((outcome.status, outcome.step), ("loaded", 5))
        self.good = [w.copy() for w in self.model.teachers[0].get_weights()]
        # The peer trains on and publishes step 10, which the test then breaks.
        self.peer.set_weights([w + 1.0 for w in self.peer.get_weights()])
        self.prefix = self.publisher.publish(10)

    def assert_teacher_kept(self, reason_pattern, read_again=None):
        """The bad checkpoint is refused and the teacher kept.

        Args:
          read_again: None for a fault in finding the checkpoint (the state
            file: looked at anew at every reload), False for bad content
            (refused for good at once), True for a failed read that may be
            transient (read again until MAX_READ_ATTEMPTS reads failed).
        """
        (outcome,) = self.model.reload_teachers()
        self.assertEqual(outcome.status, "failed", outcome)
        self.assertRegex(outcome.reason, reason_pattern)
        for good, now in zip(self.good, self.model.teachers[0].get_weights(), strict=True):
            self.assertAllEqual(good, now)
        self.assertEqual(list(self.model.teacher_steps), [5])
        self.assertEqual(self.model.reload_counts[1]["failed"], 1)
        if read_again is not None:
            reads = exchange_client.MAX_READ_ATTEMPTS if read_again else 1
            statuses = [self.model.reload_teachers()[0].status for _ in range(reads)]
            self.assertEqual(statuses, ["failed"] * (reads - 1) + ["left_out"])
            self.assertEqual(self.model.reload_counts[1]["failed"], reads)
        x, y = testing.toy_classification(32)
        history = self.model.fit(x, y, batch_size=16, verbose=0).history
        self.assertTrue(np.isfinite(history["loss"][0]))
        self.assertGreater(history["distill_loss"][0], 0.0)  # still distilling from step 5

    @parameterized.named_parameters(
        (
            "data_truncated_to_zero",
            _truncate(0.0),
            "ckpt-10 holds 0 bytes of data, less than",
            True,
        ),
        (
            "data_truncated_half",
            _truncate(0.5),
            r"ckpt-10 holds \d+ bytes of data, less than",
            True,
        ),
        ("data_truncated_99", _truncate(0.99), "cannot restore ckpt-10", True),
        ("data_bit_flip", drills.flip_data_byte, "cannot restore ckpt-10: DataLossError", True),
        ("index_zero_length", _empty_index, "cannot read the index of ckpt-10", True),
        ("index_without_data", _delete_data, "ckpt-10 has no data files", True),
        (
            "index_absurdly_large",
            _grow(".index", 80 << 20),
            r"ckpt-10.index is \d+ bytes, more "
            "than an index of this model can be",
            False,
        ),
        (
            "data_absurdly_large",
            _grow(".data-00000-of-00001", 80 << 20),
            r"bytes of data for a model of \d+; refused unread",
            False,
        ),
        ("deleted_by_cleanup", _delete_all, r"ckpt-10.index is missing"),
        (
            "state_file_garbage",
            _write_state(b"\x00\xff\xfe garbage"),
            "names no model_checkpoint_path",
        ),
        (
            "state_file_escapes",
            _write_state('model_checkpoint_path: "/etc/passwd"\n'),
            r"expected 'ckpt-<step>'",
        ),
        (
            "other_shapes",
            _republish(lambda: testing.mlp(hidden=(12,))),
            r"hidden_0/kernel has shape \[8, 12\], expected \[8, 16\]",
            False,
        ),
        ("extra_layer", _republish(_extra_layer_model), "is not in this model", False),
        (
            "other_dtype",
            _republish(_float64_model),
            "has dtype float64, expected float32",
            False,
        ),
        ("nan_weights", _republish(_nan_model), "holds NaN or Inf", False),
        (
            "step_disagrees_with_name",
            _republish(testing.mlp, step_in_file=9),
            "ckpt-10 holds step 9, not 10",
            False,
        ),
    )
    def test_bad_checkpoint(self, corrupt, reason_pattern, read_again=None):
        corrupt(self.prefix)
        self.assert_teacher_kept(reason_pattern, read_again)

    def test_transient_read_failure_is_retried(self):
        # The data file is away for one read (an I/O hiccup, a slow object
        # store): the next reload reads the same checkpoint and loads it.
        data = self.prefix + ".data-00000-of-00001"
        os.rename(data, data + ".away")
        (outcome,) = self.model.reload_teachers()
        self.assertEqual(outcome.status, "failed")
        self.assertRegex(outcome.reason, "read 1 of 3 failed; tried again")
        os.rename(data + ".away", data)
        (outcome,) = self.model.reload_teachers()
        self.assertEqual((outcome.status, outcome.step), ("loaded", 10))
        self.assertAllEqual(self.model.teachers[0].get_weights()[0], self.peer.get_weights()[0])

    def test_state_file_cannot_point_into_another_directory(self):
        # Only the base name counts: "../group_0/ckpt-3" means group_1/ckpt-3.
        own = exchange.Publisher(self.model.student, exchange.group_dir(self.dir, 0))
        own.publish(3)
        _write_state('model_checkpoint_path: "../group_0/ckpt-3"\n')(self.prefix)
        self.assert_teacher_kept(r"ckpt-3.index is missing")

    def test_checkpoint_deleted_between_find_and_read(self):
        (loader,) = self.model.exchange_client._loaders.values()  # pylint: disable=protected-access
        ref = loader.latest()
        self.assertEqual(ref.step, 10)
        _delete_all(self.prefix)
        with self.assertRaisesRegex(exchange.PeerCheckpointError, "cannot stat ckpt-10"):
            loader.stage(ref)
        for good, now in zip(self.good, self.model.teachers[0].get_weights(), strict=True):
            self.assertAllEqual(good, now)

    def test_good_checkpoint_after_failure_is_loaded(self):
        _truncate(0.5)(self.prefix)
        self.assertEqual(self.model.reload_teachers()[0].status, "failed")
        self.publisher.publish(15)
        (outcome,) = self.model.reload_teachers()
        self.assertEqual((outcome.status, outcome.step), ("loaded", 15))
        self.assertAllEqual(self.model.teachers[0].get_weights()[0], self.peer.get_weights()[0])


class NoPeerYetTest(tf.test.TestCase):
    def test_missing_directory_is_not_an_error(self):
        d = self.create_tempdir().full_path
        model = tf_codistill.CodistillModel(
            testing.mlp(), group_index=0, num_groups=2, exchange_dir=d
        )
        self.assertFalse(os.path.exists(os.path.join(d, "group_1")))
        (outcome,) = model.reload_teachers()
        self.assertEqual(outcome.status, "no_checkpoint")
        self.assertEqual(list(model.teacher_steps), [-1])


class PublisherTest(parameterized.TestCase, tf.test.TestCase):
    def test_on_disk_contract(self):
        d = self.create_tempdir().full_path
        student = testing.mlp(seed=2)
        publisher = exchange.Publisher(student, exchange.group_dir(d, 3), max_to_keep=2)
        for step in (1, 2, 2, 3):
            publisher.publish(step)
        group_dir = os.path.join(d, "group_3")
        # A repeated step is not saved twice; only the last two are kept.
        self.assertEqual(
            sorted(glob.glob(os.path.join(group_dir, "ckpt-*.index"))),
            [os.path.join(group_dir, f"ckpt-{s}.index") for s in (2, 3)],
        )
        # The documented way for anyone to read a group's model.
        fresh = testing.mlp(seed=9)
        tf.train.Checkpoint(model=fresh).restore(
            tf.train.latest_checkpoint(group_dir)
        ).expect_partial()
        for a, b in zip(fresh.get_weights(), student.get_weights(), strict=True):
            self.assertAllEqual(a, b)
        reader = tf.train.load_checkpoint(group_dir)
        self.assertEqual(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"), 3)
        # Every object a fresh Checkpoint(model, step) has is in the file.
        tf.train.Checkpoint(model=testing.mlp(seed=9), step=tf.Variable(0, dtype=tf.int64)).restore(
            tf.train.latest_checkpoint(group_dir)
        ).assert_existing_objects_matched()
        self.assertFalse([k for k in reader.get_variable_to_shape_map() if "optimizer" in k])

    def test_unwritable_exchange_dir_is_a_clear_error(self):
        blocker = os.path.join(self.create_tempdir().full_path, "not_a_dir")
        open(blocker, "w").close()
        model = tf_codistill.CodistillModel(
            testing.mlp(), group_index=0, num_groups=2, exchange_dir=blocker
        )
        model.compile("sgd", loss="mse")
        # The first write into the group's directory is its owner file
        # (ownership.py), before any checkpoint.
        with self.assertRaisesRegex(
            tf_codistill.ExchangeWriteError,
            "cannot write the owner file .*not_a_dir/group_0/owner.json: .*not a directory",
        ):
            model.publish()

    def test_restarted_publisher_never_rewrites_a_published_checkpoint(self):
        group_dir = exchange.group_dir(self.create_tempdir().full_path, 0)
        student = testing.mlp(seed=1)
        first = exchange.Publisher(student, group_dir)
        for step in (5, 10):
            first.publish(step)
        before = {
            p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns)
            for p in glob.glob(os.path.join(group_dir, "ckpt-*"))
        }
        # The group is killed and restarted from a backup at step 0: it trains
        # again (to other weights) through steps 5 and 10, then beyond.
        student.set_weights([w + 1.0 for w in student.get_weights()])
        second = exchange.Publisher(student, group_dir)
        self.assertTrue(second.is_published(10) and not second.is_published(15))
        for step in (5, 10):
            self.assertEqual(second.publish(step), os.path.join(group_dir, f"ckpt-{step}"))
        # Saving them again would rewrite their index in place, where a peer
        # reading the latest one could find it empty: they are left alone.
        after = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in before}
        self.assertEqual(after, before)
        self.assertEqual(exchange.latest_checkpoint(group_dir).step, 10)
        second.publish(15)
        self.assertEqual(exchange.latest_checkpoint(group_dir).step, 15)
        reader = tf.train.load_checkpoint(os.path.join(group_dir, "ckpt-15"))
        kernel = reader.get_tensor("model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")
        self.assertAllEqual(kernel, student.get_weights()[0])

    def test_cleanup_unlists_a_checkpoint_before_deleting_it(self):
        # A writer killed during its cleanup must not leave a state file that
        # lists a deleted checkpoint (TF's own cleanup deletes first).
        group_dir = exchange.group_dir(self.create_tempdir().full_path, 0)
        publisher = exchange.Publisher(testing.mlp(), group_dir, max_to_keep=2)
        removed = []
        real_remove = tf.io.gfile.remove

        def remove(path):
            listed = tf.train.get_checkpoint_state(group_dir).all_model_checkpoint_paths
            prefix = path.split(".index")[0].split(".data-")[0]
            self.assertNotIn(os.path.basename(prefix), [os.path.basename(p) for p in listed])
            removed.append(os.path.basename(path))
            real_remove(path)

        with unittest.mock.patch.object(tf.io.gfile, "remove", remove):
            for step in (1, 2, 3, 4):
                publisher.publish(step)
        self.assertCountEqual(
            removed,
            [f"ckpt-{s}{suffix}" for s in (1, 2) for suffix in (".index", ".data-00000-of-00001")],
        )
        self.assertEqual(drills.check_published(group_dir, testing.mlp), [3, 4])

    def test_cleanup_never_deletes_files_a_forged_state_file_names(self):
        root = self.create_tempdir().full_path
        group_dir = exchange.group_dir(root, 0)
        exchange.Publisher(testing.mlp(), group_dir, max_to_keep=1).publish(1)
        victim = os.path.join(root, "precious")
        for suffix in (".index", ".data-00000-of-00001"):
            with open(victim + suffix, "w") as f:
                f.write("not yours")
        # Listed as the oldest checkpoint: the next save's cleanup would take it.
        with open(os.path.join(group_dir, "checkpoint"), "w") as f:
            f.write(
                'model_checkpoint_path: "ckpt-1"\n'
                f'all_model_checkpoint_paths: "{victim}"\n'
                'all_model_checkpoint_paths: "ckpt-1"\n'
                "all_model_checkpoint_timestamps: 1.0\n"
                "all_model_checkpoint_timestamps: 2.0\n"
                "last_preserved_timestamp: 0.5\n"
            )
        with self.assertLogs(level="WARNING") as logs:
            publisher = exchange.Publisher(testing.mlp(), group_dir, max_to_keep=1)
        self.assertIn("not a checkpoint of this directory", "\n".join(logs.output))
        for step in (2, 3):
            publisher.publish(step)
        self.assertTrue(os.path.exists(victim + ".index"))
        self.assertTrue(os.path.exists(victim + ".data-00000-of-00001"))
        self.assertEqual(exchange.latest_checkpoint(group_dir).step, 3)
        self.assertFalse(os.path.exists(os.path.join(group_dir, "ckpt-2.index")))

    def test_one_state_file_write_per_publication_with_relative_names(self):
        # An object store without atomic renames (a later issue) needs each
        # publication to be one write of the state file.
        group_dir = exchange.group_dir(self.create_tempdir().full_path, 0)
        publisher = exchange.Publisher(testing.mlp(), group_dir, max_to_keep=2)
        state = os.path.join(group_dir, "checkpoint")
        renamed_onto_state = []
        real_rename = tf.io.gfile.rename

        def rename(source, destination, overwrite=False):
            if destination == state:
                renamed_onto_state.append(source)
            real_rename(source, destination, overwrite)

        with unittest.mock.patch.object(tf.io.gfile, "rename", rename):
            for step in (1, 2, 3, 3, 4):  # The repeated step writes nothing.
                publisher.publish(step)
        self.assertLen(renamed_onto_state, 4)
        self.assertEqual(glob.glob(state + ".tmp*"), [])
        with open(state) as f:
            text = f.read()
        # Relative names: readers that mount the exchange dir elsewhere find them.
        self.assertIn('model_checkpoint_path: "ckpt-4"', text)
        self.assertIn('all_model_checkpoint_paths: "ckpt-3"', text)
        self.assertNotIn(group_dir, text)
        self.assertEqual(
            tf.train.get_checkpoint_state(group_dir).all_model_checkpoint_paths,
            [os.path.join(group_dir, "ckpt-3"), os.path.join(group_dir, "ckpt-4")],
        )

    def test_takes_over_a_directory_written_by_checkpoint_manager(self):
        # A group restarted by this version in a directory an older one (which
        # published through tf.train.CheckpointManager) wrote.
        group_dir = exchange.group_dir(self.create_tempdir().full_path, 0)
        student = testing.mlp(seed=3)
        step = tf.Variable(0, dtype=tf.int64)
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=student, step=step), group_dir, None, "ckpt"
        )
        for s in (1, 2):
            step.assign(s)
            manager.save(checkpoint_number=s)
        publisher = exchange.Publisher(student, group_dir, max_to_keep=2)
        self.assertTrue(publisher.is_published(2))
        publisher.publish(3)
        self.assertEqual(drills.check_published(group_dir, testing.mlp), [2, 3])
        self.assertFalse(os.path.exists(os.path.join(group_dir, "ckpt-1.index")))

    @parameterized.parameters(
        (tf.errors.OutOfRangeError(None, None, "/x/ckpt-1.data; File too large"),),
        (tf.errors.ResourceExhaustedError(None, None, "/x/f; No space left on device"),),
        (OSError(28, "No space left on device"),),
    )
    def test_failed_writes_become_one_error_naming_the_directory(self, error):
        with self.assertRaises(exchange.ExchangeWriteError) as raised:
            with exchange.writing("the resume state", "/runs/r1/group_0/backup"):
                raise error
        message = str(raised.exception)
        self.assertStartsWith(
            message, "cannot write the resume state into /runs/r1/group_0/backup: "
        )
        self.assertIn("No space left" if "space" in str(error) else "File too large", message)
        self.assertIs(tf_codistill.ExchangeWriteError, exchange.ExchangeWriteError)

    def test_signature_lists_model_variables(self):
        signature = exchange.ModelSignature.of_model(testing.mlp())
        self.assertEqual(
            sorted(signature.expected),
            sorted(
                f"model/layer_with_weights-{i}/{n}/.ATTRIBUTES/VARIABLE_VALUE"
                for i in (0, 1)
                for n in ("kernel", "bias")
            ),
        )
        self.assertEqual(signature.num_bytes, 4 * (8 * 16 + 16 + 16 * 4 + 4))
        self.assertEqual(tf.io.gfile.glob("ram://tf_codistill_signature/*"), [])


if __name__ == "__main__":
    tf.test.main()
