"""app: the binaries' main wrapper; the modules a binary needs before TensorFlow."""

import glob
import logging as std_logging
import os
import subprocess
import sys

import pytest
from absl import logging as absl_logging

from tf_codistill import app
from tf_codistill import errors
from tf_codistill import testing


@app.one_line_errors
def _fails_with(error):
    raise error


def test_a_library_error_is_one_line_and_exit_code_1(caplog):
    with pytest.raises(SystemExit) as exit_info:
        _fails_with(errors.ConfigError("train_steps must be\n  an integer >= 1, got 0"))
    # sys.exit(str) prints the text to stderr and exits with code 1.
    assert exit_info.value.code == "test_app.py: train_steps must be an integer >= 1, got 0"
    assert "ConfigError: train_steps must be" in caplog.text


def test_a_caught_exit_leaves_logging_as_it_was():
    # Warnings at interpreter exit are silenced then, not at once: code that
    # catches the SystemExit (these tests) keeps its warnings.
    app.one_line_errors(lambda argv: None)([])  # Which sets TensorFlow's logger to WARNING.
    before = (absl_logging.get_verbosity(), std_logging.getLogger("tensorflow").level)
    with pytest.raises(SystemExit):
        _fails_with(errors.ConfigError("x"))
    after = (absl_logging.get_verbosity(), std_logging.getLogger("tensorflow").level)
    assert after == before


def test_anything_else_keeps_its_traceback():
    with pytest.raises(ValueError, match="a bug"):
        _fails_with(ValueError("a bug"))


def test_the_wrapped_main_returns_what_main_returns():
    assert app.one_line_errors(lambda argv: argv)(["x"]) == ["x"]


def test_launcher_modules_do_not_load_tensorflow():
    # The package's names load on first use; these modules need no TensorFlow.
    code = (
        "import sys\n"
        "from tf_codistill import app, errors, layout, local_cluster\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "import tf_codistill\n"
        "assert tf_codistill.ExchangeWriteError is errors.ExchangeWriteError\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_binaries_and_benchmarks_do_not_edit_sys_path():
    root = testing.repo_root()
    sources = glob.glob(os.path.join(root, "binaries", "*.py"))
    sources += glob.glob(os.path.join(root, "benchmarks", "*.py"))
    assert len(sources) >= 6
    for path in sources:
        with open(path) as f:
            assert "sys.path" not in f.read(), path


def test_exit_now_flushes_the_output_and_skips_the_teardown():
    code = (
        "import atexit, sys\n"
        "from absl import logging\n"
        "from tf_codistill import app\n"
        "atexit.register(lambda: print('teardown ran', flush=True))\n"
        "logging.set_verbosity(logging.INFO)\n"
        "logging.info('logged line')\n"
        "print('printed line', end='')\n"
        "app.exit_now(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    assert result.stdout == "printed line" and "logged line" in result.stderr
