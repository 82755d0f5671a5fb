"""Test session set-up and the fixtures several test modules share.

Runs before any test module imports TensorFlow ops.
"""

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

import gin  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

# absltest's create_tempdir() reads --test_tmpdir; under pytest nobody parses
# absl flags, so take their defaults.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """The end-to-end process tests run one after another, on one xdist worker.

    With `-n 2 --dist loadgroup` (the README's test command), the unit tests
    share the other worker. The process tests start clusters of their own on
    127.0.0.1 and size their timeouts for one such cluster at a time on 2
    cores; two at once would time each other. Runs before xdist reads the
    groups (tryfirst); without xdist the mark does nothing.
    """
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("processes"))


@pytest.fixture(autouse=True)
def clean_gin():
    """Every test starts and ends with an empty gin config."""
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A finished run of gin/demo/tiny.gin: two codistilling groups, trained in turn.

    Shared by the evaluation tests, which only read it (or write under
    `eval/`, removing what they add).
    """
    from tf_codistill import gin_utils
    from tf_codistill import train_lib

    root = str(tmp_path_factory.mktemp("run"))
    for g in range(2):
        gin.clear_config()
        gin_utils.parse(
            ["demo/tiny.gin"], ["tf_codistill.train_lib.train_group.wait_for_peers_s = 0"]
        )
        # Group 0 trains before group 1 has published: it cannot distil.
        train_lib.train_group(root, g, 2, allow_no_distillation=g == 0)
    gin.clear_config()
    return root


@pytest.fixture
def evaluate_main():
    """Runs binaries/evaluate.py's main in this process with the given flags."""
    evaluate = testing.load_binary("evaluate")

    def run(root_dir, output_dir, groups=(), mode="latest", ensemble=False, bindings=()):
        values = dict(
            root_dir=root_dir,
            group=list(groups),
            mode=mode,
            ensemble=ensemble,
            ensemble_head="auto",
            timeout_s=60,
            poll_interval_s=0.1,
            final_step=None,
            max_attempts=3,
            gin_file=[],
            gin_bindings=list(bindings),
            output_dir=output_dir,
        )
        for name, value in values.items():
            setattr(flags.FLAGS, name, value)
        evaluate.main([])

    return run
