"""Preparing TFDS datasets that need a manual download, with clear errors.

TFDS generates such a dataset once from files the user places in its manual
directory (by default `<data_dir>/downloads/manual`). When they are missing,
TFDS fails with an `AssertionError` deep inside `download_and_prepare`, or,
when only some of them are there, prepares only part of the dataset. Here the
files are checked first and a missing one gives one `FileNotFoundError` that
names the directory, the file and the dataset's download instructions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from tf_codistill import errors

__all__ = ["default_manual_dir", "prepared"]


def default_manual_dir(builder: tfds.core.DatasetBuilder) -> epath.Path:
    """TFDS' default manual directory of `builder`: `<data_dir>/downloads/manual`."""
    return builder.data_dir_root / "downloads" / "manual"


def prepared(
    builder: tfds.core.DatasetBuilder,
    manual_dir: Optional[str],
    required_files: Sequence[str],
    instructions: str,
) -> tfds.core.DatasetBuilder:
    """Returns `builder`, generating its data from the manual directory if needed.

    Args:
      builder: a TFDS builder whose dataset needs a manual download.
      manual_dir: where the downloaded files are; None for TFDS' default.
      required_files: names the manual directory must hold to generate.
      instructions: how to get those files (shown in the error).

    Returns:
      `builder`, prepared.

    Raises:
      FileNotFoundError: the dataset is not prepared and a required file is
        missing; the message names the directory, the files and the steps.
    """
    if builder.is_prepared():
        return builder
    manual = epath.Path(manual_dir) if manual_dir else default_manual_dir(builder)
    missing_message = (
        f"dataset {builder.name} is not prepared in {builder.data_dir_root} and cannot be "
        f"generated: its manual directory {manual} must contain {', '.join(required_files)}"
    )
    # Only checked when the directory has something in it: an absent or empty
    # one is reported by TFDS' own check below (which test mocks replace).
    if manual.exists() and any(manual.iterdir()):
        missing = [name for name in required_files if not (manual / name).exists()]
        if missing:
            raise errors.DataNotFoundError(
                f"{missing_message}; missing: {', '.join(missing)}.\n{instructions.strip()}"
            )
    logging.info("Preparing %s in %s from %s", builder.name, builder.data_dir, manual)
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual), try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config)
    except AssertionError as e:
        # TFDS: "Manual directory ... does not exist or is empty."
        raise errors.DataNotFoundError(
            f"{missing_message}, and that directory is missing or empty.\n{instructions.strip()}"
        ) from e
    except OSError:
        # Another process (a peer group) may have prepared it at the same time
        # and won the final rename; its data is as good as ours.
        fresh = type(builder)(data_dir=os.fspath(builder.data_dir_root))
        if fresh.is_prepared():
            return fresh
        raise
    return builder
