"""tf_codistill's external repositories for Bazel's WORKSPACE mode: phase 1 of 2.

A .bzl file's load() statements run before any of its macros, so a macro cannot
declare a repository and load rules from it in the same file. Hence the phases
(the WORKSPACE file calls them in order):

  1. tf_codistill_workspace() here: fetch rules_python.
  2. tf_codistill_python_deps() in //bazel:python.bzl, which loads rules_python:
     the hermetic Python 3.11 toolchain and pip_parse of requirements_lock.txt.
  3. install_deps() from @pypi//:requirements.bzl, which pip_parse generates:
     one repository per pinned package.

Written without Bazel at hand and not exercised in CI (which uses pip + pytest).
"""

load("@bazel_tools//tools/build_defs/repo:http.bzl", "http_archive")
load("@bazel_tools//tools/build_defs/repo:utils.bzl", "maybe")

# Its WORKSPACE API (py_repositories, python_register_toolchains, pip_parse) is
# what //bazel:python.bzl calls; newer releases lean towards MODULE.bazel.
RULES_PYTHON_VERSION = "0.31.0"

# sha256 of rules_python-0.31.0.tar.gz from the GitHub release. Not computed
# here (no network); it is the value that many independent WORKSPACE files pin
# for this exact URL (e.g. pybind/pybind11_abseil's). Bazel refuses a mismatch.
RULES_PYTHON_SHA256 = "c68bdc4fbec25de5b5493b8819cfc877c4ea299c0dcb15c244c5a00208cde311"

def tf_codistill_workspace():
    """Declares the repositories the other phases load from (maybe(): a parent workspace may pin its own)."""
    maybe(
        http_archive,
        name = "rules_python",
        sha256 = RULES_PYTHON_SHA256,
        strip_prefix = "rules_python-{}".format(RULES_PYTHON_VERSION),
        url = "https://github.com/bazelbuild/rules_python/releases/download/{v}/rules_python-{v}.tar.gz".format(
            v = RULES_PYTHON_VERSION,
        ),
    )
