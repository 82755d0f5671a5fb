"""Tiny models and data for tests: seconds on one CPU core."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras


def use_virtual_cpus(count: int = 2) -> bool:
    """Splits the CPU into `count` logical devices, for MirroredStrategy tests.

    Must run before TensorFlow initialises its devices (before the first op).

    Returns:
      True if the split is (now) in place, False if it was too late.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:  # Devices already initialised.
        pass
    return len(tf.config.list_logical_devices("CPU")) >= count


_MIRRORED = None


def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy over two logical CPUs, shared by the whole process.

    Two MirroredStrategy objects in one process hand out the same collective
    instance keys, and their all-reduces then abort with "Shape mismatch in
    the collective instance"; tests must share one.
    """
    global _MIRRORED
    if _MIRRORED is None:
        if not use_virtual_cpus(2):
            raise RuntimeError("two logical CPUs are needed; configure them before any TF op")
        _MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return _MIRRORED


def mlp(
    input_dim: int = 8,
    num_outputs: int = 4,
    hidden: Sequence[int] = (16,),
    seed: int = 0,
    name: str = "mlp",
) -> keras.Model:
    """A functional ReLU MLP returning logits, deterministic from `seed`."""
    initializer = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((input_dim,), name="features")
    h = inputs
    for i, units in enumerate(hidden):
        h = keras.layers.Dense(
            units, activation="relu", kernel_initializer=initializer, name=f"hidden_{i}"
        )(h)
    logits = keras.layers.Dense(num_outputs, kernel_initializer=initializer, name="logits")(h)
    return keras.Model(inputs, logits, name=name)


class SubclassedMLP(keras.Model):
    """A subclassed model (cannot be cloned; needs a teacher_builder)."""

    def __init__(self, num_outputs: int = 4, hidden: int = 16, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        initializer = keras.initializers.GlorotUniform(seed=seed)
        self.hidden = keras.layers.Dense(hidden, activation="relu", kernel_initializer=initializer)
        self.out = keras.layers.Dense(num_outputs, kernel_initializer=initializer)

    def call(self, inputs, training=None):
        return self.out(self.hidden(inputs))


def codistill_model(
    exchange_dir: str,
    group_index: int = 0,
    num_groups: int = 2,
    seed: int = 0,
    learning_rate: float = 0.1,
    metrics: Sequence[str] = (),
    **kwargs,
) -> keras.Model:
    """A compiled `CodistillModel` of `mlp(seed)` (SGD, cross-entropy), burn-in 0 by default.

    `kwargs` go to `CodistillModel` (`exchange_every_n_steps`, ...).
    """
    from tf_codistill import codistill_model as codistill_model_lib

    kwargs.setdefault("burn_in_steps", 0)
    model = codistill_model_lib.CodistillModel(
        mlp(seed=seed),
        group_index=group_index,
        num_groups=num_groups,
        exchange_dir=exchange_dir,
        **kwargs,
    )
    model.compile(
        keras.optimizers.SGD(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=list(metrics),
    )
    return model


def toy_classification(
    num_examples: int = 256,
    input_dim: int = 8,
    num_classes: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a fixed random linear map (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, input_dim)).astype(np.float32)
    w = np.random.default_rng(12345).normal(size=(input_dim, num_classes))
    y = np.argmax(x @ w, axis=1).astype(np.int64)
    return x, y


def load_binary(name: str):
    """The program `tf_codistill.programs.<name>`, imported (its absl flags get defined).

    Imported once per process, as any module: several test modules may use
    the same program, and defining its absl flags a second time would fail.
    """
    import importlib

    return importlib.import_module(f"tf_codistill.programs.{name}")


def repo_root() -> str:
    """The source checkout this package was imported from."""
    import os

    import tf_codistill

    return os.path.dirname(os.path.dirname(os.path.abspath(tf_codistill.__file__)))


def run_train_main(
    root_dir, gin_files, bindings=(), group_index=0, num_groups=2, allow_no_distillation=False
):
    """Runs `binaries/train.py`'s `main` in this process with these flags (default strategy)."""
    from absl import flags

    train = load_binary("train")
    flags_ = flags.FLAGS
    flags_.gin_file = list(gin_files)
    flags_.gin_bindings = list(bindings)
    flags_.root_dir = str(root_dir)
    flags_.group_index = group_index
    flags_.num_groups = num_groups
    flags_.strategy = "default"
    flags_.tpu = None
    flags_.cluster = None
    flags_.allow_no_distillation = allow_no_distillation
    train.main([])


# gin/demo/tiny.gin: an MLP 32-16-10 on 128 validation examples of the planted task.
DEMO_TINY = dict(input_dim=32, num_classes=10, hidden=(16,), num_eval=128, sharpness=4.0)


def demo_tiny_student() -> keras.Model:
    """A new student of gin/demo/tiny.gin's architecture (random weights)."""
    from tf_codistill.models import mlp

    return mlp.mlp_classifier(
        input_dim=DEMO_TINY["input_dim"],
        num_classes=DEMO_TINY["num_classes"],
        hidden_units=DEMO_TINY["hidden"],
    )


def demo_tiny_eval_data() -> tuple[np.ndarray, np.ndarray]:
    """gin/demo/tiny.gin's evaluation set (the planted task's validation split)."""
    from tf_codistill.datasets import synthetic

    return synthetic.planted_classification(
        "validation",
        DEMO_TINY["num_eval"],
        DEMO_TINY["input_dim"],
        DEMO_TINY["num_classes"],
        sharpness=DEMO_TINY["sharpness"],
    )


def restore_latest(model: keras.Model, group_dir: str) -> keras.Model:
    """`model` holding a group's latest published checkpoint, read the documented way.

    (`tf.train.Checkpoint(model=m).restore(tf.train.latest_checkpoint(d))`,
    exchange.py's docstring): what anyone outside tf_codistill would do.
    """
    prefix = tf.train.latest_checkpoint(group_dir)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    return model


def event_scalars(directory: str, tag: Optional[str] = None):
    """Scalars from the TensorBoard event files directly in `directory`.

    Returns:
      Sorted (step, value) pairs of `tag`; with no tag, {tag: those pairs}.
      A killed writer's last, truncated record is skipped.
    """
    import glob
    import os

    found: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(os.path.join(directory, "events.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                for v in event.summary.value:
                    value = (
                        float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                    )
                    found.setdefault(v.tag, []).append((event.step, value))
        except tf.errors.DataLossError:
            pass
    found = {k: sorted(v) for k, v in found.items()}
    return found if tag is None else found.get(tag, [])
