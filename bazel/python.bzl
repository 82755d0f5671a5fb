"""Phase 2 of tf_codistill's WORKSPACE set-up (see //:WORKSPACE.bzl): Python and PyPI."""

load("@rules_python//python:pip.bzl", "pip_parse")
load("@rules_python//python:repositories.bzl", "py_repositories", "python_register_toolchains")

# The version CI and the lock file were made with (setup.py allows >= 3.10).
PYTHON_VERSION = "3.11"

def tf_codistill_python_deps():
    """Registers a hermetic CPython 3.11 and declares @pypi from requirements_lock.txt."""
    py_repositories()

    # Downloads a standalone CPython rather than using the host's. It refuses to
    # run as root (it makes its lib/ read-only to keep .pyc files out of the
    # cache); in a root-only container pass ignore_root_user_error = True.
    python_register_toolchains(
        name = "python_3_11",
        python_version = PYTHON_VERSION,
    )

    # One repository per line of the lock file, installed with the hermetic
    # interpreter. Targets use them as requirement("name") from
    # @pypi//:requirements.bzl once phase 3 (install_deps) has run.
    pip_parse(
        name = "pypi",
        python_interpreter_target = "@python_3_11_host//:python",
        requirements_lock = Label("//:requirements_lock.txt"),
    )
