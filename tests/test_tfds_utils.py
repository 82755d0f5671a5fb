"""datasets.tfds_utils: a dataset that needs a manual download fails with one clear error."""

import pytest
from etils import epath

from tf_codistill import errors
from tf_codistill.datasets import tfds_utils


class FakeBuilder:
    """The parts of a TFDS builder `prepared` uses."""

    name = "fake"

    def __init__(self, data_dir, prepared=False, fails=None):
        self.data_dir_root = epath.Path(data_dir)
        self.data_dir = self.data_dir_root / "fake" / "1.0.0"
        self._prepared = prepared
        self._fails = fails
        self.prepared_from = None

    def is_prepared(self):
        return self._prepared

    def download_and_prepare(self, download_config):
        if self._fails:
            raise self._fails
        self.prepared_from = download_config.manual_dir
        self._prepared = True


def test_a_prepared_dataset_is_used_as_it_is(tmp_path):
    builder = FakeBuilder(tmp_path, prepared=True)
    assert tfds_utils.prepared(builder, None, ["train.txt"], "get it") is builder
    assert builder.prepared_from is None


def test_generated_from_the_manual_directory(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "train.txt").write_text("x")
    builder = FakeBuilder(tmp_path)
    assert tfds_utils.prepared(builder, str(tmp_path / "manual"), ["train.txt"], "get it")
    assert builder.prepared_from == str(tmp_path / "manual")
    assert tfds_utils.default_manual_dir(builder) == tmp_path / "downloads" / "manual"


def test_a_missing_file_is_named_with_the_instructions(tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "other.txt").write_text("x")
    with pytest.raises(errors.DataNotFoundError, match="missing: train.txt.\nDownload it"):
        tfds_utils.prepared(
            FakeBuilder(tmp_path), str(tmp_path / "manual"), ["train.txt"], "Download it"
        )


def test_an_empty_manual_directory_is_one_error_not_tfds_assertion(tmp_path):
    builder = FakeBuilder(tmp_path, fails=AssertionError("Manual directory does not exist"))
    with pytest.raises(FileNotFoundError, match="that directory is missing or empty"):
        tfds_utils.prepared(builder, None, ["train.txt"], "Download it")
