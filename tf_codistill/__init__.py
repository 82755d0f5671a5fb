"""tf_codistill: codistillation (Anil et al., 2018) for TensorFlow / tf_keras.

import tf_keras as keras
import tf_codistill

model = tf_codistill.CodistillModel(student, group_index=0, num_groups=2,
                                    exchange_dir="/shared/run1")
model.compile(optimizer=..., loss=..., metrics=[...])
model.fit(train_ds, validation_data=val_ds, epochs=3)
model.student.save("served.keras")
"""

from tf_codistill import callbacks
from tf_codistill import distribute
from tf_codistill import exchange
from tf_codistill import losses
from tf_codistill import schedules
from tf_codistill.callbacks import ExchangeCallback
from tf_codistill.codistill_model import CodistillModel
from tf_codistill.codistill_model import ExchangeWriteError
from tf_codistill.codistill_model import PeerMismatchError
from tf_codistill.codistill_model import ReloadOutcome

__version__ = "0.1.0"

__all__ = [
    "CodistillModel",
    "ExchangeCallback",
    "ExchangeWriteError",
    "PeerMismatchError",
    "ReloadOutcome",
    "callbacks",
    "distribute",
    "exchange",
    "losses",
    "schedules",
]
