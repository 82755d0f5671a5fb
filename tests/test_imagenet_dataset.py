"""tf_codistill.datasets.imagenet: ResNet preprocessing; the input function on mock data."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_codistill.datasets import imagenet
from tf_codistill.datasets import sharding


def jpeg(image):
    return tf.io.encode_jpeg(tf.constant(image, tf.uint8), quality=100)


def test_normalize_uses_imagenet_mean_and_stddev():
    mean = np.array(imagenet.MEAN_RGB)
    out = imagenet.normalize(tf.constant([[mean, mean + np.array(imagenet.STDDEV_RGB)]]))
    np.testing.assert_allclose(out, [[[0, 0, 0], [1, 1, 1]]], atol=1e-6)
    # (0 - 0.485 * 255) / (0.229 * 255) = -2.1179.
    assert float(imagenet.normalize(tf.zeros([3]))[0]) == pytest.approx(-0.485 / 0.229)


def test_center_crop_keeps_the_central_square():
    # 256 x 512: the shorter side is already 256 (resizing keeps the pixels);
    # the central 224 x 224 starts at row (256 - 224) / 2 = 16 and column
    # (512 - 224) / 2 = 144.
    rows, cols = np.meshgrid(np.arange(256), np.arange(512), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.float32)
    out = imagenet.center_crop(tf.constant(image), 224, 256).numpy()
    assert out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out[0, 0], [16, 144, 0])
    np.testing.assert_array_equal(out[-1, -1], [239, 367, 0])


def test_center_crop_resizes_the_shorter_side():
    # 100 x 50 (portrait): scaled by 256 / 50 to 512 x 256, crop rows 144..368.
    image = np.zeros([100, 50, 3], np.float32)
    image[:50] = 200.0  # Top half bright.
    out = imagenet.center_crop(tf.constant(image), 224, 256).numpy()
    assert out.shape == (224, 224, 3)
    # Output row r is resized row 144 + r; the bright half ends at row 256.
    np.testing.assert_allclose(out[: 256 - 144 - 3], 200.0)
    np.testing.assert_allclose(out[256 - 144 + 3 :], 0.0)


def test_eval_image_of_a_constant_jpeg():
    value = np.array(imagenet.MEAN_RGB).round()
    out = imagenet.eval_image(jpeg(np.full([300, 400, 3], value)), 224, 256).numpy()
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    # JPEG keeps a constant image within a grey level: normalised about 0.
    np.testing.assert_allclose(out, 0.0, atol=0.03)


def test_train_image_crops_resizes_and_flips():
    # Left half black, right half white. A crop of the whole image (area and
    # aspect ratio forced to 1) keeps that, or mirrors it when flipped.
    image = np.zeros([64, 64, 3], np.uint8)
    image[:, 32:] = 255
    encoded = jpeg(image)
    sides = set()
    for _ in range(20):
        out = imagenet.train_image(
            encoded, image_size=16, area_range=(1.0, 1.0), aspect_ratio_range=(1.0, 1.0)
        ).numpy()
        assert out.shape == (16, 16, 3)
        sides.add("white_left" if out[:, :4].mean() > out[:, -4:].mean() else "white_right")
    assert sides == {"white_left", "white_right"}
    # Small crops of a random image: always the requested size.
    noise = np.random.default_rng(0).integers(0, 256, [40, 90, 3])
    for _ in range(5):
        assert imagenet.train_image(jpeg(noise), image_size=24).shape == (24, 24, 3)


def test_input_fn_on_mock_data():
    with tfds.testing.mock_data(num_examples=10):
        train_context = sharding.DataContext(
            training=True, batch_size=4, num_groups=2, group_index=1, seed=3
        )
        batches = list(imagenet.imagenet_input_fn(train_context, image_size=32).take(4))
        eval_context = sharding.DataContext(training=False, batch_size=4)
        evaluation = list(imagenet.imagenet_input_fn(eval_context, image_size=32))
    for images, labels in batches:  # Repeated, full batches.
        assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
        assert labels.shape == (4,) and labels.dtype == tf.int64
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert labels.min() >= 0 and labels.max() < 1000
    # Normalised: roughly zero-mean, unit-range values, not raw pixels.
    pixels = np.concatenate([b[0].numpy().ravel() for b in batches])
    assert -2.2 < pixels.min() < -1.5 and 2.0 < pixels.max() < 2.7
    # Evaluation: every example once, the last batch smaller, no augmentation.
    assert [b[1].shape[0] for b in evaluation] == [4, 4, 2]


def test_input_fn_rejects_bad_sizes():
    with pytest.raises(ValueError, match=r"resize_size \(16\) must be >= image_size \(32\)"):
        imagenet.imagenet_input_fn(sharding.DataContext(), image_size=32, resize_size=16)


def test_missing_archives_give_the_download_steps(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        imagenet.load_builder(str(tmp_path / "tfds"))
    text = str(error.value)
    assert "dataset imagenet2012 is not prepared" in text
    assert str(tmp_path / "tfds" / "downloads" / "manual") in text
    assert "ILSVRC2012_img_train.tar" in text and "https://image-net.org/download-images" in text
    # A manual directory with one of the two archives: names the other one.
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing: ILSVRC2012_img_train.tar"):
        imagenet.load_builder(str(tmp_path / "tfds"), str(manual))
