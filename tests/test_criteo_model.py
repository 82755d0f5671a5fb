"""tf_codistill.models.criteo: the paper's Criteo DNN, its sizes and its embeddings."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_codistill.models import criteo


def features(batch, num_buckets, missing_indicators=True, seed=0):
    rng = np.random.default_rng(seed)
    out = {
        "dense": rng.random((batch, 13)).astype(np.float32),
        "categorical": rng.integers(0, num_buckets, (batch, 26)),
    }
    if missing_indicators:
        out["dense_missing"] = (rng.random((batch, 13)) < 0.3).astype(np.float32)
    return out


def test_paper_size_parameter_count():
    model = criteo.criteo_dnn()
    # Embeddings: 26 features x 100,000 buckets x 16        = 41,600,000
    # MLP input: 13 counts + 13 indicators + 26 x 16 = 442
    # hidden_0: 442 x 2560 + 2560   = 1,131,520 + 2,560     =  1,134,080
    # hidden_1: 2560 x 1024 + 1024  = 2,621,440 + 1,024     =  2,622,464
    # hidden_2: 1024 x 256 + 256    =   262,144 +   256     =    262,400
    # logit:    256 x 1 + 1                                 =        257
    # total                                                 = 45,619,201
    assert model.count_params() == 45_619_201
    assert model.get_layer("embeddings").count_params() == 41_600_000
    assert [model.get_layer(f"hidden_{i}").units for i in range(3)] == [2560, 1024, 256]
    assert model.get_layer("hidden_0").activation is keras.activations.relu
    assert model.get_layer("logit").activation is keras.activations.linear


def test_small_model_without_indicators_output_and_count():
    model = criteo.criteo_dnn(
        num_hash_buckets=10, embedding_dim=2, hidden_units=(4,), missing_indicators=False
    )
    # 26 x 10 x 2 = 520; (13 + 26 x 2) x 4 + 4 = 264; 4 + 1 = 5: 789.
    assert model.count_params() == 789
    assert sorted(model.input) == ["categorical", "dense"]
    logits = model(features(3, 10, missing_indicators=False))
    assert logits.shape == (3, 1) and logits.dtype == tf.float32


def test_output_is_one_logit_per_example():
    model = criteo.criteo_dnn(num_hash_buckets=50, embedding_dim=4, hidden_units=(8, 8))
    logits = model(features(5, 50)).numpy()
    assert logits.shape == (5, 1)
    assert not np.allclose(logits, logits[0])  # Depends on the input.


def test_embeddings_look_up_one_table_per_feature():
    layer = criteo.HashedEmbeddings(num_features=3, num_buckets=5, dim=2)
    layer.build((None, 3))
    table = np.arange(30, dtype=np.float32).reshape(15, 2)
    layer.set_weights([table])
    # Feature i's bucket b is row i * 5 + b: rows 0, 9 and 11.
    out = layer(tf.constant([[0, 4, 1]], tf.int64)).numpy()
    np.testing.assert_array_equal(out, [[0, 1, 18, 19, 22, 23]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant([[0, 4, 1]])))
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)  # Sparse: Adagrad touches 3 rows only.


def test_embeddings_reject_a_wrong_feature_count():
    layer = criteo.HashedEmbeddings(num_features=26, num_buckets=5, dim=2)
    with pytest.raises(ValueError, match=r"expected \[batch, 26\] bucket ids"):
        layer(tf.zeros([2, 25], tf.int64))
    with pytest.raises(ValueError, match="num_buckets must be >= 1, got 0"):
        criteo.HashedEmbeddings(num_features=26, num_buckets=0, dim=2)
