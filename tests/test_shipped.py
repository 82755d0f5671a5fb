"""datasets/shipped: `testdata/` paths of the tiny configs resolve from any directory."""

import os

import pytest

from tf_codistill import errors
from tf_codistill import testing
from tf_codistill.datasets import shipped


def test_a_testdata_path_resolves_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The checkout's copy (an installed package's is under sys.prefix/share).
    assert shipped.resolve("testdata/text/train.txt", "x") == os.path.join(
        testing.repo_root(), "testdata", "text", "train.txt"
    )
    assert shipped.resolve("testdata/criteo", "x") == os.path.join(
        testing.repo_root(), "testdata", "criteo"
    )


def test_a_path_that_exists_as_given_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "testdata").mkdir()
    (tmp_path / "testdata" / "mine.txt").write_text("x")
    assert shipped.resolve("testdata/mine.txt", "x") == "testdata/mine.txt"
    assert shipped.resolve("other/file.txt", "x") == "other/file.txt"


def test_a_missing_testdata_path_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.DataNotFoundError) as raised:
        shipped.resolve("testdata/text/nothing*.txt", "TextCorpus.train_files")
    message = str(raised.value)
    assert message.startswith(
        "TextCorpus.train_files: 'testdata/text/nothing*.txt' is not in the working directory"
    )
    assert os.path.join(testing.repo_root(), "testdata") in message
    assert "pip install ." in message
