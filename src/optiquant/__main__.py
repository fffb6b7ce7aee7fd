"""``python -m optiquant``: the command line."""

import sys

from optiquant.cli import main

if __name__ == "__main__":
    sys.exit(main())
