"""tf_codistill.datasets.criteo: the TFDS builder on testdata/criteo and the input function.

testdata/criteo/train.txt has 48 lines in the challenge's format; lines 16,
32 and 48 are the validation split (every 16th line). Lines 1-4 and 16 are
checked field by field below (see testdata/criteo/README.md).
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_codistill import testing
from tf_codistill.datasets import criteo
from tf_codistill.datasets import sharding
from tf_codistill.models import criteo as criteo_model

TESTDATA = os.path.join(testing.repo_root(), "testdata", "criteo")
MALFORMED = os.path.join(TESTDATA, "malformed")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    criteo.load_builder(path, TESTDATA)
    return path


def examples_by_line(data_dir, split):
    builder = criteo.CriteoDisplayAds(data_dir=data_dir)
    return {int(e["line"]): e for e in tfds.as_numpy(builder.as_dataset(split=split))}


def test_constants_match_the_model():
    assert criteo_model.NUM_INTEGER_FEATURES == criteo.NUM_INTEGER_FEATURES == 13
    assert criteo_model.NUM_CATEGORICAL_FEATURES == criteo.NUM_CATEGORICAL_FEATURES == 26
    assert criteo_model.DEFAULT_NUM_HASH_BUCKETS == criteo.DEFAULT_NUM_HASH_BUCKETS


def test_split_is_every_16th_line(data_dir):
    info = criteo.CriteoDisplayAds(data_dir=data_dir).info
    assert info.splits["train"].num_examples == 45
    assert info.splits["validation"].num_examples == 3
    assert sorted(examples_by_line(data_dir, "validation")) == [16, 32, 48]
    assert sorted(examples_by_line(data_dir, "train")) == [n for n in range(1, 49) if n % 16]
    assert dict(info.metadata["malformed_lines_skipped"]) == {"train": 0, "validation": 0}


def test_stored_examples_of_hand_checked_lines(data_dir):
    train = examples_by_line(data_dir, "train")
    # Line 1: 0, 1 1 5 0 1382 4 15 2 181 1 2 <empty> 2, C1 = 41abdde1, C2 = 1c9cd77d ...
    first = train[1]
    assert first["label"] == 0
    np.testing.assert_array_equal(first["integer"], [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, 0, 2])
    np.testing.assert_array_equal(first["integer_missing"], [False] * 11 + [True, False])
    assert first["categorical"][:2].tolist() == [b"41abdde1", b"1c9cd77d"]
    assert b"" not in first["categorical"].tolist()
    # Line 2: 1, <empty> -1 <empty> <empty> 0 <empty> <empty> 0 and 5 more empty.
    second = train[2]
    assert second["label"] == 1
    np.testing.assert_array_equal(second["integer"], [0, -1] + [0] * 11)
    missing = [True, False, True, True, False, True, True, False] + [True] * 5
    np.testing.assert_array_equal(second["integer_missing"], missing)
    # Line 3: label 0 and every feature empty.
    third = train[3]
    assert third["label"] == 0
    assert third["integer_missing"].all() and not third["integer"].any()
    assert third["categorical"].tolist() == [b""] * 26
    # Line 4: big counts; C14..C26 empty.
    fourth = train[4]
    assert fourth["integer"][:3].tolist() == [2_000_000, 65535, 7]
    assert fourth["categorical"][0] == b"58599bb1"
    assert fourth["categorical"][13:].tolist() == [b""] * 13
    # Line 16 (validation): 1, 1 0 <empty> <empty> 3 39 8 42 6 2 19 0 11.
    sixteenth = examples_by_line(data_dir, "validation")[16]
    assert sixteenth["label"] == 1
    np.testing.assert_array_equal(sixteenth["integer"], [1, 0, 0, 0, 3, 39, 8, 42, 6, 2, 19, 0, 11])
    np.testing.assert_array_equal(
        sixteenth["integer_missing"], [False, False, True, True] + [False] * 9
    )


def test_preprocess_of_hand_checked_lines(data_dir):
    train = examples_by_line(data_dir, "train")
    features, label = criteo.preprocess(
        {k: tf.constant(v) for k, v in train[1].items()}, num_hash_buckets=100_000
    )
    # log(1 + x) of 1 1 5 0 1382 4 15 2 181 1 2 <missing -> 0> 2.
    counts = [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, 0, 2]
    np.testing.assert_allclose(features["dense"], [math.log1p(c) for c in counts], rtol=1e-6)
    assert math.isclose(float(features["dense"][4]), 7.232010, rel_tol=1e-6)
    np.testing.assert_array_equal(features["dense_missing"], [0] * 11 + [1, 0])
    # FarmHash Fingerprint64 % 100000, pinned: the buckets must not change
    # between runs, machines or TensorFlow versions.
    assert features["categorical"][:2].numpy().tolist() == [87166, 36078]
    np.testing.assert_array_equal(label, [0.0])

    # Line 2: the count -1 becomes log(1 + max(-1, 0)) = 0.
    features, label = criteo.preprocess({k: tf.constant(v) for k, v in train[2].items()})
    np.testing.assert_array_equal(features["dense"], np.zeros(13))
    np.testing.assert_array_equal(label, [1.0])
    # Line 3: all missing: dense 0, indicators 1, every categorical in the "" bucket.
    features, _ = criteo.preprocess({k: tf.constant(v) for k, v in train[3].items()})
    np.testing.assert_array_equal(features["dense"], np.zeros(13))
    np.testing.assert_array_equal(features["dense_missing"], np.ones(13))
    assert set(features["categorical"].numpy().tolist()) == {97263}
    # Line 4: log(1 + 2,000,000) = 14.508658; log(1 + 65535) = 11.090355.
    features, _ = criteo.preprocess({k: tf.constant(v) for k, v in train[4].items()})
    np.testing.assert_allclose(features["dense"][:2], [14.508658, 11.090355], rtol=1e-6)
    # Fewer buckets, same hash: Fingerprint64("41abdde1") % 1000 = 166.
    features, _ = criteo.preprocess(
        {k: tf.constant(v) for k, v in train[1].items()},
        num_hash_buckets=1000,
        missing_indicators=False,
    )
    assert int(features["categorical"][0]) == 166 and "dense_missing" not in features


@pytest.mark.parametrize(
    "line, message",
    [
        ("1\t2", "expected 40 tab-separated fields"),
        ("2" + "\t" * 39, "label must be 0 or 1, got '2'"),
        ("\t" * 39, "label must be 0 or 1, got ''"),
        ("0\t3.5" + "\t" * 38, "I1 is not an integer: '3.5'"),
        ("0\t\t\t12a" + "\t" * 36, "I3 is not an integer: '12a'"),
        ("0\t1_000" + "\t" * 38, "I1 is not an integer: '1_000'"),
        ("0\t99999999999999999999" + "\t" * 38, "I1 is out of int64 range"),
    ],
)
def test_parse_line_names_the_problem(line, message):
    with pytest.raises(criteo.MalformedLineError, match=message.replace(".", r"\.")):
        criteo.parse_line(line)


def test_parse_line_accepts_windows_line_endings():
    parsed = criteo.parse_line("1\t-3" + "\t" * 12 + "\tab" * 26 + "\r\n")
    assert parsed["label"] == 1 and parsed["integer"][0] == -3
    assert parsed["categorical"].tolist() == ["ab"] * 26


def test_malformed_line_is_an_error_naming_file_and_line(tmp_path):
    with pytest.raises(criteo.MalformedLineError) as error:
        criteo.load_builder(str(tmp_path), MALFORMED)
    text = str(error.value)
    assert os.path.join(MALFORMED, "train.txt") + ", line 3:" in text
    assert "expected 40 tab-separated fields" in text and "got 39" in text
    assert "on_malformed='skip'" in text
    assert not criteo.CriteoDisplayAds(data_dir=str(tmp_path)).is_prepared()


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    # Lines 3, 5, 7, 9 (train) and 16 (validation) of the 32 are malformed.
    builder = criteo.load_builder(str(tmp_path), MALFORMED, on_malformed="skip")
    assert dict(builder.info.metadata["malformed_lines_skipped"]) == {
        "train": 4,
        "validation": 1,
    }
    assert builder.info.splits["train"].num_examples == 30 - 4
    lines = {int(e["line"]) for e in tfds.as_numpy(builder.as_dataset(split="train"))}
    assert lines == {n for n in range(1, 33) if n % 16} - {3, 5, 7, 9}
    # The counts survive a reload from disk.
    reloaded = criteo.CriteoDisplayAds(data_dir=str(tmp_path))
    assert reloaded.info.metadata["malformed_lines_skipped"]["train"] == 4


def test_unknown_malformed_policy():
    with pytest.raises(ValueError, match="on_malformed must be one of"):
        criteo.CriteoDisplayAds(on_malformed="ignore")


@pytest.mark.parametrize("make_dir", [False, True])
def test_missing_train_txt_gives_download_instructions(tmp_path, make_dir):
    manual = tmp_path / "manual"
    if make_dir:  # A manual directory with something else in it.
        manual.mkdir()
        (manual / "test.txt").write_text("")
    with pytest.raises(FileNotFoundError) as error:
        criteo.load_builder(str(tmp_path / "tfds"), str(manual))
    text = str(error.value)
    assert f"manual directory {manual} must contain train.txt" in text
    assert "criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz" in text
    assert "criteo_input_fn.manual_dir" in text


def test_input_fn_training_batches_and_group_shards(data_dir):
    context = sharding.DataContext(training=True, batch_size=4, num_groups=2, group_index=1)
    features, label = next(iter(criteo.criteo_input_fn(context, data_dir=data_dir)))
    assert features["dense"].shape == (4, 13) and features["dense"].dtype == tf.float32
    assert features["dense_missing"].shape == (4, 13)
    assert features["categorical"].shape == (4, 26) and features["categorical"].dtype == tf.int64
    assert label.shape == (4, 1) and label.dtype == tf.float32
    assert 0 <= int(tf.reduce_min(features["categorical"]))
    assert int(tf.reduce_max(features["categorical"])) < criteo.DEFAULT_NUM_HASH_BUCKETS

    # The groups' shards (what the input fn reads) are disjoint and cover train.
    builder = criteo.CriteoDisplayAds(data_dir=data_dir)
    shards = []
    for group in range(2):
        split = sharding.DataContext(num_groups=2, group_index=group).tfds_split("train")
        shards.append({int(e["line"]) for e in tfds.as_numpy(builder.as_dataset(split=split))})
    assert not shards[0] & shards[1]
    assert shards[0] | shards[1] == {n for n in range(1, 49) if n % 16}
    assert abs(len(shards[0]) - len(shards[1])) <= 1


def test_input_fn_training_repeats_in_full_batches(data_dir):
    # Group 0 of 2 has 22 or 23 examples: 10 batches of 4 need repeating.
    context = sharding.DataContext(training=True, batch_size=4, num_groups=2)
    batches = list(criteo.criteo_input_fn(context, data_dir=data_dir).take(10))
    assert [b[1].shape[0] for b in batches] == [4] * 10


def _eval_rows(data_dir, **context_args):
    context = sharding.DataContext(training=False, batch_size=2, **context_args)
    batches = list(criteo.criteo_input_fn(context, data_dir=data_dir))
    rows = [
        (tuple(f["dense"].numpy()[i].tolist()), float(y[i, 0]))
        for f, y in batches
        for i in range(y.shape[0])
    ]
    return [int(y.shape[0]) for _, y in batches], rows


def test_input_fn_evaluation_reads_all_validation_in_a_fixed_order(data_dir):
    sizes, rows = _eval_rows(data_dir, num_groups=2, group_index=1)
    assert sizes == [2, 1]  # Every example, the last batch smaller.
    expected = set()
    for example in examples_by_line(data_dir, "validation").values():
        features, label = criteo.preprocess({k: tf.constant(v) for k, v in example.items()})
        expected.add((tuple(features["dense"].numpy().tolist()), float(label[0])))
    assert set(rows) == expected and len(rows) == 3
    assert _eval_rows(data_dir, num_groups=2, group_index=0)[1] == rows  # Same for every group.
    # Two workers of a group split it between them.
    first = _eval_rows(data_dir, num_workers=2, worker_index=0)[1]
    second = _eval_rows(data_dir, num_workers=2, worker_index=1)[1]
    assert sorted(first + second) == sorted(rows) and len(first) == 2


def test_input_fn_rejects_bad_bucket_count(data_dir):
    with pytest.raises(ValueError, match="num_hash_buckets must be an integer >= 1, got 0"):
        criteo.criteo_input_fn(sharding.DataContext(), data_dir=data_dir, num_hash_buckets=0)
