"""`python binaries/launch_local.py`: runs tf_codistill.programs.launch_local; `--help` says how.

A shim for running from a source checkout (with the package importable, e.g.
after `pip install -e .`); installed, the same program is
`tf-codistill-launch-local`.
"""

import sys

from tf_codistill.programs import launch_local

if __name__ == "__main__":
    sys.exit(launch_local.run())
