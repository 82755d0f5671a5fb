"""Every gin registration of tf_codistill, in one place.

Importing this module is all a gin file needs (`gin_utils.parse` imports it,
and a gin file read by plain gin can start with
`import tf_codistill.configurables`). The names are the ones the shipped gin
files use:

    tf_codistill.train_lib.train_group               the root (see below)
    tf_codistill.models.mlp_classifier, ...          model builders
    tf_codistill.datasets.planted_input_fn, ...      input functions
    tf_codistill.datasets.debian_docs.split_files    the offline text corpus' splits
    tf_codistill.losses.KLDivergence, ...            distillation losses (psi)
    tf_codistill.schedules.LinearRamp, ...           distillation-weight schedules
    tf_codistill.peer_selection.RandomPeer, ...      peer-selection rules
    keras.optimizers.Adam, keras.losses..., ...      tf_keras classes

Two kinds of registration, on purpose:

* `gin.register` for everything a config names with `@name`: gin applies the
  bindings when it calls the object for a reference, and the library's own
  code and tests call the plain function or class, unaffected by whatever
  config is active. tf_keras classes are registered here under `keras.*`
  because gin's own TensorFlow registrations refer to `tf.keras`, which
  under TF >= 2.16 is Keras 3, a different library.
* `gin.configurable` in place for `datasets.text.TextCorpus`: the LM input
  function, `corpus_vocab_size` and `unigram_distribution` build the
  configured corpus by calling `TextCorpus()`, so that a config binds the
  corpus once and every use of it sees the same one.

The root, `train_lib.train_group`, is decorated where it is defined: the
binaries and users call `train_lib.train_group(...)` directly and expect the
config to apply, which gin does only for the decorated function itself.
Importing `train_lib` here registers it.
"""

from __future__ import annotations

import gin
import tf_keras as keras

from tf_codistill import label_smoothing
from tf_codistill import losses
from tf_codistill import optimization
from tf_codistill import peer_selection
from tf_codistill import schedules
from tf_codistill import train_lib
from tf_codistill.datasets import criteo as criteo_data
from tf_codistill.datasets import debian_docs
from tf_codistill.datasets import imagenet as imagenet_data
from tf_codistill.datasets import mnist1d as mnist1d_data
from tf_codistill.datasets import synthetic
from tf_codistill.datasets import teacher_student
from tf_codistill.datasets import text
from tf_codistill.models import conv_lm
from tf_codistill.models import criteo as criteo_model
from tf_codistill.models import lstm_lm
from tf_codistill.models import mlp
from tf_codistill.models import resnet

__all__ = ["ROOT", "KERAS", "REGISTERED"]

# The gin root: its bindings are `tf_codistill.train_lib.train_group.<parameter>`.
ROOT = train_lib.train_group

# tf_keras classes a config may name, by gin module.
KERAS = {
    "keras.optimizers": (
        keras.optimizers,
        ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adafactor", "Nadam", "Adamax", "Ftrl"],
    ),
    "keras.optimizers.schedules": (
        keras.optimizers.schedules,
        ["PiecewiseConstantDecay", "ExponentialDecay", "CosineDecay", "PolynomialDecay"],
    ),
    "keras.losses": (
        keras.losses,
        [
            "SparseCategoricalCrossentropy",
            "CategoricalCrossentropy",
            "BinaryCrossentropy",
            "MeanSquaredError",
        ],
    ),
    "keras.metrics": (
        keras.metrics,
        [
            "SparseCategoricalAccuracy",
            "SparseTopKCategoricalAccuracy",
            "SparseCategoricalCrossentropy",
            "BinaryAccuracy",
            "BinaryCrossentropy",
            "AUC",
            "Mean",
        ],
    ),
    "keras.initializers": (keras.initializers, ["GlorotUniform", "HeNormal", "RandomNormal"]),
}

# tf_codistill's configurables, by gin module (named by a config's `@references`).
REGISTERED = {
    "tf_codistill.models": [
        mlp.mlp_classifier,
        criteo_model.criteo_dnn,
        resnet.resnet50,
        resnet.small_resnet,
        lstm_lm.lstm_lm,
        lstm_lm.CarriedStateCallback,
        conv_lm.conv_lm,
    ],
    "tf_codistill.datasets": [
        synthetic.planted_input_fn,
        teacher_student.teacher_student_input_fn,
        mnist1d_data.mnist1d_input_fn,
        criteo_data.criteo_input_fn,
        imagenet_data.imagenet_input_fn,
    ],
    "tf_codistill.datasets.text": [
        text.lm_input_fn,
        text.corpus_vocab_size,
        text.unigram_distribution,
    ],
    "tf_codistill.datasets.debian_docs": [debian_docs.split_files],
    "tf_codistill.losses": [
        losses.SoftmaxCrossEntropy,
        losses.KLDivergence,
        losses.ReverseKL,
        losses.SigmoidCrossEntropy,
        losses.LogitMSE,
    ],
    "tf_codistill.schedules": [schedules.BurnIn, schedules.LinearRamp],
    "tf_codistill.peer_selection": [
        peer_selection.AllPeers,
        peer_selection.RandomPeer,
        peer_selection.RoundRobin,
    ],
    "tf_codistill.label_smoothing": [label_smoothing.LabelSmoothingCrossEntropy],
    "tf_codistill.optimization": [optimization.GoyalSchedule],
}

for _module, (_namespace, _names) in KERAS.items():
    for _name in _names:
        gin.register(getattr(_namespace, _name), module=_module)
for _module, _configurables in REGISTERED.items():
    for _configurable in _configurables:
        gin.register(_configurable, module=_module)
# In place: the library calls TextCorpus() for the configured corpus (see above).
gin.configurable(text.TextCorpus, module="tf_codistill.datasets.text")
