"""The command line: `python -m flows.validate [--config FILE] [--batch-size N] ... (see --help)`.

The flow itself is flows/pipeline.py's `validate`; flows/cli.py parses (and answers --help) before Prefect is
imported, so a refused value answers at once.
"""

import sys

from flows.cli import main

if __name__ == "__main__":
    sys.exit(main())
