"""`python binaries/train.py`: runs tf_codistill.programs.train; `--help` says how.

A shim for running from a source checkout (with the package importable, e.g.
after `pip install -e .`); installed, the same program is
`tf-codistill-train`.
"""

import sys

from tf_codistill.programs import train

if __name__ == "__main__":
    sys.exit(train.run())
