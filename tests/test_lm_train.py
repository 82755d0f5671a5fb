"""The language-model workload (gin/lm) end to end through binaries/train.py."""

import json
import math

import gin
import numpy as np
import pytest
import tensorflow as tf

from tf_codistill import exchange
from tf_codistill import gin_utils
from tf_codistill import label_smoothing
from tf_codistill import testing
from tf_codistill import train_lib
from tf_codistill.datasets import text

NO_WAIT = "tf_codistill.train_lib.train_group.wait_for_peers_s = 0"


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    # gin/lm/tiny.gin names the bundled text relative to the repository root.
    monkeypatch.chdir(testing.repo_root())


def test_tiny_lm_codistills_and_writes_outputs(tmp_path):
    # Group 1 has published a checkpoint of the same architecture (built from
    # the tiny config itself), so group 0 distills from it after burn-in.
    gin_utils.parse(["lm/tiny.gin"], finalize=False)
    peer = gin_utils.query("tf_codistill.train_lib.train_group.model_fn")()
    exchange.Publisher(peer, exchange.group_dir(str(tmp_path), 1)).publish(0)
    gin.clear_config()

    testing.run_train_main(tmp_path, ["lm/tiny.gin"], [NO_WAIT])

    group = tmp_path / "group_0"
    config = (group / "operative_config.gin").read_text()
    for expected in ("lstm_lm", "carry_state = True", "CarriedStateCallback", "train_steps = 20"):
        assert expected in config
    assert tf.train.latest_checkpoint(str(group)).endswith("ckpt-20")
    metrics = json.loads((group / "metrics.json").read_text())
    assert metrics["steps"] == 20 and [e["step"] for e in metrics["history"]] == [10, 20]
    assert metrics["teacher_reloads"]["1"]["loaded"] == 1
    final = metrics["final"]
    # The per-token distillation loss (masked: validation streams end in padding)
    # is finite and positive; the paper's metric, cross-entropy per real token,
    # is reported next to the task loss.
    assert math.isfinite(final["val_distill_loss"]) and final["val_distill_loss"] > 0
    assert 0.0 <= final["val_agreement"] <= 1.0
    assert math.isfinite(final["val_token_cross_entropy"])
    # valid.txt has 268 word pieces and EODs in 4 streams of 3 x 32 positions
    # (384): Keras' task loss averages over all positions, masked ones as 0, so
    # it is the per-token cross-entropy times 268 / 384.
    assert final["val_task_loss"] == pytest.approx(
        final["val_token_cross_entropy"] * 268 / 384, rel=1e-4
    )
    train_scalars = testing.event_scalars(str(group / "tensorboard" / "train"))
    # Steps 11-20 are all past the burn-in of 5 steps: weight 1, distillation on.
    assert train_scalars["distill_weight"][-1] == (20, 1.0)
    step, distill = train_scalars["distill_loss"][-1]
    assert step == 20 and math.isfinite(distill) and distill > 0


def test_unigram_smoothing_uses_the_corpus_frequencies():
    gin_utils.parse(
        ["lm/tiny.gin"],
        [
            "tf_codistill.train_lib.train_group.loss = "
            "@tf_codistill.label_smoothing.LabelSmoothingCrossEntropy()",
            "tf_codistill.label_smoothing.LabelSmoothingCrossEntropy.smoothing = 0.1",
            "tf_codistill.label_smoothing.LabelSmoothingCrossEntropy.prior = "
            "@tf_codistill.datasets.text.unigram_distribution()",
        ],
        finalize=False,
    )
    loss = gin_utils.query("tf_codistill.train_lib.train_group.loss")
    assert isinstance(loss, label_smoothing.LabelSmoothingCrossEntropy)
    counts = text.TextCorpus().unigram_counts()
    assert loss.prior.shape == (302,) and loss.smoothing == 0.1
    np.testing.assert_allclose(loss.prior, counts / counts.sum(), rtol=1e-6)


def test_tiny_lm_trains_under_mirrored_strategy(tmp_path):
    # Two replicas on two virtual CPUs, 4 streams each: one input pipeline
    # feeds both (interleaved stream sets), each replica carries its own
    # state in sync-on-read variables, and evaluation has a fixed number of
    # steps (Keras needs it for distributed data).
    gin_utils.parse(
        ["lm/tiny.gin"],
        [
            NO_WAIT,
            "tf_codistill.train_lib.train_group.global_batch_size = 8",
            "tf_codistill.train_lib.train_group.train_steps = 10",
            "tf_codistill.train_lib.train_group.steps_per_loop = 5",
        ],
    )
    # Not the default CPU collectives: after another test's MirroredStrategy
    # has run its all-reduces in this process, this one's failed with "Shape
    # mismatch in the collective instance" (seen in the full suite, not
    # alone). Reducing on one device avoids the collectives.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    results = train_lib.train_group(str(tmp_path), 0, 1, strategy=strategy)
    assert [e["step"] for e in results["history"]] == [5, 10]
    final = results["final"]
    assert math.isfinite(final["val_token_cross_entropy"])
    # Loss at step 10 is near ln 302 = 5.71 or below, not a replica sum.
    assert 3.0 < final["val_token_cross_entropy"] < 6.5
