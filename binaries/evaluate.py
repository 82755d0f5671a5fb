"""`python binaries/evaluate.py`: runs tf_codistill.programs.evaluate; `--help` says how.

A shim for running from a source checkout (with the package importable, e.g.
after `pip install -e .`); installed, the same program is
`tf-codistill-evaluate`.
"""

import sys

from tf_codistill.programs import evaluate

if __name__ == "__main__":
    sys.exit(evaluate.run())
