"""The train step is XLA-clean, and the exchange keeps to step boundaries
when several steps run per execution (what TPUs need; checked on one CPU)."""

import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

import tf_codistill
from tf_codistill import exchange
from tf_codistill import testing


def _train(exchange_dir, steps, **compile_kwargs):
    model = tf_codistill.CodistillModel(
        testing.mlp(seed=0),
        group_index=0,
        num_groups=2,
        exchange_dir=exchange_dir,
        burn_in_steps=2,
        exchange_every_n_steps=4,
    )
    model.compile(
        keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **compile_kwargs,
    )
    x, y = testing.toy_classification(16 * steps)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16, drop_remainder=True)
    history = model.fit(dataset, epochs=1, verbose=0).history
    return model, history


def _published_steps(exchange_dir):
    directory = os.path.join(exchange_dir, "group_0")
    return sorted(
        int(f[len("ckpt-") : -len(".index")]) for f in os.listdir(directory) if f.endswith(".index")
    )


class XlaTest(tf.test.TestCase):
    def test_jit_compiled_step_matches_the_plain_one(self):
        results = {}
        for jit in (False, True):
            d = self.create_tempdir().full_path
            exchange.Publisher(testing.mlp(seed=1), exchange.group_dir(d, 1)).publish(0)
            model, history = _train(d, steps=6, jit_compile=jit)
            self.assertEqual(model._jit_compile, jit)  # pylint: disable=protected-access
            results[jit] = (model.student.get_weights(), history)
        for a, b in zip(results[False][0], results[True][0], strict=True):
            self.assertAllClose(a, b, rtol=1e-4, atol=1e-5)
        self.assertAllClose(
            results[False][1]["distill_loss"], results[True][1]["distill_loss"], rtol=1e-4
        )
        self.assertGreater(results[True][1]["distill_loss"][0], 0.0)

    def test_jit_compiled_step_is_not_retraced_by_reloads(self):
        d = self.create_tempdir().full_path
        peer = testing.mlp(seed=1)
        publisher = exchange.Publisher(peer, exchange.group_dir(d, 1))
        publisher.publish(0)
        model, _ = _train(d, steps=4, jit_compile=True)
        traces = model.train_function.experimental_get_tracing_count()
        for step in (10, 20):
            peer.set_weights([w * 0.5 for w in peer.get_weights()])
            publisher.publish(step)
            self.assertEqual(model.reload_teachers()[0].status, "loaded")
            x, y = testing.toy_classification(32)
            model.fit(x, y, batch_size=16, verbose=0)
        self.assertEqual(model.train_function.experimental_get_tracing_count(), traces)


class StepsPerExecutionTest(tf.test.TestCase):
    def test_exchange_at_the_first_boundary_after_each_multiple(self):
        d = self.create_tempdir().full_path
        exchange.Publisher(testing.mlp(seed=1), exchange.group_dir(d, 1)).publish(0)
        model, _ = _train(d, steps=12, steps_per_execution=3)
        # Executions end after steps 3, 6, 9, 12; multiples of 4 are crossed
        # in (3, 6], (6, 9] and (9, 12]; the final publish is step 12 again.
        self.assertEqual(_published_steps(d), [6, 9, 12])
        self.assertEqual(int(model.optimizer.iterations.numpy()), 12)

    def test_steps_per_execution_with_xla(self):
        d = self.create_tempdir().full_path
        exchange.Publisher(testing.mlp(seed=1), exchange.group_dir(d, 1)).publish(0)
        model, history = _train(d, steps=8, steps_per_execution=4, jit_compile=True)
        self.assertEqual(_published_steps(d), [4, 8])
        self.assertTrue(np.isfinite(history["loss"][0]))
        self.assertGreater(history["distill_loss"][0], 0.0)


if __name__ == "__main__":
    tf.test.main()
