"""storage: whole-file writes on a filesystem (temporary name, rename) or an object store (none)."""

import os
from unittest import mock

import pytest
import tensorflow as tf

from tf_codistill import storage
from tf_codistill.testing import object_store


def test_the_store_is_chosen_by_scheme_or_registration(tmp_path):
    assert storage.store_for("gs://bucket/run/group_0").atomic_rename is False
    assert storage.store_for("gs://bucket/run").min_write_interval_s == 1.0
    assert storage.store_for("s3://bucket/run").atomic_rename is False
    local = storage.store_for(str(tmp_path))
    assert local.atomic_rename is True and local.min_write_interval_s == 0.0
    with object_store.ObjectStoreEmulator(str(tmp_path / "b")) as emulator:
        with storage.register(emulator.directory, emulator):
            assert storage.store_for(os.path.join(emulator.directory, "group_1")) is emulator
            assert storage.store_for(emulator.directory + "/") is emulator
            assert storage.store_for(str(tmp_path / "b2")).atomic_rename is True
        assert storage.store_for(emulator.directory) is not emulator


def test_a_filesystem_write_goes_through_a_temporary_name(tmp_path):
    path = str(tmp_path / "state")
    renames = []
    real_rename = tf.io.gfile.rename

    def rename(source, target, overwrite=False):
        renames.append((os.path.basename(source), os.path.basename(target)))
        assert open(source, "rb").read() == b"new"  # Whole before it is renamed.
        real_rename(source, target, overwrite)

    with mock.patch.object(tf.io.gfile, "rename", rename):
        storage.Store().write(path, b"new")
        storage.Store().upload(path, str(tmp_path / "copy"))
    assert [t for _, t in renames] == ["state", "copy"]
    assert all(s.startswith(t + ".tmp") for s, t in renames)
    assert sorted(os.listdir(tmp_path)) == ["copy", "state"]  # No temporaries left.


def test_an_object_store_write_is_one_write_under_the_final_name(tmp_path):
    path = str(tmp_path / "state")
    store = storage.Store(atomic_rename=False, min_write_interval_s=1.0)
    with mock.patch.object(tf.io.gfile, "rename", side_effect=AssertionError("renamed")):
        store.write(path, b"one")
        store.upload(path, str(tmp_path / "copy"))
    assert open(tmp_path / "copy", "rb").read() == b"one"
    store.remove(str(tmp_path / "copy"))
    store.remove(str(tmp_path / "copy"))  # Gone already: no error.
    assert os.listdir(tmp_path) == ["state"]


def test_registration_is_undone_and_nests(tmp_path):
    outer, inner = storage.Store(), storage.Store()
    with storage.register(str(tmp_path), outer):
        with storage.register(str(tmp_path / "run"), inner):
            assert storage.store_for(str(tmp_path / "run" / "group_0")) is inner
            assert storage.store_for(str(tmp_path / "other")) is outer
        with storage.register(str(tmp_path), inner):
            assert storage.store_for(str(tmp_path)) is inner
        assert storage.store_for(str(tmp_path)) is outer
    assert storage.store_for(str(tmp_path)) not in (outer, inner)


def test_a_refused_write_raises_the_stores_error(tmp_path):
    with object_store.ObjectStoreEmulator(str(tmp_path / "b"), min_write_interval_s=60) as store:
        store.write(os.path.join(store.directory, "x"), b"1")
        with pytest.raises(tf.errors.ResourceExhaustedError):
            store.write(os.path.join(store.directory, "x"), b"2")
