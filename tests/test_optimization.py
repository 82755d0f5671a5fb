"""tf_codistill.optimization.GoyalSchedule against values computed by hand."""

import gin
import pytest
import tf_keras as keras

from tf_codistill import optimization


def lr(schedule, step):
    return float(schedule(step))


def test_paper_batch_in_epochs():
    # 16,384 per group: peak = 0.1 * 16384 / 256 = 6.4. An epoch is
    # 1,281,167 / 16,384 = 78.196... steps: warm-up ends at 5 epochs = 390.98
    # steps; decays at 30, 60, 80 epochs = 2345.9, 4691.8, 6255.7 steps.
    s = optimization.GoyalSchedule(16384, examples_per_epoch=1_281_167)
    assert s.peak_learning_rate == pytest.approx(6.4)
    assert s.warmup_steps == pytest.approx(5 * 1_281_167 / 16384)
    assert lr(s, 0) == pytest.approx(0.1)  # Warm-up starts at the small-batch rate.
    # Step 100: 0.1 + (6.4 - 0.1) * 100 / 390.98 = 1.71134.
    assert lr(s, 100) == pytest.approx(0.1 + 6.3 * 100 / 390.9811, rel=1e-5)
    assert lr(s, 390) == pytest.approx(0.1 + 6.3 * 390 / 390.9811, rel=1e-5)
    assert lr(s, 391) == pytest.approx(6.4)
    assert lr(s, 2345) == pytest.approx(6.4)
    assert lr(s, 2346) == pytest.approx(0.64)
    assert lr(s, 4691) == pytest.approx(0.64)
    assert lr(s, 4692) == pytest.approx(0.064)
    assert lr(s, 6255) == pytest.approx(0.064)
    assert lr(s, 6256) == pytest.approx(0.0064)
    assert lr(s, 20000) == pytest.approx(0.0064)


def test_steps_per_epoch_and_custom_values():
    # Batch 512, 10 steps per epoch: peak 0.2 * 512 / 128 = 0.8; warm-up of
    # 2 epochs = 20 steps from 0.2; decays x0.5 at epochs 3 and 5 = steps 30, 50.
    s = optimization.GoyalSchedule(
        512,
        base_learning_rate=0.2,
        base_batch_size=128,
        warmup_epochs=2,
        decay_epochs=(3, 5),
        decay_factor=0.5,
        steps_per_epoch=10,
    )
    assert [lr(s, t) for t in (0, 5, 10, 20, 29, 30, 49, 50)] == pytest.approx(
        [0.2, 0.35, 0.5, 0.8, 0.8, 0.4, 0.4, 0.2]
    )


def test_in_steps_without_epochs():
    # Peak 0.1 * 1024 / 256 = 0.4; warm-up of 4 steps from 0 to 0.4; decay at 6.
    s = optimization.GoyalSchedule(
        1024, warmup_steps=4, decay_steps=[6], warmup_start_learning_rate=0.0
    )
    assert [lr(s, t) for t in range(8)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.04, 0.04])


def test_no_warmup_and_small_batches():
    s = optimization.GoyalSchedule(64, warmup_epochs=0, decay_epochs=(), steps_per_epoch=1)
    assert lr(s, 0) == lr(s, 1000) == pytest.approx(0.025)  # 0.1 * 64 / 256.
    # Below 256 examples the warm-up starts at the (smaller) peak: flat.
    s = optimization.GoyalSchedule(64, steps_per_epoch=10)
    assert lr(s, 0) == lr(s, 49) == pytest.approx(0.025)
    assert lr(s, 300) == pytest.approx(0.0025)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(global_batch_size=256), "give steps_per_epoch or examples_per_epoch"),
        (
            dict(global_batch_size=256, steps_per_epoch=1, examples_per_epoch=256),
            "not both",
        ),
        (dict(global_batch_size=0, steps_per_epoch=1), "global_batch_size must be > 0"),
        (dict(global_batch_size=2.5, steps_per_epoch=1), "must be an integer"),
        (
            dict(global_batch_size=256, steps_per_epoch=1, decay_epochs=(60, 30)),
            "increasing",
        ),
        (dict(global_batch_size=256, steps_per_epoch=1, decay_factor=2), "decay_factor"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimization.GoyalSchedule(**kwargs)


def test_round_trips_through_config_and_drives_an_optimizer():
    s = optimization.GoyalSchedule(16384, examples_per_epoch=1_281_167)
    copy = optimization.GoyalSchedule(**s.get_config())
    for step in (0, 200, 391, 3000, 7000):
        assert lr(copy, step) == pytest.approx(lr(s, step))
    optimizer = keras.optimizers.SGD(learning_rate=s, momentum=0.9)
    assert optimizer._learning_rate is s


def test_configurable_from_gin():
    gin.clear_config()
    try:
        gin.parse_config(
            """
            import tf_codistill.configurables
            BATCH = 32768
            tf_codistill.optimization.GoyalSchedule.global_batch_size = %BATCH
            tf_codistill.optimization.GoyalSchedule.examples_per_epoch = 1281167
            """
        )
        s = gin.get_configurable("tf_codistill.optimization.GoyalSchedule")()
        assert s.peak_learning_rate == pytest.approx(12.8)  # Linear scaling at 2 x 16k.
    finally:
        gin.clear_config()
