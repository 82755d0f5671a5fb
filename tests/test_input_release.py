"""`InputReleasingModel`: `fit` and `evaluate` return before their input pipeline is freed."""

import threading
import time

import tensorflow as tf
import tf_keras as keras
from absl.testing import parameterized

import tf_codistill
from tf_codistill import input_release
from tf_codistill import testing


def test_codistill_model_is_one():
    assert issubclass(tf_codistill.CodistillModel, input_release.InputReleasingModel)


class InputTeardownTest(parameterized.TestCase, tf.test.TestCase):
    """`fit` and `evaluate` return without waiting for their input pipeline to be freed.

    Freeing a `tf.data` iterator can block (TensorFlow's autotuning thread
    sleeping out its period, up to a minute; see `tf_codistill.input_release`).
    Here the wait is made certain: the pipeline's prefetch thread is inside a
    slow call when the model stops reading, and freeing the iterator waits
    for that call to return.
    """

    STEPS = 3
    SLOW_S = 8.0

    def _slow_to_free(self, producing_slowly: threading.Event):
        """Batches whose producer takes SLOW_S for every element after the first STEPS."""
        x, y = testing.toy_classification(8)

        def batch(i):
            if i >= self.STEPS:
                producing_slowly.set()
                time.sleep(self.SLOW_S)
            return x, y

        def element(i):
            features, labels = tf.numpy_function(batch, [i], (tf.float32, tf.int64))
            return tf.ensure_shape(features, x.shape), tf.ensure_shape(labels, y.shape)

        return tf.data.Dataset.range(1_000_000).map(element).prefetch(1)

    @parameterized.parameters("fit", "evaluate")
    def test_returns_while_the_pipeline_is_freed_on_a_helper_thread(self, method):
        model = testing.codistill_model(self.create_tempdir().full_path, 0, 2, 0)
        producing_slowly = threading.Event()
        ended = []

        class AtTheEnd(keras.callbacks.Callback):
            def _end(self, logs=None):
                # The prefetch thread is now in its slow call.
                producing_slowly.wait(30)
                ended.append(time.monotonic())

            on_train_end = on_test_end = _end

        data = self._slow_to_free(producing_slowly)
        if method == "fit":
            model.fit(data, steps_per_epoch=self.STEPS, epochs=1, verbose=0, callbacks=[AtTheEnd()])
        else:
            model.evaluate(data, steps=self.STEPS, verbose=0, callbacks=[AtTheEnd()])
        returned = time.monotonic()
        self.assertTrue(producing_slowly.is_set())
        # Without the helper thread this is SLOW_S: the caller freed the iterator.
        self.assertLess(returned - ended[-1], self.SLOW_S / 2)
        # ... and the pipeline is still freed, on the helper thread, once its call returns.
        helpers = [
            t for t in threading.enumerate() if t.name.startswith(input_release.THREAD_PREFIX)
        ]
        self.assertNotEmpty(helpers)
        for helper in helpers:
            helper.join(self.SLOW_S + 30)
            self.assertFalse(helper.is_alive(), helper.name)
        function = model.train_function if method == "fit" else model.test_function
        self.assertIsNone(function.iterator)
