"""ImageNet (ILSVRC 2012) through TFDS `imagenet2012`, with ResNet preprocessing.

The paper's image workload (Anil et al. 2018, section 3.3.1), which follows
Goyal et al. (2017). TFDS generates `imagenet2012` once from the two archives
the user downloads from image-net.org (see `MANUAL_DOWNLOAD_INSTRUCTIONS`);
the input function generates it on first use when they are in the manual
directory, and otherwise fails with those instructions.

Preprocessing (the ResNet recipe Goyal et al. use, from fb.resnet.torch):
- training: a random crop of 8% to 100% of the image's area with an aspect
  ratio in [3/4, 4/3] (the whole image if 10 attempts fail), resized to
  `image_size` x `image_size` (224) bilinearly, and a random horizontal flip.
  Only the crop is decoded (`tf.image.decode_and_crop_jpeg`). No colour
  augmentation (Goyal et al. mention only scale and aspect ratio).
- evaluation: the shorter side resized to `resize_size` (256), then the
  central `image_size` x `image_size` crop.
- both: per-channel normalisation with ImageNet's RGB mean
  (0.485, 0.456, 0.406) * 255 and standard deviation (0.229, 0.224, 0.225) *
  255; float32 output.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tensorflow_datasets as tfds

from tf_codistill import errors
from tf_codistill.datasets import sharding
from tf_codistill.datasets import tfds_utils

__all__ = [
    "MEAN_RGB",
    "STDDEV_RGB",
    "normalize",
    "center_crop",
    "train_image",
    "eval_image",
    "load_builder",
    "imagenet_input_fn",
]

DATASET = "imagenet2012"
REQUIRED_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
ImageNet needs a manual download: register at https://image-net.org/download-images,
accept the terms, download ILSVRC2012_img_train.tar (about 138 GB) and
ILSVRC2012_img_val.tar (about 6.3 GB) of ILSVRC 2012, and put both (unextracted)
into the manual directory: by default <data_dir>/downloads/manual/, or the one
given as `manual_dir` (gin: tf_codistill.datasets.imagenet_input_fn.manual_dir).
The first use then generates the TFDS dataset (several hours, about 150 GB more).
For a run of several groups, generate it once beforehand:
  python -c "from tf_codistill.datasets import imagenet as i; i.load_builder('DATA', 'MANUAL')"
"""


def normalize(image: tf.Tensor) -> tf.Tensor:
    """`(image - MEAN_RGB) / STDDEV_RGB`, float32, for `[..., 3]` RGB in [0, 255]."""
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def center_crop(image: tf.Tensor, image_size: int, resize_size: int) -> tf.Tensor:
    """Resizes the shorter side to `resize_size`, keeps the central square.

    Args:
      image: `[height, width, 3]` RGB (any real dtype).
      image_size: side of the output.
      resize_size: the shorter side after resizing (>= `image_size`).

    Returns:
      `[image_size, image_size, 3]` float32, values in the input's range.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = resize_size / tf.minimum(height, width)
    new_height = tf.cast(tf.round(height * scale), tf.int32)
    new_width = tf.cast(tf.round(width * scale), tf.int32)
    image = tf.image.resize(image, [new_height, new_width], method="bilinear")
    top = (new_height - image_size) // 2
    left = (new_width - image_size) // 2
    image = image[top : top + image_size, left : left + image_size]
    return tf.ensure_shape(image, [image_size, image_size, 3])


def eval_image(image_bytes: tf.Tensor, image_size: int = 224, resize_size: int = 256):
    """Evaluation preprocessing of one JPEG: `[image_size, image_size, 3]` float32."""
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    return normalize(center_crop(image, image_size, resize_size))


def train_image(
    image_bytes: tf.Tensor,
    image_size: int = 224,
    area_range: tuple[float, float] = (0.08, 1.0),
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    max_attempts: int = 10,
):
    """Training preprocessing of one JPEG: random-size crop, resize, flip, normalise.

    Args:
      image_bytes: a scalar string, the JPEG.
      image_size: side of the output.
      area_range: share of the image's area the crop covers.
      aspect_ratio_range: width / height of the crop.
      max_attempts: tries to find a crop; the whole image after that.

    Returns:
      `[image_size, image_size, 3]` float32.
    """
    shape = tf.io.extract_jpeg_shape(image_bytes)
    whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=whole_image,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    top, left, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    image = tf.image.decode_and_crop_jpeg(
        image_bytes, tf.stack([top, left, height, width]), channels=3
    )
    image = tf.image.resize(image, [image_size, image_size], method="bilinear")
    image = tf.image.random_flip_left_right(image)
    return normalize(tf.ensure_shape(image, [image_size, image_size, 3]))


def load_builder(
    data_dir: Optional[str] = None, manual_dir: Optional[str] = None
) -> tfds.core.DatasetBuilder:
    """The prepared `imagenet2012` builder, generated first if the archives are there.

    Raises:
      FileNotFoundError: not prepared and an archive is missing from the
        manual directory; the message says how to get them.
    """
    builder = tfds.builder(DATASET, data_dir=data_dir)
    return tfds_utils.prepared(builder, manual_dir, REQUIRED_FILES, MANUAL_DOWNLOAD_INSTRUCTIONS)


def imagenet_input_fn(
    context: sharding.DataContext,
    data_dir: Optional[str] = None,
    manual_dir: Optional[str] = None,
    image_size: int = 224,
    resize_size: Optional[int] = None,
    shuffle_buffer: Optional[int] = None,
) -> tf.data.Dataset:
    """ImageNet batches for `train_lib.train_group`: `(image, label)`.

    Training reads this group's shard of `train` (`context.tfds_split`), this
    worker's share of it, shuffled (files and examples, seed
    `context.shuffle_seed`), repeated, augmented, in full batches. Evaluation
    reads the whole `validation` split (50,000 images) in order, each worker
    its share, the last batch possibly smaller.

    Args:
      context: which group, worker, batch size and split.
      data_dir: TFDS data directory; None for TFDS' default.
      manual_dir: directory with the ILSVRC2012 archives, used only if the
        dataset must be generated; None for `<data_dir>/downloads/manual`.
      image_size: side of the images the model gets (224).
      resize_size: evaluation's shorter side before the central crop;
        default `round(image_size * 256 / 224)` (256 for 224).
      shuffle_buffer: examples in the shuffle buffer; None for the
        context's.

    Returns:
      A dataset of `(image, label)`: float32 `[batch, image_size, image_size,
      3]` normalised RGB and int64 `[batch]` class ids in [0, 1000).
    """
    if image_size < 1:
        raise errors.ConfigError(f"image_size must be >= 1, got {image_size}")
    resize_size = resize_size or round(image_size * 256 / 224)
    if resize_size < image_size:
        raise errors.ConfigError(
            f"resize_size ({resize_size}) must be >= image_size ({image_size})"
        )
    builder = load_builder(data_dir, manual_dir)
    # Keep the JPEG bytes: training decodes only the crop it keeps.
    decoders = {"image": tfds.decode.SkipDecoding()}
    if context.training:
        dataset = builder.as_dataset(
            split=context.tfds_split("train"),
            shuffle_files=True,
            decoders=decoders,
            read_config=tfds.ReadConfig(shuffle_seed=context.shuffle_seed),
        )
        dataset = context.shard_workers(dataset)
        dataset = dataset.shuffle(
            shuffle_buffer or context.shuffle_buffer,
            seed=context.shuffle_seed,
            reshuffle_each_iteration=True,
        ).repeat()
        dataset = context.skip_consumed(dataset)

        def preprocess(example):
            return train_image(example["image"], image_size), example["label"]

    else:
        dataset = builder.as_dataset(split="validation", shuffle_files=False, decoders=decoders)
        dataset = context.shard_workers(dataset)

        def preprocess(example):
            return eval_image(example["image"], image_size, resize_size), example["label"]

    dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(context.batch_size, drop_remainder=context.training)
    return dataset.prefetch(tf.data.AUTOTUNE)
