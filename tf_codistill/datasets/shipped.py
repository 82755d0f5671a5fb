"""Files shipped with tf_codistill (`testdata/`), found from any working directory.

The tiny gin configs (`lm/tiny.gin`, `criteo/tiny.gin`) name their data as
`testdata/...`, relative to a clone of the repository. A path that does not
exist as given is looked up, in order, next to the package (a clone or an
editable install) and under `<prefix>/share/tf_codistill/`, where `pip install
.` puts `testdata/` (setup.py), as it does `gin/`.
"""

from __future__ import annotations

import glob
import os
import sys

from tf_codistill import errors

__all__ = ["SHIPPED", "resolve", "roots"]

# The top directory of the shipped files, as gin configs name it.
SHIPPED = "testdata"


def roots() -> list[str]:
    """Directories holding a shipped `testdata/`, in lookup order."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [
        os.path.dirname(package_dir),
        os.path.join(sys.prefix, "share", "tf_codistill"),
    ]
    return [c for c in candidates if os.path.isdir(os.path.join(c, SHIPPED))]


def resolve(path: str, what: str) -> str:
    """`path` if it exists (or matches, for a glob) as given, else its shipped copy.

    Args:
      path: a file, directory or glob pattern; only one starting with
        `testdata/` is looked up among the shipped files.
      what: the setting `path` came from, for the error message.

    Returns:
      `path`, or the shipped path of the same name.

    Raises:
      errors.DataNotFoundError: a `testdata/` path found neither as given nor
        among the shipped files; the message says where it looked.
    """
    if not path.startswith(SHIPPED + "/") or glob.glob(path):
        return path
    for root in roots():
        candidate = os.path.join(root, path)
        if glob.glob(candidate):
            return candidate
    looked = ", ".join(os.path.join(r, SHIPPED) for r in roots()) or "none installed"
    raise errors.DataNotFoundError(
        f"{what}: {path!r} is not in the working directory ({os.getcwd()}) nor among "
        f"tf_codistill's shipped test data ({looked}); run from a clone of the repository, "
        "install it with `pip install .` (which ships testdata/), or give a full path"
    )
