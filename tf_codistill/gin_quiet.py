"""A logging filter for gin's include lookups (no TensorFlow import: the study harness uses it)."""

import logging
import os


class QuietGinIncludes(logging.Filter):
    """Drops gin's "Path not found" ERROR for includes it then finds on the search path.

    gin first tries an include such as 'demo/codistill.gin' as a file inside a
    Python package named `demo` (and as a path relative to the working
    directory), logging an ERROR for each miss, before looking in the search
    paths where it is found. A file found nowhere still raises.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.pathname.endswith(os.path.join("gin", "resource_reader.py"))
            and str(record.msg).startswith("Path not found")
        )
