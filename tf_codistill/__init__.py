"""tf_codistill: codistillation (Anil et al., 2018) for TensorFlow / tf_keras.

import tf_keras as keras
import tf_codistill

model = tf_codistill.CodistillModel(student, group_index=0, num_groups=2,
                                    exchange_dir="/shared/run1")
model.compile(optimizer=..., loss=..., metrics=[...])
model.fit(train_ds, validation_data=val_ds, epochs=3)
model.student.save("served.keras")

The names below are loaded on first use: `import tf_codistill.layout` (or
`errors`, `app`, `local_cluster`) does not load TensorFlow, which the local
launcher and the binaries' flag parsing do not need.
"""

import importlib

__version__ = "0.1.0"

# name -> module defining it.
_EXPORTS = {
    "CodistillModel": "tf_codistill.codistill_model",
    "ExchangeCallback": "tf_codistill.callbacks",
    "ExchangeWriteError": "tf_codistill.errors",
    "PeerMismatchError": "tf_codistill.errors",
    "ReloadOutcome": "tf_codistill.teachers",
}
_SUBMODULES = (
    "callbacks",
    "distribute",
    "errors",
    "exchange",
    "losses",
    "peer_selection",
    "schedules",
)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"tf_codistill.{name}")
    else:
        raise AttributeError(f"module 'tf_codistill' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
