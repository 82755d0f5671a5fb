"""`python binaries/launch_ray.py`: runs tf_codistill.programs.launch_ray; `--help` says how.

A shim for running from a source checkout (with the package importable, e.g.
after `pip install -e .`); installed, the same program is
`tf-codistill-launch-ray`.
"""

import sys

from tf_codistill.programs import launch_ray

if __name__ == "__main__":
    sys.exit(launch_ray.run())
