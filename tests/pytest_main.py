"""Runs one test file with pytest, as the `main` of each py_test in tests/BUILD.bazel.

Bazel runs a py_test's main as a script in this workspace's runfiles directory
and passes the test file (`tests/test_<name>.py`) as an argument. Not collected
by plain pytest (its name does not match `test_*.py`).
"""

import os
import sys

import pytest

if __name__ == "__main__":
    # The runfiles tree is not a place to write .pytest_cache into.
    args = ["-p", "no:cacheprovider", *sys.argv[1:]]
    # tmp_path under Bazel's per-test scratch directory; JUnit XML where Bazel reads it.
    if "TEST_TMPDIR" in os.environ:
        args.append(f"--basetemp={os.path.join(os.environ['TEST_TMPDIR'], 'pytest')}")
    if "XML_OUTPUT_FILE" in os.environ:
        args.append(f"--junitxml={os.environ['XML_OUTPUT_FILE']}")
    sys.exit(pytest.main(args))
