"""Distillation-weight schedules."""

import tensorflow as tf

from tf_codistill import schedules


class ScheduleTest(tf.test.TestCase):
    def test_burn_in_is_a_hard_switch(self):
        # burn_in_steps=3: steps 0, 1, 2 train on the task loss alone.
        s = schedules.BurnIn(weight=1.5, burn_in_steps=3)
        self.assertAllClose([float(s(i)) for i in range(5)], [0, 0, 0, 1.5, 1.5])
        self.assertEqual(s(tf.constant(10, tf.int64)).dtype, tf.float32)

    def test_linear_ramp(self):
        # weight 2, start 2, ramp 4: w = 2 * clip((step - 2 + 1) / 4, 0, 1).
        s = schedules.LinearRamp(weight=2.0, start_step=2, ramp_steps=4)
        self.assertAllClose([float(s(i)) for i in (0, 1, 2, 3, 5, 100)], [0, 0, 0.5, 1.0, 2.0, 2.0])

    def test_in_tf_function(self):
        s = schedules.BurnIn(1.0, 5)
        f = tf.function(lambda step: s(step))
        self.assertAllClose(f(tf.constant(4, tf.int64)), 0.0)
        self.assertAllClose(f(tf.constant(5, tf.int64)), 1.0)

    def test_get(self):
        self.assertEqual(schedules.get(0.5, 7), schedules.BurnIn(0.5, 7))
        ramp = schedules.LinearRamp()
        self.assertIs(schedules.get(ramp), ramp)
        self.assertEqual(schedules.BurnIn().burn_in_steps, schedules.PAPER_BURN_IN_STEPS)

    def test_bad_values_are_named(self):
        with self.assertRaisesRegex(ValueError, "burn_in_steps must be an integer >= 0"):
            schedules.BurnIn(1.0, -1)
        with self.assertRaisesRegex(ValueError, "ramp_steps must be an integer >= 1"):
            schedules.LinearRamp(ramp_steps=0)
        with self.assertRaisesRegex(ValueError, "distill_weight must be a finite number >= 0"):
            schedules.BurnIn(float("nan"))
        with self.assertRaisesRegex(TypeError, "distill_weight must be a number"):
            schedules.get("1.0")


if __name__ == "__main__":
    tf.test.main()
