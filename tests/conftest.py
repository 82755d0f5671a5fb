"""Test session set-up: runs before any test module imports TensorFlow ops."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_codistill import testing  # noqa: E402

# Processes the tests start (binaries, the launcher, the harness) import the
# same tf_codistill as the tests do, whatever else is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [testing.repo_root(), *filter(None, [os.environ.get("PYTHONPATH")])]
)

# MirroredStrategy tests need two logical CPUs; the split must happen before
# TensorFlow initialises its devices, so it is done once for the session.
testing.use_virtual_cpus(2)

from absl import flags  # noqa: E402

# absltest's create_tempdir() reads --test_tmpdir; under pytest nobody parses
# absl flags, so take their defaults.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
