"""`python binaries/churn.py`: runs tf_codistill.programs.churn; `--help` says how.

A shim for running from a source checkout (with the package importable, e.g.
after `pip install -e .`); installed, the same program is
`tf-codistill-churn`.
"""

import sys

from tf_codistill.programs import churn

if __name__ == "__main__":
    sys.exit(churn.run())
